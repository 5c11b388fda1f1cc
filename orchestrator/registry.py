"""OCI registries: packages published as OCI artifacts, and pulled back and verified.

A package becomes one OCI image manifest with its own ``artifactType``
(:data:`PACKAGE_ARTIFACT`): the empty config, one layer (the package archive as built,
byte for byte) and annotations naming the package (name, version, target, source
sha256, selected engine). Its attestations (signature, provenance, ML-BOM) are also
pushed as *referrers*: small manifests whose ``subject`` is the package, so registry
tools (``oras discover``, cosign) find them without opening the package. Registries
without the OCI 1.1 referrers API (the reference distribution server 2.x) get the
spec's fallback, an image index under the tag ``sha256-<package digest>``.

Why this order: blobs, then the package manifest by digest, then its referrers, and the
tags last. A push killed at any point leaves at most unreferenced blobs, never a tag
pointing at a partial artifact; and everything is content-addressed with no timestamps,
so publishing the same package twice changes nothing (same digest, and it is detected
and skipped).

oras-py does the HTTP and the authentication (Basic or token, credentials from
``--username`` or the Docker config); this module only maps packages onto artifacts and
every failure onto :class:`RegistryError`, in one place (:func:`_failures`).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.cookiejar
import json
import re
import ssl
import tarfile
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from .errors import InputError
from .runtime.signature import ATTESTATIONS, BOM, PROVENANCE, SIGNATURE

PACKAGE_ARTIFACT = "application/vnd.modelpack.package.v1"
PACKAGE_LAYER = "application/vnd.modelpack.package.layer.v1.tar+gzip"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
#: the OCI empty descriptor: artifacts whose config carries nothing point at ``{}``
EMPTY_CONFIG = {"mediaType": "application/vnd.oci.empty.v1+json",
                "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a", "size": 2}
#: each attestation's artifact type, as the tools that read them name them
ATTESTATION_TYPES = {SIGNATURE: "application/vnd.dev.sigstore.bundle.v0.3+json",
                     PROVENANCE: "application/vnd.in-toto+json",
                     BOM: "application/vnd.cyclonedx+json"}
#: annotation keys; the org.opencontainers ones are what registry UIs show
ANNOTATIONS = {"name": "org.modelpack.name", "version": "org.modelpack.version", "target": "org.modelpack.target",
               "source": "org.modelpack.source.sha256", "engine": "org.modelpack.engine"}
TITLE = "org.opencontainers.image.title"

_REPOSITORY = re.compile(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
#: a manifest is small; one that is not is not a package's
MAX_MANIFEST_BYTES = 4 << 20


class RegistryError(RuntimeError):
    """The registry refused, failed, timed out or sent something corrupt (exit 1)."""


@dataclass(frozen=True)
class Reference:
    """``oci://REGISTRY/REPOSITORY[:TAG][@DIGEST]``, checked against the distribution
    spec's grammar so that a typo is an input error, not a registry's 400."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str, key: str) -> "Reference":
        if not text.startswith("oci://"):
            raise InputError(None, key, f"{text!r} is not an oci://REGISTRY/REPOSITORY[:TAG] reference")
        rest = text[len("oci://"):]
        registry, _, path = rest.partition("/")
        if not registry or not path:
            raise InputError(None, key, f"{text!r} names no repository (oci://REGISTRY/REPOSITORY[:TAG])")
        path, _, digest = path.partition("@")
        repository, _, tag = path.rpartition(":") if ":" in path else (path, "", "")
        if not _REPOSITORY.fullmatch(repository):
            raise InputError(None, key, f"repository {repository!r} is not valid: lower-case letters, digits and"
                                        " separators (. _ __ -), components joined by /")
        if tag and not _TAG.fullmatch(tag):
            raise InputError(None, key, f"tag {tag!r} is not valid: letters, digits, . _ - (at most 128, not"
                                        " starting with . or -)")
        if digest and not _DIGEST.fullmatch(digest):
            raise InputError(None, key, f"digest {digest!r} is not sha256:<64 hex digits>")
        return cls(registry, repository, tag or None, digest or None)

    def __str__(self) -> str:
        return (f"{self.registry}/{self.repository}" + (f":{self.tag}" if self.tag else "")
                + (f"@{self.digest}" if self.digest else ""))


