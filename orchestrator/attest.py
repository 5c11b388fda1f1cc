"""Release attestations for a verified package: SLSA provenance, a CycloneDX ML-BOM and
an OpenSSF model signature, added on the controller just before publishing.

Why here: the release key must never reach a build host, and only the controller knows
the whole story (the spec, the run, the host that built it, the checks that passed).
The payload the packager made is not touched: the attestations go in beside it (see
runtime/signature.py for why they are outside the reproducible file table), and the
signature is made last, so it covers the provenance and the BOM too. The libraries do
the formats (``model-signing``, ``cyclonedx-python-lib``, ``cryptography``); this module
only gathers the facts.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from . import __version__
from .errors import InputError
from .packager.package import write_archive
from .runtime.archive import extract
from .runtime.checks import sha256_file
from .runtime.signature import BOM, PROVENANCE, SIGNATURE, hashing_config, payload_digest

#: the in-toto DSSE payload type, and how its signatures are computed (DSSE v1 "PAE")
PAYLOAD_TYPE = "application/vnd.in-toto+json"
SLSA_PROVENANCE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "https://modelpack.dev/build/package/v1"


@dataclass(frozen=True)
class SigningKey:
    """A release key pair's private half (PEM, elliptic curve, unencrypted), checked when
    the command starts so that a wrong key fails before any build."""

    path: Path
    key_id: str

    @classmethod
    def load(cls, path: Path, option: str) -> "SigningKey":
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        try:
            key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
        except FileNotFoundError:
            raise InputError(path, option, "file not found") from None
        except (OSError, ValueError, TypeError) as exc:
            raise InputError(path, option, f"not an unencrypted PEM private key: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise InputError(path, option, "model signing takes an elliptic-curve key (e.g. openssl ecparam"
                                           " -name prime256v1 -genkey -noout -out key.pem)")
        return cls(Path(path), key_id(key.public_key()))

    def sign(self, data: bytes) -> bytes:
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        key = serialization.load_pem_private_key(self.path.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return key.sign(data, ec.ECDSA(hashes.SHA256()))


def key_id(public_key: Any) -> str:
    """The id a signature names its key by: sha256 of the public key's PEM text (the hint
    model-signing writes into its bundles, so every place shows one id)."""
    from cryptography.hazmat.primitives import serialization

    return hashlib.sha256(public_key.public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo)).hexdigest()


@dataclass(frozen=True)
class Attested:
    """What attesting a package did: its archive's new sha256, the key id that signed it
    (None: unsigned) and the attestation files it now holds."""

    sha256: str
    signer: str | None
    files: list[str]


@dataclass(frozen=True)
class RunFacts:
    """What the provenance says about the run that built the package."""

    run_id: str
    invocation: list[str]
    started: float


def _iso(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _normalised(distribution: str) -> str:
    """A distribution's name as wheel file names spell it (PEP 427 and 503)."""
    return re.sub(r"[-_.]+", "_", distribution).lower()


def _tools(manifest: Mapping[str, Any]) -> dict[str, str]:
    """Every Python distribution that built and tested the package, with its version: the
    build host's toolchain and the selected engine."""
    platform_ = (manifest.get("provenance") or {}).get("build_platform") or {}
    return {**{name: str(version) for name, version in (platform_.get("toolchain") or {}).items()},
            **{engine: str(info.get("version")) for engine, info in (manifest.get("engines") or {}).items()}}


def wheel_hashes(manifest: Mapping[str, Any]) -> dict[tuple[str, str], tuple[str, str]]:
    """(distribution, version) -> (wheel file, sha256) for the wheels the build host's
    environment was installed from, as its installer recorded them (see
    packager/environment.py); empty for an environment that recorded none."""
    platform_ = (manifest.get("provenance") or {}).get("build_platform") or {}
    found = {}
    for wheel, sha in (platform_.get("wheels") or {}).items():
        parts = str(wheel).split("-")
        if wheel.endswith(".whl") and len(parts) >= 5:
            found[(_normalised(parts[0]), parts[1])] = (str(wheel), str(sha))
    return found


