"""Signed packages: who made a package, checked before anything in it runs.

A signed package carries, beside its reproducible payload (``manifest.json`` and the
files its table pins), up to three attestation files that are not in that table:

- ``signature.sigstore.json``: a Sigstore bundle in the OpenSSF model-signing format, an
  in-toto statement naming every other file's sha256, signed with the release key;
- ``provenance.intoto.json``: SLSA provenance v1 for the payload (signed with the same key
  as a DSSE envelope when a key was given);
- ``bom.cdx.json``: a CycloneDX ML-BOM.

They are outside the file table because they cannot be reproducible (a signature and a
run's start time differ every time) while the payload is: building twice gives the same
``manifest.json``, hence the same payload digest. The signature covers the other two.

Checking a signature needs the ``model-signing`` package; the rest of the runtime does
not, so it is imported only when a public key is given.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

SIGNATURE = "signature.sigstore.json"
PROVENANCE = "provenance.intoto.json"
BOM = "bom.cdx.json"
#: files a package may hold beside its file table, at its root only
ATTESTATIONS = (SIGNATURE, PROVENANCE, BOM)


class SignatureError(RuntimeError):
    """The package's signature is missing, does not match its files, or is not the key's."""


def payload_digest(package_dir: Path) -> str:
    """The reproducible payload's identity: ``manifest.json`` pins every payload file's
    sha256, so its own sha256 names the payload (attestations excluded)."""
    return hashlib.sha256((Path(package_dir) / "manifest.json").read_bytes()).hexdigest()


def hashing_config() -> object:
    """How the files are hashed for signing and checking: every file but the signature
    itself, links refused."""
    from model_signing import hashing

    return hashing.Config().set_ignored_paths(paths=[SIGNATURE], ignore_git_paths=False)


def bundle_signer(bundle: bytes | str) -> str | None:
    """The key id a signature bundle names (the signer's public key hint), or None."""
    try:
        return str(json.loads(bundle)["verificationMaterial"]["publicKey"]["hint"])
    except (ValueError, KeyError, TypeError):
        return None


def signer(package_dir: Path) -> str | None:
    """The key id the package's signature names, or None if it is unsigned."""
    try:
        return bundle_signer((Path(package_dir) / SIGNATURE).read_bytes())
    except OSError:
        return None


def verify_signature(package_dir: Path, public_key: str | Path) -> str:
    """Raise :class:`SignatureError` unless every file of the package is exactly what
    ``public_key``'s owner signed; return the signer's key id."""
    package_dir = Path(package_dir)
    if not (package_dir / SIGNATURE).is_file():
        raise SignatureError(f"not signed (no {SIGNATURE})")
    try:
        from model_signing import verifying
    except ImportError:
        raise SignatureError("checking a signature needs the model-signing package"
                             " (pip install model-signing)") from None
    try:
        verifying.Config().use_elliptic_key_verifier(public_key=str(public_key)).set_hashing_config(
            hashing_config()).verify(package_dir, package_dir / SIGNATURE)
    except Exception as exc:  # the library raises ValueError, its own and cryptography's errors
        why = _differences(package_dir) or " ".join(str(exc).split())[:300] or type(exc).__name__
        raise SignatureError(f"signature check failed: {why}") from None
    return signer(package_dir) or "?"


def _differences(package_dir: Path) -> str | None:
    """Which files differ from what the signature lists (changed, missing, added), named
    plainly: the library's own message quotes raw digest bytes."""
    import base64

    try:
        bundle = json.loads((package_dir / SIGNATURE).read_bytes())
        statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
        signed = {r["name"]: r["digest"] for r in statement["predicate"]["resources"]}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    present = {p.relative_to(package_dir).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
               for p in sorted(package_dir.rglob("*")) if p.is_file() and p.name != SIGNATURE}
    parts = [f"{', '.join(names)} {what}" for names, what in (
        (sorted(n for n in signed if n in present and present[n] != signed[n]), "changed since signing"),
        (sorted(set(signed) - set(present)), "missing"),
        (sorted(set(present) - set(signed)), "not signed")) if names]
    return "; ".join(parts) or None