def package_location(namespace: Reference, manifest: Mapping[str, Any]) -> tuple[str, list[str]]:
    """Where a package goes under ``namespace`` (as Helm charts do): the repository
    ``NAMESPACE/<name>``, tagged ``<version>-<target>`` and, when the reference has a tag
    (``:nightly``), also ``<tag>-<target>``, a moving tag beside the immutable one."""
    name = re.sub(r"[^a-z0-9]+", "-", str(manifest["name"]).lower()).strip("-") or "package"
    repository = f"{namespace.repository}/{name}"

    def tag(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]", "_", text).lstrip(".-")[:128]

    target = manifest["target"]["name"]
    tags = [tag(f"{manifest['version']}-{target}")]
    if namespace.tag:
        tags.append(tag(f"{namespace.tag}-{target}"))
    return repository, tags


def _canonical(document: Mapping[str, Any]) -> bytes:
    """One byte form per document, so the same package always has the same digest."""
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _file_digest(path: Path) -> str:
    from .runtime.checks import sha256_file

    return "sha256:" + sha256_file(path)


@dataclass(frozen=True)
class Blob:
    """A file to upload and its descriptor."""

    path: Path
    media_type: str
    digest: str
    size: int
    title: str

    @classmethod
    def of(cls, path: Path, media_type: str, title: str) -> "Blob":
        return cls(path, media_type, _file_digest(path), path.stat().st_size, title)

    def descriptor(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size,
                "annotations": {TITLE: self.title}}


def artifact_manifest(artifact_type: str, layer: Blob, annotations: Mapping[str, str],
                      subject: Mapping[str, Any] | None = None) -> bytes:
    """An OCI 1.1 artifact manifest (an image manifest with ``artifactType`` and the empty
    config), canonical and without timestamps."""
    document: dict[str, Any] = {"schemaVersion": 2, "mediaType": MANIFEST, "artifactType": artifact_type,
                                "config": EMPTY_CONFIG, "layers": [layer.descriptor()],
                                "annotations": dict(annotations)}
    if subject is not None:
        document["subject"] = dict(subject)
    return _canonical(document)


def package_annotations(manifest: Mapping[str, Any]) -> dict[str, str]:
    selected = (manifest.get("selection") or {}).get("selected")
    engine = next(iter(manifest.get("engines") or {}), None)
    values = {"name": manifest["name"], "version": manifest["version"], "target": manifest["target"]["name"],
              "source": manifest["source"]["sha256"], "engine": f"{engine} ({selected})" if selected else engine}
    found = {ANNOTATIONS[key]: str(value) for key, value in values.items() if value is not None}
    found["org.opencontainers.image.version"] = str(manifest["version"])
    return found


@dataclass(frozen=True)
class Access:
    """How to reach a registry. The password is never shown (``repr=False``) and never
    put in a message."""

    plain_http: bool = False
    ca_file: Path | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout: float = 60.0


@contextlib.contextmanager
def _failures(registry: str, doing: str) -> Iterator[None]:
    """Every way a registry conversation fails, as one RegistryError line: the one place
    that knows requests' and oras-py's exceptions."""
    import requests

    try:
        yield
    except RegistryError:
        raise
    except requests.exceptions.SSLError as exc:
        raise RegistryError(f"{registry}: {doing}: TLS verification failed ({_reason(exc)}); give the"
                            " registry's CA with --ca-file, or --plain-http for a plain-HTTP registry") from None
    except requests.exceptions.Timeout:
        raise RegistryError(f"{registry}: {doing}: no answer in time (--timeout)") from None
    except requests.exceptions.ConnectionError as exc:
        raise RegistryError(f"{registry}: {doing}: connection failed ({_reason(exc)})") from None
    except requests.exceptions.RequestException as exc:
        raise RegistryError(f"{registry}: {doing}: {_reason(exc)}") from None
    except (ValueError, OSError) as exc:  # oras-py reports refusals as ValueError
        raise RegistryError(f"{registry}: {doing}: {_reason(exc)}") from None


def _reason(exc: BaseException) -> str:
    """The innermost cause's words (``Connection refused``, ``certificate verify failed:
    self-signed certificate``), without the layers requests and urllib3 wrap around it."""
    while True:
        inner = getattr(exc, "reason", None)
        if not isinstance(inner, BaseException):
            inner = exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else None
        if inner is None or inner is exc:
            break
        exc = inner
    if isinstance(exc, ssl.SSLError):
        return " ".join(str(part) for part in (getattr(exc, "reason", None), getattr(exc, "verify_message", None))
                        if part) or str(exc)
    text = " ".join(str(exc).split())
    errno = re.search(r"\[Errno -?\d+\] .*", text)
    return errno.group(0) if errno else text or type(exc).__name__


