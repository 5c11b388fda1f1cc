"""What an emulated (qemu-user) container needs to run the engines correctly.

Found on these machines, and each one checked by a test:

* onnxruntime's aarch64 wheel segfaults at import under qemu-user: its CPU detection
  (cpuinfo) parses ``/proc/cpuinfo``, which still describes the x86 host. An ARM-style
  cpuinfo file bind-mounted over it fixes that.
* OpenVINO computes wrong results under qemu's default CPU model (it advertises SVE);
  ``QEMU_CPU=cortex-a72`` makes qemu emulate a plain ARMv8.0 core and OpenVINO agrees
  with the reference again.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..storage import cache_root, write_atomic

#: guest architecture -> qemu CPU model that the engines compute correctly on
QEMU_CPU = {"aarch64": "cortex-a72"}

_CORE = """processor\t: {index}
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm crc32 cpuid
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x0
CPU part\t: 0xd08
CPU revision\t: 3

"""


def arm_cpuinfo(cores: int) -> str:
    """/proc/cpuinfo as a Cortex-A72 (matching QEMU_CPU) with ``cores`` cores reports it."""
    return "".join(_CORE.format(index=i) for i in range(max(1, cores)))


def cpuinfo_file(arch: str) -> Path:
    """A cpuinfo file for ``arch`` on this machine, to bind-mount over /proc/cpuinfo."""
    if arch != "aarch64":
        raise ValueError(f"no emulated cpuinfo for {arch}")
    path = cache_root() / "emulation" / f"cpuinfo-{arch}"
    text = arm_cpuinfo(os.cpu_count() or 1)
    if not path.is_file() or path.read_text() != text:
        write_atomic(path, text)
    return path
