"""The seccomp profile for build containers.

Docker's default profile refuses ``personality(ADDR_NO_RANDOMIZE)``, which the packager
needs to make converters that iterate address-keyed hash tables (onnxruntime's
ORT-format writer) write the same bytes every time. This profile allows that call and
denies what Docker's default denies to an unprivileged container: kernel-module,
clock, mount/namespace, tracing, keyring, BPF and reboot calls. Containers also run
with every capability dropped, ``no-new-privileges`` and no network.
"""

from __future__ import annotations

import json

_EPERM, _ENOSYS = 1, 38

_DENIED = sorted({
    "acct", "add_key", "bpf", "clock_adjtime", "clock_settime", "create_module", "delete_module",
    "fanotify_init", "finit_module", "fsconfig", "fsmount", "fsopen", "fspick", "get_kernel_syms",
    "get_mempolicy", "init_module", "ioperm", "iopl", "kcmp", "kexec_file_load", "kexec_load",
    "keyctl", "lookup_dcookie", "mbind", "mount", "mount_setattr", "move_mount", "move_pages",
    "name_to_handle_at", "nfsservctl", "open_by_handle_at", "open_tree", "perf_event_open",
    "pidfd_getfd", "pivot_root", "process_vm_readv", "process_vm_writev", "ptrace",
    "query_module", "quotactl", "quotactl_fd", "reboot", "request_key", "set_mempolicy",
    "setns", "settimeofday", "stime", "swapoff", "swapon", "syslog", "sysfs", "_sysctl",
    "umount", "umount2", "unshare", "uselib", "userfaultfd", "ustat", "vm86", "vm86old",
})

#: clone() flags that create namespaces: CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET
_NAMESPACE_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000)

PROFILE = {
    "defaultAction": "SCMP_ACT_ALLOW",
    "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32",
                      "SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
    "syscalls": [
        {"names": _DENIED, "action": "SCMP_ACT_ERRNO", "errnoRet": _EPERM},
        # glibc falls back to clone() on ENOSYS, whose flags seccomp can inspect
        {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": _ENOSYS},
        *[
            {"names": ["clone"], "action": "SCMP_ACT_ERRNO", "errnoRet": _EPERM,
             "args": [{"index": 0, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ"}]}
            for flag in _NAMESPACE_FLAGS
        ],
    ],
}

SECURITY_OPT = [f"seccomp={json.dumps(PROFILE, separators=(',', ':'))}", "no-new-privileges"]