def provenance_statement(folder: Path, manifest: dict[str, Any], instructions: dict[str, Any], spec_sha256: str,
                         run: RunFacts) -> dict[str, Any]:
    """An in-toto v1 statement with a SLSA provenance v1 predicate whose subjects are the
    payload's files (``manifest.json`` and every file its table pins)."""
    prov = manifest.get("provenance") or {}
    subjects = [{"name": "manifest.json", "digest": {"sha256": payload_digest(folder)}}]
    subjects += [{"name": name, "digest": {"sha256": sha}} for name, sha in sorted(manifest["files"].items())]
    dependencies: list[dict[str, Any]] = [
        {"name": "source model", "uri": f"file:{manifest['source'].get('filename') or 'model.onnx'}",
         "digest": {"sha256": manifest["source"]["sha256"]}}]
    if prov.get("image_id"):
        algorithm, _, value = str(prov["image_id"]).partition(":")
        dependencies.append({"name": "build image", "uri": f"docker-image:{prov.get('image')}",
                             "digest": {algorithm if value else "sha256": value or algorithm}})
    wheels = wheel_hashes(manifest)
    for name, version in sorted(_tools(manifest).items()):
        dependency: dict[str, Any] = {"name": name, "uri": f"pkg:pypi/{name}@{version}"}
        if (found := wheels.get((_normalised(name), version))) is not None:
            dependency.update(name=found[0], digest={"sha256": found[1]})
        dependencies.append(dependency)
    return {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": subjects,
        "predicateType": SLSA_PROVENANCE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {"spec": {"sha256": spec_sha256}, "instructions": instructions},
                "internalParameters": {"target": manifest["target"]},
                "resolvedDependencies": dependencies,
            },
            "runDetails": {
                "builder": {"id": f"https://modelpack.dev/builder/{__version__}",
                            "version": {"modelpack": __version__, "host": str(prov.get("host")),
                                        "transport": str(prov.get("transport")),
                                        "image": str(prov.get("image_id") or prov.get("image") or "-")}},
                "metadata": {"invocationId": f"{run.run_id} {' '.join(run.invocation)}",
                             "startedOn": _iso(run.started), "finishedOn": _iso(time.time())},
            },
        },
    }


def dsse_envelope(statement: dict[str, Any], key: SigningKey) -> dict[str, Any]:
    """The statement signed as a DSSE envelope: the signature is over the pre-auth
    encoding of the payload type and bytes, as in-toto verifiers expect."""
    body = json.dumps(statement, sort_keys=True).encode()
    pae = b"DSSEv1 %d %s %d %s" % (len(PAYLOAD_TYPE), PAYLOAD_TYPE.encode(), len(body), body)
    return {"payloadType": PAYLOAD_TYPE, "payload": base64.b64encode(body).decode(),
            "signatures": [{"keyid": key.key_id, "sig": base64.b64encode(key.sign(pae)).decode()}]}