def _refusal(response: Any) -> str:
    """A registry's error answer in one line: status and the spec's error codes."""
    try:
        errors = response.json().get("errors") or []
        said = "; ".join(f"{e.get('code', '')} {e.get('message', '')}".strip() for e in errors if isinstance(e, dict))
    except ValueError:  # not the spec's JSON: a proxy's or a TLS server's own words
        text = response.content[:200].decode("utf-8", "replace")
        said = " ".join(text.split()) if text.isprintable() or "\n" in text else ""
    return f"HTTP {response.status_code} {response.reason or ''}".strip() + (f": {said}" if said else "")


class Registry:
    """One registry, spoken to through oras-py's client with the changes this tool
    needs: every request has a time limit, failures are not retried blindly (oras-py
    sleeps through five attempts, over two minutes, before giving up on a dead
    registry), and the authentication scheme follows the registry's challenge."""

    def __init__(self, host: str, access: Access) -> None:
        import oras.provider
        import requests

        self.host = host
        self._access = access

        class _Session(requests.Session):
            def request(self, *args: Any, **kwargs: Any) -> Any:
                kwargs.setdefault("timeout", access.timeout)
                return super().request(*args, **kwargs)

        class _Client(oras.provider.Registry):
            do_request = oras.provider.Registry.do_request.__wrapped__  # type: ignore[attr-defined]

        verify: bool | str = str(access.ca_file) if access.ca_file else True
        with _failures(host, "connecting"):
            challenge = self._challenge(_Session(), verify)
        scheme = challenge.split(" ", 1)[0].lower() if challenge else ""
        self._client = _Client(hostname=host, insecure=access.plain_http, tls_verify=verify,
                               auth_backend="basic" if scheme == "basic" else "token")
        session = _Session()
        session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))  # as oras-py does
        self._client.session = self._client.auth.session = session
        if access.username is not None:
            self._client.auth.set_basic_auth(access.username, access.password or "")
        else:
            # the Docker config's credentials for this registry, if any
            self._client.auth.load_configs(self._client.get_container(f"{host}/modelpack"))
        credentials = getattr(self._client.auth, "_basic_auth", None)
        if scheme == "basic":
            if not credentials:
                raise RegistryError(f"{host}: the registry asks for a user name and password; give --username"
                                    " (the password from MODELPACK_REGISTRY_PASSWORD or --password-stdin) or"
                                    " log in with docker login")
            session.headers["Authorization"] = f"Basic {credentials}"  # sent at once, not after a 401

    @property
    def _prefix(self) -> str:
        return ("http" if self._access.plain_http else "https") + f"://{self.host}/v2/"

    def _challenge(self, session: Any, verify: bool | str) -> str | None:
        """Ping ``/v2/``: a registry answers 200, or 401 naming how to authenticate."""
        response = session.get(self._prefix, verify=verify)
        if response.status_code == 401:
            return response.headers.get("WWW-Authenticate", "")
        if response.status_code != 200:
            raise RegistryError(f"{self.host}: /v2/ answered {_refusal(response)}")
        return None

    def _request(self, method: str, url: str, doing: str, ok: tuple[int, ...], **kwargs: Any) -> Any:
        with _failures(self.host, doing):
            response = self._client.do_request(self._prefix + url, method, **kwargs)
        if response.status_code not in ok:
            raise RegistryError(f"{self.host}: {doing}: {_refusal(response)}")
        return response

    # -- blobs ------------------------------------------------------------------------
    def push_blob(self, repository: str, blob: Blob) -> None:
        """Upload a blob unless the registry has it: a monolithic upload (POST, then one
        PUT streaming the file), which every registry accepts."""
        doing = f"uploading {blob.title} to {repository}"
        if self._request("HEAD", f"{repository}/blobs/{blob.digest}", doing, (200, 404)).status_code == 200:
            return
        started = self._request("POST", f"{repository}/blobs/uploads/", doing, (202,))
        location = started.headers.get("Location")
        if not location:
            raise RegistryError(f"{self.host}: {doing}: the registry named no upload location")
        url = urllib.parse.urljoin(self._prefix, location)
        url += ("&" if "?" in url else "?") + urllib.parse.urlencode({"digest": blob.digest})
        with blob.path.open("rb") as data, _failures(self.host, doing):
            response = self._client.do_request(url, "PUT", data=data, headers={
                "Content-Type": "application/octet-stream", "Content-Length": str(blob.size)})
        if response.status_code not in (201, 204):
            raise RegistryError(f"{self.host}: {doing}: {_refusal(response)}")

    def push_bytes(self, repository: str, data: bytes, media_type: str, folder: Path) -> None:
        path = folder / _digest(data).replace(":", "-")
        path.write_bytes(data)
        self.push_blob(repository, Blob.of(path, media_type, "config"))

    def pull_blob(self, repository: str, descriptor: Mapping[str, Any], dest: Path) -> None:
        """Stream a blob into ``dest``, refusing more bytes than its descriptor says and a
        digest that differs from it: a corrupt or hostile registry cannot hand back
        anything else."""
        digest, size = str(descriptor.get("digest")), descriptor.get("size")
        if not _DIGEST.fullmatch(digest) or not isinstance(size, int) or size < 0:
            raise RegistryError(f"{self.host}: {repository}: a layer descriptor is malformed ({digest!r}, {size!r})")
        doing = f"downloading {digest[:19]} from {repository}"
        response = self._request("GET", f"{repository}/blobs/{digest}", doing, (200,), stream=True)
        hasher, written = hashlib.sha256(), 0
        with _failures(self.host, doing), response, dest.open("wb") as out:
            for chunk in response.iter_content(1 << 20):
                written += len(chunk)
                if written > size:
                    raise RegistryError(f"{self.host}: {doing}: the registry sent more than the {size} bytes"
                                        " the manifest names")
                hasher.update(chunk)
                out.write(chunk)
        got = "sha256:" + hasher.hexdigest()
        if written != size or got != digest:
            raise RegistryError(f"{self.host}: {doing}: the blob is corrupt ({written} bytes, {got[:19]}, where"
                                f" the manifest names {size} bytes, {digest[:19]})")

    # -- manifests ----------------------------------------------------------------------
    def push_manifest(self, repository: str, reference: str, data: bytes, media_type: str) -> Any:
        return self._request("PUT", f"{repository}/manifests/{reference}", f"pushing {repository}:{reference}",
                             (200, 201), data=data, headers={"Content-Type": media_type})

    def manifest(self, repository: str, reference: str, accept: str = MANIFEST) -> tuple[bytes, str] | None:
        """A manifest's bytes and digest (checked against the reference when that is a
        digest), or None when the registry has no such tag."""
        doing = f"reading {repository}{'@' if reference.startswith('sha256:') else ':'}{reference}"
        response = self._request("GET", f"{repository}/manifests/{reference}", doing, (200, 404),
                                 headers={"Accept": accept})
        if response.status_code == 404:
            return None
        data = response.content
        if len(data) > MAX_MANIFEST_BYTES:
            raise RegistryError(f"{self.host}: {doing}: a {len(data)}-byte manifest is not a package's")
        digest = _digest(data)
        if reference.startswith("sha256:") and digest != reference:
            raise RegistryError(f"{self.host}: {doing}: the manifest's digest is {digest}")
        return data, digest

    def referrers(self, repository: str, digest: str) -> list[str]:
        """The digests of the manifests that name ``digest`` as their subject: from the
        referrers API where the registry has it, else from the fallback tag."""
        doing = f"listing the referrers of {repository}@{digest[:19]}"
        response = self._request("GET", f"{repository}/referrers/{digest}", doing, (200, 404),
                                 headers={"Accept": INDEX})
        if response.status_code == 200 and response.headers.get("Content-Type", "").startswith(INDEX):
            return [str(m.get("digest")) for m in _index_entries(response.content)]
        found = self.manifest(repository, referrers_tag(digest), INDEX)
        return [str(m.get("digest")) for m in _index_entries(found[0])] if found else []

    def supports_referrers(self, response: Any) -> bool:
        """Whether the registry keeps the referrers of a subject itself (OCI 1.1
        registries answer a manifest with ``subject`` with an ``OCI-Subject`` header)."""
        return "OCI-Subject" in response.headers


