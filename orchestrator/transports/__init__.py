"""How a build host is reached: each transport moves bytes and runs argv on one host,
and knows nothing about models (see base.py for the interface)."""

from __future__ import annotations

from ..inventory import Host
from .base import Transport


def make_transport(host: Host) -> Transport:
    """The transport for an inventory host (imported lazily: each pulls its own SDK)."""
    if host.transport == "docker":
        from .docker import DockerTransport

        return DockerTransport(host)
    if host.transport == "local":
        from .local import LocalTransport

        return LocalTransport(host)
    from .ssh import SshTransport

    return SshTransport(host)
