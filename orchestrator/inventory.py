"""The inventory (``hosts.yaml``): which build hosts exist, what they can build, and why
a host was or was not chosen for a target.

Like Nix's machines file, capabilities are declared (targets, features, slots, speed)
and matching explains itself: when no host fits, the error lists every host with the
reason it was rejected.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from .config import read_yaml, validate
from .errors import InputError
from .runtime.platforms import this_machine
from .targets import TARGETS, Target, known_target

_DOCKER_KEYS = ("docker_host", "platform", "image", "tls_ca", "tls_cert", "tls_key", "insecure",
                "memory_gb")
_SSH_KEYS = ("address", "user", "port", "key", "host_key", "known_hosts", "shell", "workdir", "python",
             "liveness_timeout", "lease_ttl", "blob_ttl", "pins", "emulation")


class Host(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="unique host name")
    transport: Literal["docker", "ssh", "local"] = Field(description="how the host is reached")
    targets: list[Annotated[str, AfterValidator(known_target)]] = Field(
        min_length=1, description="targets this host builds")
    slots: int = Field(1, ge=1, description="jobs the host runs at once")
    speed: float = Field(1.0, gt=0, description="relative speed; faster hosts get more work")
    features: list[str] = Field(default_factory=list, description="free labels a spec can require")
    mandatory_features: list[str] = Field(
        default_factory=list, description="the host only takes jobs that require all of these")
    enabled: bool = Field(True, description="false keeps the host listed but never used")
    min_free_gb: float = Field(
        2.0, ge=0, description="preflight: the host is disabled for the run when its work area has less free disk")
    # docker
    docker_host: str | None = Field(None, description="Docker engine URL (unix://, tcp://, ssh://); default: the local engine")
    platform: str | None = Field(None, description="container platform, e.g. linux/amd64")
    image: str | None = Field(None, description="build image to use instead of the one modelpack builds for the environment")
    allow_emulation: bool = Field(True, description="allow builds under emulation on this host (docker: qemu;"
                                                    " ssh: wine)")
    tls_ca: str | None = Field(None, description="docker tcp://: CA certificate the engine's certificate must chain to")
    tls_cert: str | None = Field(None, description="docker tcp://: client certificate (with tls_key)")
    tls_key: str | None = Field(None, description="docker tcp://: client private key")
    insecure: bool = Field(False, description="docker tcp:// without TLS: accept an engine that is neither"
                                              " authenticated nor encrypted (a warning is printed at each use)")
    memory_gb: float | None = Field(None, gt=0, description="docker: memory limit of each build container, GiB"
                                                            " (default: 3/4 of the engine's memory shared among its"
                                                            " slots); a job that exceeds it fails, saying so")
    # ssh
    address: str | None = Field(None, description="ssh: host name or address")
    user: str | None = Field(None, description="ssh: login user")
    port: int = Field(22, ge=1, le=65535, description="ssh: port")
    key: str | None = Field(None, description="ssh: private key file")
    host_key: str | None = Field(None, description="ssh: pinned public host key ('ssh-ed25519 AAAA...')")
    known_hosts: str | None = Field(None, description="ssh: known_hosts file (default ~/.ssh/known_hosts)")
    shell: Literal["sh", "powershell", "cmd"] | None = Field(
        None, description="ssh: remote shell dialect; detected when absent")
    workdir: str | None = Field(
        None, description="ssh: the host's work directory for blobs, workspaces and environments (default ~/.modelpack)")
    python: str = Field(
        "python3", description="ssh: the host's interpreter (default python3; python on Windows hosts);"
                               " a bootstrapped environment takes over for builds")
    lease_ttl: float = Field(
        86400.0, gt=0, description="ssh: seconds a workspace is leased; `hosts clean` removes it after that")
    blob_ttl: float = Field(
        14 * 86400.0, gt=0, description="ssh: stored files unused this many seconds are removed by `hosts clean`")
    liveness_timeout: float = Field(
        20.0, gt=0, description="ssh: seconds a silent connection may go unanswered before the host counts as lost")
    pins: dict[str, str] = Field(
        default_factory=dict, description="ssh: this host's own version of pinned packages ({numpy: 2.0.2}), used by"
                                          " `hosts bootstrap`; they change the environment hash and every manifest"
                                          " built there records them")
    emulation: Literal["wine"] | None = Field(
        None, description="ssh: the host runs Windows binaries under this compatibility layer (detected too):"
                          " its timings are flagged like emulated ones, allow_emulation applies, native hosts"
                          " are preferred")

    @field_validator("pins")
    @classmethod
    def _pins_are_versions(cls, pins: dict[str, str]) -> dict[str, str]:
        for name, version in pins.items():
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
                raise ValueError(f"{name!r} is not a package name")
            if not re.fullmatch(r"[0-9][0-9A-Za-z.+!-]*", str(version)):
                raise ValueError(f"{name}: {version!r} is not an exact version (such as 2.0.2)")
        return pins

    @model_validator(mode="after")
    def _transport_keys(self) -> "Host":
        given = self.model_fields_set
        foreign = {
            "docker": _SSH_KEYS, "ssh": _DOCKER_KEYS, "local": _DOCKER_KEYS + _SSH_KEYS,
        }[self.transport]
        wrong = [k for k in foreign if k in given]
        if wrong:
            raise ValueError(f"{', '.join(wrong)} do not apply to a {self.transport} host")
        if self.transport == "ssh" and not self.address:
            raise ValueError("an ssh host needs an address")
        tls = [k for k in ("tls_ca", "tls_cert", "tls_key") if k in given]
        if tls and not (self.docker_host or "").startswith("tcp://"):
            raise ValueError(f"{', '.join(tls)} apply to a docker_host: tcp://... engine")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        plain_tcp = (self.docker_host or "").startswith("tcp://") and not (self.tls_ca or self.tls_cert)
        if plain_tcp and not self.insecure:
            raise ValueError(f"docker_host {self.docker_host} has no TLS: anyone on the network could run"
                             f" builds or read models there; set tls_ca (and tls_cert, tls_key), or insecure: true"
                             f" to accept that")
        if self.insecure and not plain_tcp:
            raise ValueError("insecure: true applies only to a docker_host: tcp://... engine without TLS")
        return self


class Inventory(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    hosts: list[Host] = Field(min_length=1, description="the build hosts")

    @field_validator("hosts")
    @classmethod
    def _unique_names(cls, hosts: list[Host]) -> list[Host]:
        names = [h.name for h in hosts]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"host names must be unique; repeated: {', '.join(dupes)}")
        return hosts


@dataclass(frozen=True)
class LoadedInventory:
    source: str  # the file it came from, or "(built-in default)"
    inventory: Inventory

    @property
    def hosts(self) -> list[Host]:
        return self.inventory.hosts


def local_target() -> Target | None:
    """The target this controller machine can build for itself, if any."""
    here = this_machine()
    return next((t for t in TARGETS.values() if (t.os, t.arch) == here), None)


def default_inventory(docker_answers: bool) -> LoadedInventory:
    """No hosts.yaml: the local Docker engine (when it answers) and this machine.

    Docker comes first because its images pin every tool version; the local machine
    is the fallback that works with nothing but Python.
    """
    hosts = []
    target = local_target()
    if docker_answers:
        hosts.append(Host(name="local-docker", transport="docker", targets=["linux-x86_64"], slots=2))
        # arm64 on the same engine, natively on an arm64 machine or else under emulation
        hosts.append(Host(name="local-docker-arm64", transport="docker", targets=["linux-aarch64", "android-arm64"],
                          platform="linux/arm64"))
    if target is not None:
        hosts.append(Host(name="localhost", transport="local", targets=[target.name]))
    if not hosts:
        raise InputError(None, "hosts", "no hosts.yaml found and this machine can build no target; write a hosts.yaml")
    return LoadedInventory("(built-in default)", Inventory(hosts=hosts))


def find_inventory_file(explicit: Path | None) -> Path | None:
    """--hosts, then $MODELPACK_HOSTS, then ./hosts.yaml, then ~/.config/modelpack/hosts.yaml."""
    if explicit is not None:
        return explicit
    if os.environ.get("MODELPACK_HOSTS"):
        return Path(os.environ["MODELPACK_HOSTS"])
    for candidate in (Path("hosts.yaml"), Path.home() / ".config" / "modelpack" / "hosts.yaml"):
        if candidate.is_file():
            return candidate
    return None


def load_inventory(path: Path) -> LoadedInventory:
    return LoadedInventory(str(path), validate(path, read_yaml(path), Inventory))


def rejection(host: Host, target: Target, required_features: frozenset[str] = frozenset()) -> str | None:
    """Why ``host`` cannot build ``target``, or None if it can."""
    if not host.enabled:
        return "disabled in the inventory"
    if target.name not in host.targets:
        return f"serves {', '.join(host.targets)}, not {target.name}"
    if host.transport == "local" and this_machine() != (target.build_os, target.build_arch):
        here = "/".join(this_machine())
        return f"a local host is {here}; {target.name} must be built on {target.build_os}/{target.build_arch}"
    missing = sorted(required_features - set(host.features))
    if missing:
        return f"lacks required feature(s) {', '.join(missing)}"
    unmet = sorted(set(host.mandatory_features) - required_features)
    if unmet:
        return f"only takes jobs that require {', '.join(unmet)}"
    return None


def eligible_hosts(inventory: LoadedInventory, target: Target,
                   required_features: frozenset[str] = frozenset()) -> list[Host]:
    """Hosts that can build ``target``; raises an :class:`InputError` explaining every
    rejection when there are none."""
    reasons = {h.name: rejection(h, target, required_features) for h in inventory.hosts}
    eligible = [h for h in inventory.hosts if reasons[h.name] is None]
    if not eligible:
        detail = "; ".join(f"{name}: {why}" for name, why in reasons.items())
        raise InputError(inventory.source, f"target {target.name}", f"no host can build it ({detail})")
    return eligible