@dataclass(frozen=True)
class Published:
    """What publishing one package did."""

    repository: str
    tags: list[str]
    digest: str
    referrers: list[str]
    unchanged: bool


def attestation_files(archive: Path, folder: Path) -> list[Path]:
    """Copy the attestations of a (verified) package archive out, to push as referrers."""
    found = []
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            name = member.name.removeprefix("./")
            if member.isfile() and name in ATTESTATIONS:  # at the package's root only
                source = tar.extractfile(member)
                assert source is not None
                (folder / name).write_bytes(source.read())
                found.append(folder / name)
    return sorted(found, key=lambda p: ATTESTATIONS.index(p.name))


def publish_package(registry: Registry, namespace: Reference, archive: Path, manifest: Mapping[str, Any],
                    folder: Path) -> Published:
    """Push one verified package and its attestations; see the module docstring for the
    order and why it makes a killed push harmless. Nothing is pushed when every tag
    already names this artifact and its referrers are all listed."""
    repository, tags = package_location(namespace, manifest)
    layer = Blob.of(archive, PACKAGE_LAYER, archive.name)
    data = artifact_manifest(PACKAGE_ARTIFACT, layer, {**package_annotations(manifest), TITLE: archive.name})
    digest = _digest(data)
    subject = {"mediaType": MANIFEST, "digest": digest, "size": len(data)}
    referrers = []
    for path in attestation_files(archive, folder):
        blob = Blob.of(path, ATTESTATION_TYPES[path.name], path.name)
        referrers.append((blob, artifact_manifest(blob.media_type, blob, {TITLE: path.name}, subject)))
    names = [blob.title for blob, _ in referrers]
    if (all((found := registry.manifest(repository, tag)) is not None and found[1] == digest for tag in tags)
            and {_digest(r) for _, r in referrers} <= set(registry.referrers(repository, digest))):
        return Published(repository, tags, digest, names, unchanged=True)

    registry.push_bytes(repository, b"{}", EMPTY_CONFIG["mediaType"], folder)
    registry.push_blob(repository, layer)
    registry.push_manifest(repository, digest, data, MANIFEST)
    keeps_referrers = False
    for blob, referrer in referrers:
        registry.push_blob(repository, blob)
        response = registry.push_manifest(repository, _digest(referrer), referrer, MANIFEST)
        keeps_referrers = registry.supports_referrers(response)
    if referrers and not keeps_referrers:
        _update_referrers_tag(registry, repository, digest, [
            {"mediaType": MANIFEST, "digest": _digest(referrer), "size": len(referrer),
             "artifactType": blob.media_type, "annotations": {TITLE: blob.title}} for blob, referrer in referrers])
    for tag in tags:  # last: only a whole artifact is ever tagged
        registry.push_manifest(repository, tag, data, MANIFEST)
    return Published(repository, tags, digest, names, unchanged=False)