def ml_bom(folder: Path, manifest: dict[str, Any]) -> str:
    """A CycloneDX 1.6 document: the model as a machine-learning-model component (its
    inputs, outputs, engine, accuracy and self-test as model-card properties), the
    packaged artifacts with their sha256, and the runtime's pinned Python dependencies."""
    from cyclonedx.model import HashAlgorithm, HashType, Property
    from cyclonedx.model.bom import Bom
    from cyclonedx.model.component import Component, ComponentScope, ComponentType
    from cyclonedx.output.json import JsonV1Dot6
    from packageurl import PackageURL

    def tensor(t: dict[str, Any]) -> str:
        return f"{t['dtype']}{t['shape']}"

    selftest = manifest.get("selftest") or {}
    properties = [Property(name=f"modelpack:input:{t['name']}", value=tensor(t)) for t in manifest["inputs"]]
    properties += [Property(name=f"modelpack:output:{t['name']}", value=tensor(t)) for t in manifest["outputs"]]
    compiler = manifest.get("compiler") or {}
    properties += [Property(name="modelpack:target", value=manifest["target"]["name"]),
                   Property(name="modelpack:engine", value=str(compiler.get("name"))),
                   Property(name="modelpack:selftest", value="passed" if selftest.get("passed") else "failed"),
                   Property(name="modelpack:payload-sha256", value=payload_digest(folder))]
    for path, result in sorted((selftest.get("artifacts") or {}).items()):
        for output, figures in sorted((result.get("outputs") or {}).items()):
            properties.append(Property(name=f"modelpack:accuracy:{path}:{output}",
                                       value=f"max_abs={figures.get('max_abs')} max_rel={figures.get('max_rel')}"))
    model = Component(type=ComponentType.MACHINE_LEARNING_MODEL, name=manifest["name"], version=manifest["version"],
                      bom_ref=f"model:{manifest['name']}@{manifest['version']}",
                      hashes=[HashType(alg=HashAlgorithm.SHA_256, content=manifest["source"]["sha256"])],
                      properties=properties)
    bom = Bom()
    bom.metadata.component = model
    for artifact in manifest["artifacts"]:
        sha = manifest["files"].get(artifact["path"])
        bom.components.add(Component(
            type=ComponentType.DATA, name=artifact["path"], bom_ref=f"artifact:{artifact['path']}",
            hashes=[HashType(alg=HashAlgorithm.SHA_256, content=sha)] if sha else [],
            properties=[Property(name="modelpack:format", value=artifact["format"]),
                        Property(name="modelpack:engine", value=artifact["engine"]),
                        Property(name="modelpack:role", value=artifact["role"])]))
    # the runtime's pinned dependencies (what the device installs) and the distributions
    # that built and tested the package, each once, with its wheel's sha256 where the
    # build host's environment recorded it
    requirements = folder / "runtime" / "requirements.txt"
    pinned = dict(line.strip().partition("==")[::2] for line in (requirements.read_text().splitlines()
                                                                    if requirements.is_file() else []))
    wheels = wheel_hashes(manifest)
    libraries = []
    for name, version in sorted({**_tools(manifest), **{k: v for k, v in pinned.items() if k and v}}.items()):
        wheel = wheels.get((_normalised(name), version))
        library = Component(type=ComponentType.LIBRARY, name=name, version=version, bom_ref=f"pypi:{name}@{version}",
                            purl=PackageURL("pypi", name, version),
                            hashes=[HashType(alg=HashAlgorithm.SHA_256, content=wheel[1])] if wheel else [],
                            properties=[Property(name="modelpack:wheel", value=wheel[0])] if wheel else [],
                            scope=None if name in pinned else ComponentScope.EXCLUDED)
        bom.components.add(library)
        libraries.append(library)
    bom.register_dependency(model, libraries)
    return JsonV1Dot6(bom).output_as_string(indent=2)


def sign_folder(folder: Path, key: SigningKey) -> None:
    """Sign every file of an unpacked package (the model-signing format, key-pair mode)."""
    from model_signing import signing

    signing.Config().use_elliptic_key_signer(private_key=str(key.path)).set_hashing_config(
        hashing_config()).sign(folder, folder / SIGNATURE)


def rewrite(archive: Path, change: Any) -> str:
    """Unpack a verified package archive, let ``change(folder)`` add files, and write it
    back in place (atomically, deterministic entries); return its new sha256."""
    with tempfile.TemporaryDirectory(prefix=".attest-", dir=archive.parent) as tmp:
        folder = Path(tmp) / "package"
        extract(archive, folder)
        change(folder)
        fresh = Path(tmp) / archive.name
        write_archive(folder, fresh)
        os.replace(fresh, archive)
    return sha256_file(archive)


def attest(archive: Path, instructions: dict[str, Any], spec_sha256: str, run: RunFacts,
           key: SigningKey | None) -> Attested:
    """Add the provenance and the BOM to a verified package archive, and sign it all
    when a key is given."""

    def add(folder: Path) -> None:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        statement = provenance_statement(folder, manifest, instructions, spec_sha256, run)
        document = dsse_envelope(statement, key) if key else statement
        (folder / PROVENANCE).write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
        (folder / BOM).write_text(ml_bom(folder, manifest) + "\n")
        if key:
            sign_folder(folder, key)

    files = [PROVENANCE, BOM, *([SIGNATURE] if key else [])]
    return Attested(rewrite(archive, add), key.key_id if key else None, sorted(files))
