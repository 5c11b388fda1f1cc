"""How a build host is reached: each transport moves bytes and runs argv on one host,
and knows nothing about models (see base.py for the interface)."""

from __future__ import annotations

from typing import Any, Callable

from ..inventory import Host
from .base import Transport


def make_transport(host: Host, images: Callable[[Any, str], str] | None = None,
                   connect_timeout: float = 60.0) -> Transport:
    """The transport for an inventory host (imported lazily: each pulls its own SDK).
    ``images`` gives Docker hosts their image tag per environment (docker.ImageSource);
    ``connect_timeout`` bounds how long a host may take to answer at first."""
    if host.transport == "docker":
        from .docker import DockerTransport

        return DockerTransport(host, images, connect_timeout=connect_timeout)
    if host.transport == "local":
        from .local import LocalTransport

        return LocalTransport(host)
    from .ssh import SshTransport

    return SshTransport(host, connect_timeout=connect_timeout)