def referrers_tag(digest: str) -> str:
    """The OCI 1.1 fallback tag that lists a subject's referrers."""
    return digest.replace(":", "-")


def _index_entries(data: bytes) -> list[dict[str, Any]]:
    try:
        document = json.loads(data)
        return [m for m in document.get("manifests", []) if isinstance(m, dict)]
    except (ValueError, AttributeError):
        return []  # an unreadable index lists nothing, and is replaced, as the spec allows


def _update_referrers_tag(registry: Registry, repository: str, digest: str, new: list[dict[str, Any]]) -> None:
    """Merge ``new`` into the subject's fallback referrers index, keeping what other
    tools attached (a cosign signature, say); unchanged entries give the same index."""
    tag = referrers_tag(digest)
    found = registry.manifest(repository, tag, INDEX)
    entries = _index_entries(found[0]) if found else []
    known = {entry.get("digest") for entry in entries}
    entries += [entry for entry in new if entry["digest"] not in known]
    index = _canonical({"schemaVersion": 2, "mediaType": INDEX, "manifests": entries})
    if found is None or found[1] != _digest(index):
        registry.push_manifest(repository, tag, index, INDEX)


def read_package_manifest(registry: Registry, reference: Reference) -> tuple[dict[str, Any], str]:
    """The artifact manifest a reference names, checked to be a modelpack package's."""
    ref = reference.digest or reference.tag
    assert ref is not None, "the command checks that the reference names a tag or digest"
    found = registry.manifest(reference.repository, ref)
    if found is None:
        raise RegistryError(f"{registry.host}: {reference.repository}:{ref}: no such tag")
    try:
        document = json.loads(found[0])
    except ValueError:
        raise RegistryError(f"{registry.host}: {reference}: the manifest is not JSON") from None
    kind = document.get("artifactType") if isinstance(document, dict) else None
    if kind != PACKAGE_ARTIFACT:
        raise RegistryError(f"{registry.host}: {reference}: not a modelpack package (artifactType {kind!r})")
    layers = [layer for layer in document.get("layers") or [] if isinstance(layer, dict)]
    if len(layers) != 1 or layers[0].get("mediaType") != PACKAGE_LAYER:
        raise RegistryError(f"{registry.host}: {reference}: a package artifact has exactly one {PACKAGE_LAYER} layer")
    return document, found[1]
