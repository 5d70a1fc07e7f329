"""Kernel filters for sandboxed programs: the seccomp program (built here, in the scorer).

The launcher (trainable/sandbox/launcher.py) installs this filter before it starts the
interpreter that runs the program, in every sandbox mode; the filter survives that one
`execve`, and the kernel then refuses the listed system calls with EPERM for the rest of the
process's life, whatever the program does in Python or in native code:

- creating processes (fork, vfork, execveat, clone without CLONE_THREAD; clone3 answers ENOSYS
  so that libc falls back to clone for threads): no daemons, no fork bombs, even as root,
  where RLIMIT_NPROC does not apply. `execve` passes only with the launcher's own path
  pointer (`SeccompProgram.exec_slots`, patched in by the launcher): its one exec of the
  interpreter; any other call is refused;
- reaching other processes or its own memory from outside Python (kill/tgkill/pidfd_*,
  ptrace, process_vm_readv/writev): the pass token sits in the harness's memory;
- file-system side effects the path checks cannot see: mknod/mkfifo, xattrs, chmod/chown,
  symbolic links, timestamps (utime*), `ioctl` beyond the few terminal/fd requests Python
  itself makes (no FS_IOC_* flags such as immutable, no freeze or trim), `fcntl`
  F_SETOWN/F_SETSIG/F_SETLEASE/F_NOTIFY (no signals or leases on host files). Hard links are
  left to Landlock, which refuses any that would bring a file from outside the working dir
  in (glibc's sem_open makes one);
- memory outside RLIMIT_AS (memfd, SysV/POSIX IPC), sockets (no network, no DNS even without
  a network namespace; only an AF_UNIX `socketpair`, which reaches nothing outside the
  process), namespaces and mounts, rlimit changes, and the kernel's administrative calls
  (modules, clocks, reboot, swap, BPF, io_uring...).

Honest HumanEval/MBPP programs never need any of these. A non-native system call ABI (i386
`int 0x80`, x32) kills the process, since its numbers would bypass the table.

Landlock (file-system paths) is applied by the launcher; see `_landlock` there.
"""

from __future__ import annotations

import errno
import platform
import struct
from dataclasses import dataclass

# struct seccomp_data: int nr; u32 arch; u64 instruction_pointer; u64 args[6] (little-endian
# on both tables' architectures: an argument's low half comes first).
_NR, _ARCH = 0, 4
_ARG_LOW = tuple(16 + 8 * i for i in range(6))
_LD_W_ABS, _JA, _JEQ_K, _JGE_K, _JSET_K, _RET_K = 0x20, 0x05, 0x15, 0x35, 0x45, 0x06
RET_ALLOW = 0x7FFF0000
RET_KILL_PROCESS = 0x80000000
RET_ERRNO = 0x00050000
CLONE_THREAD = 0x00010000
X32_SYSCALL_BIT = 0x40000000
AF_UNIX = 1
# ioctl requests Python itself makes on its own fds (isatty, terminal size, bytes waiting,
# blocking and close-on-exec flags); the same numbers on both architectures.
# TCGETS TIOCGPGRP TIOCGWINSZ FIONREAD FIONBIO FIONCLEX FIOCLEX
IOCTL_ALLOWED = (0x5401, 0x540F, 0x5413, 0x541B, 0x5421, 0x5450, 0x5451)
FCNTL_DENIED = (8, 10, 15, 1024, 1026)  # F_SETOWN F_SETSIG F_SETOWN_EX F_SETLEASE F_NOTIFY

# Denied calls by name, then per architecture the numbers (kernel syscall tables; x86_64's is
# arch/x86/entry/syscalls/syscall_64.tbl, aarch64 uses the generic include/uapi/asm-generic/
# unistd.h). Names missing from an architecture do not exist there (aarch64 has no fork).
DENIED = {
    "processes": ("fork", "vfork", "execveat"),
    "other processes": (
        "kill",
        "tkill",
        "tgkill",
        "rt_sigqueueinfo",
        "rt_tgsigqueueinfo",
        "pidfd_open",
        "pidfd_send_signal",
        "pidfd_getfd",
        "ptrace",
        "process_vm_readv",
        "process_vm_writev",
        "kcmp",
        "process_madvise",
        "process_mrelease",
        "setpriority",
        "sched_setparam",
        "sched_setscheduler",
        "sched_setaffinity",
        "sched_setattr",
        "ioprio_set",
        "move_pages",
        "migrate_pages",
    ),
    "file side effects": (
        "mknod",
        "mknodat",
        "setxattr",
        "lsetxattr",
        "fsetxattr",
        "removexattr",
        "lremovexattr",
        "fremovexattr",
        "setxattrat",
        "removexattrat",
        "chmod",
        "fchmod",
        "fchmodat",
        "fchmodat2",
        "chown",
        "fchown",
        "lchown",
        "fchownat",
        "symlink",
        "symlinkat",
        "name_to_handle_at",
        "open_by_handle_at",
        "utime",
        "utimes",
        "futimesat",
        "utimensat",
    ),
    "memory outside rlimits": (
        "memfd_create",
        "memfd_secret",
        "shmget",
        "shmat",
        "shmctl",
        "semget",
        "semop",
        "semctl",
        "semtimedop",
        "msgget",
        "msgsnd",
        "msgrcv",
        "msgctl",
        "mq_open",
        "mq_unlink",
        "mq_timedsend",
        "mq_timedreceive",
        "mq_notify",
        "mq_getsetattr",
        "mbind",
        "set_mempolicy",
        "set_mempolicy_home_node",
        "userfaultfd",
    ),
    "network": ("socket",),
    "namespaces and mounts": (
        "unshare",
        "setns",
        "mount",
        "umount2",
        "pivot_root",
        "chroot",
        "open_tree",
        "open_tree_attr",
        "move_mount",
        "fsopen",
        "fsconfig",
        "fsmount",
        "fspick",
        "mount_setattr",
        "statmount",
        "listmount",
    ),
    "limits": ("setrlimit", "prlimit64"),
    "kernel": (
        "bpf",
        "perf_event_open",
        "io_uring_setup",
        "io_uring_enter",
        "io_uring_register",
        "keyctl",
        "add_key",
        "request_key",
        "syslog",
        "personality",
        "modify_ldt",
        "iopl",
        "ioperm",
        "uselib",
        "ustat",
        "sysfs",
        "_sysctl",
        "vhangup",
        "acct",
        "quotactl",
        "quotactl_fd",
        "nfsservctl",
        "lookup_dcookie",
        "fanotify_init",
        "lsm_set_self_attr",
        "reboot",
        "kexec_load",
        "kexec_file_load",
        "init_module",
        "finit_module",
        "delete_module",
        "create_module",
        "swapon",
        "swapoff",
        "sethostname",
        "setdomainname",
        "settimeofday",
        "clock_settime",
        "clock_adjtime",
        "adjtimex",
    ),
}

_X86_64 = {
    "shmget": 29,
    "shmat": 30,
    "shmctl": 31,
    "socket": 41,
    "socketpair": 53,
    "clone": 56,
    "fork": 57,
    "vfork": 58,
    "execve": 59,
    "kill": 62,
    "semget": 64,
    "semop": 65,
    "semctl": 66,
    "msgget": 68,
    "msgsnd": 69,
    "msgrcv": 70,
    "msgctl": 71,
    "link": 86,
    "symlink": 88,
    "chmod": 90,
    "fchmod": 91,
    "chown": 92,
    "fchown": 93,
    "lchown": 94,
    "ptrace": 101,
    "utime": 132,
    "syslog": 103,
    "rt_sigqueueinfo": 129,
    "mknod": 133,
    "uselib": 134,
    "personality": 135,
    "ustat": 136,
    "sysfs": 139,
    "setpriority": 141,
    "sched_setparam": 142,
    "sched_setscheduler": 144,
    "vhangup": 153,
    "modify_ldt": 154,
    "pivot_root": 155,
    "_sysctl": 156,
    "adjtimex": 159,
    "setrlimit": 160,
    "chroot": 161,
    "acct": 163,
    "settimeofday": 164,
    "mount": 165,
    "umount2": 166,
    "swapon": 167,
    "swapoff": 168,
    "reboot": 169,
    "sethostname": 170,
    "setdomainname": 171,
    "iopl": 172,
    "ioperm": 173,
    "create_module": 174,
    "init_module": 175,
    "delete_module": 176,
    "quotactl": 179,
    "nfsservctl": 180,
    "setxattr": 188,
    "lsetxattr": 189,
    "fsetxattr": 190,
    "removexattr": 197,
    "lremovexattr": 198,
    "fremovexattr": 199,
    "tkill": 200,
    "utimes": 235,
    "sched_setaffinity": 203,
    "lookup_dcookie": 212,
    "semtimedop": 220,
    "clock_settime": 227,
    "tgkill": 234,
    "mbind": 237,
    "set_mempolicy": 238,
    "mq_open": 240,
    "mq_unlink": 241,
    "mq_timedsend": 242,
    "mq_timedreceive": 243,
    "mq_notify": 244,
    "mq_getsetattr": 245,
    "kexec_load": 246,
    "add_key": 248,
    "request_key": 249,
    "keyctl": 250,
    "ioprio_set": 251,
    "migrate_pages": 256,
    "mknodat": 259,
    "fchownat": 260,
    "linkat": 265,
    "futimesat": 261,
    "symlinkat": 266,
    "fchmodat": 268,
    "unshare": 272,
    "move_pages": 279,
    "rt_tgsigqueueinfo": 297,
    "perf_event_open": 298,
    "fanotify_init": 300,
    "prlimit64": 302,
    "name_to_handle_at": 303,
    "open_by_handle_at": 304,
    "clock_adjtime": 305,
    "setns": 308,
    "utimensat": 280,
    "ioctl": 16,
    "fcntl": 72,
    "process_vm_readv": 310,
    "process_vm_writev": 311,
    "kcmp": 312,
    "finit_module": 313,
    "sched_setattr": 314,
    "memfd_create": 319,
    "kexec_file_load": 320,
    "bpf": 321,
    "execveat": 322,
    "userfaultfd": 323,
}
_AARCH64 = {
    "setxattr": 5,
    "lsetxattr": 6,
    "fsetxattr": 7,
    "removexattr": 14,
    "lremovexattr": 15,
    "fremovexattr": 16,
    "lookup_dcookie": 18,
    "fcntl": 25,
    "ioctl": 29,
    "utimensat": 88,
    "ioprio_set": 30,
    "mknodat": 33,
    "symlinkat": 36,
    "linkat": 37,
    "umount2": 39,
    "mount": 40,
    "pivot_root": 41,
    "nfsservctl": 42,
    "chroot": 51,
    "fchmod": 52,
    "fchmodat": 53,
    "fchownat": 54,
    "fchown": 55,
    "vhangup": 58,
    "quotactl": 60,
    "acct": 89,
    "personality": 92,
    "unshare": 97,
    "kexec_load": 104,
    "init_module": 105,
    "delete_module": 106,
    "clock_settime": 112,
    "syslog": 116,
    "ptrace": 117,
    "sched_setparam": 118,
    "sched_setscheduler": 119,
    "sched_setaffinity": 122,
    "kill": 129,
    "tkill": 130,
    "tgkill": 131,
    "rt_sigqueueinfo": 138,
    "setpriority": 140,
    "reboot": 142,
    "sethostname": 161,
    "setdomainname": 162,
    "setrlimit": 164,
    "settimeofday": 170,
    "adjtimex": 171,
    "mq_open": 180,
    "mq_unlink": 181,
    "mq_timedsend": 182,
    "mq_timedreceive": 183,
    "mq_notify": 184,
    "mq_getsetattr": 185,
    "msgget": 186,
    "msgctl": 187,
    "msgrcv": 188,
    "msgsnd": 189,
    "semget": 190,
    "semctl": 191,
    "semtimedop": 192,
    "semop": 193,
    "shmget": 194,
    "shmctl": 195,
    "shmat": 196,
    "socket": 198,
    "socketpair": 199,
    "add_key": 217,
    "request_key": 218,
    "keyctl": 219,
    "clone": 220,
    "execve": 221,
    "swapon": 224,
    "swapoff": 225,
    "mbind": 235,
    "set_mempolicy": 237,
    "migrate_pages": 238,
    "move_pages": 239,
    "rt_tgsigqueueinfo": 240,
    "perf_event_open": 241,
    "prlimit64": 261,
    "fanotify_init": 262,
    "name_to_handle_at": 264,
    "open_by_handle_at": 265,
    "clock_adjtime": 266,
    "setns": 268,
    "process_vm_readv": 270,
    "process_vm_writev": 271,
    "kcmp": 272,
    "finit_module": 273,
    "sched_setattr": 274,
    "memfd_create": 279,
    "bpf": 280,
    "execveat": 281,
    "userfaultfd": 282,
    "kexec_file_load": 294,
}
# Numbers from 403 on are shared by every architecture.
_COMMON = {
    "pidfd_send_signal": 424,
    "io_uring_setup": 425,
    "io_uring_enter": 426,
    "io_uring_register": 427,
    "open_tree": 428,
    "move_mount": 429,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "fspick": 433,
    "pidfd_open": 434,
    "clone3": 435,
    "pidfd_getfd": 438,
    "process_madvise": 440,
    "mount_setattr": 442,
    "quotactl_fd": 443,
    "memfd_secret": 447,
    "process_mrelease": 448,
    "set_mempolicy_home_node": 450,
    "fchmodat2": 452,
    "statmount": 457,
    "listmount": 458,
    "lsm_set_self_attr": 460,
    "setxattrat": 463,
    "removexattrat": 466,
    "open_tree_attr": 467,
}
# AUDIT_ARCH_* (include/uapi/linux/audit.h) and each architecture's table.
ARCHES = {"x86_64": (0xC000003E, {**_X86_64, **_COMMON}), "aarch64": (0xC00000B7, {**_AARCH64, **_COMMON})}


def machine() -> str:
    name = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(name, name)


@dataclass(frozen=True)
class SeccompProgram:
    """A classic-BPF program (struct sock_filter[]) and the two instructions whose constants
    the launcher sets to the low and high half of its exec path's address."""

    code: bytes
    exec_slots: tuple[int, int]


def seccomp_program(arch: str | None = None) -> SeccompProgram | None:
    """The filter for `arch`; None where we have no table."""
    arch = arch or machine()
    if arch not in ARCHES:
        return None
    audit_arch, numbers = ARCHES[arch]
    denied = sorted({numbers[name] for names in DENIED.values() for name in names if name in numbers})
    code: list = [(_LD_W_ABS, 0, 0, _ARCH), (_JEQ_K, 0, "kill", audit_arch), (_LD_W_ABS, 0, 0, _NR)]
    if arch == "x86_64":  # x32 calls share numbers with a high bit set
        code.append((_JGE_K, "eperm", 0, X32_SYSCALL_BIT))
    code += [(_JEQ_K, "eperm", 0, nr) for nr in denied]
    code += [
        (_JEQ_K, "enosys", 0, numbers["clone3"]),  # flags live in memory: let libc fall back to clone
        (_JEQ_K, "clone", 0, numbers["clone"]),
        (_JEQ_K, "ioctl", 0, numbers["ioctl"]),
        (_JEQ_K, "fcntl", 0, numbers["fcntl"]),
        (_JEQ_K, "socketpair", 0, numbers["socketpair"]),
        (_JEQ_K, "execve", "allow", numbers["execve"]),
        ("clone", _LD_W_ABS, 0, 0, _ARG_LOW[0]),
        (_JSET_K, "allow", "eperm", CLONE_THREAD),
        ("ioctl", _LD_W_ABS, 0, 0, _ARG_LOW[1]),  # the request is an unsigned int
        *[(_JEQ_K, "allow", 0, request) for request in IOCTL_ALLOWED],
        (_JA, 0, 0, "eperm"),
        ("fcntl", _LD_W_ABS, 0, 0, _ARG_LOW[1]),
        *[(_JEQ_K, "eperm", 0, command) for command in FCNTL_DENIED],
        (_JA, 0, 0, "allow"),
        ("socketpair", _LD_W_ABS, 0, 0, _ARG_LOW[0]),
        (_JEQ_K, "allow", "eperm", AF_UNIX),
        ("execve", _LD_W_ABS, 0, 0, _ARG_LOW[0]),  # the path pointer: low half, then high half
        (_JEQ_K, 0, "eperm", 0),
        (_LD_W_ABS, 0, 0, _ARG_LOW[0] + 4),
        (_JEQ_K, "allow", "eperm", 0),
    ]
    labels = {
        "allow": RET_ALLOW,
        "eperm": RET_ERRNO | errno.EPERM,
        "enosys": RET_ERRNO | errno.ENOSYS,
        "kill": RET_KILL_PROCESS,
    }
    program = _assemble(code, labels)
    return SeccompProgram(program, (len(code) - 3, len(code) - 1))


def _assemble(code: list[tuple], returns: dict[str, int]) -> bytes:
    # An instruction may start with a label of its own; jumps (and a JA's constant) name a
    # label or a return value, and each return value becomes one `ret` after the code.
    where = {ins[0]: pc for pc, ins in enumerate(code) if isinstance(ins[0], str)}
    where |= {name: len(code) + i for i, name in enumerate(returns)}
    out = []
    for pc, ins in enumerate(code):
        op, jt, jf, k = ins[1:] if isinstance(ins[0], str) else ins
        jt, jf = (where[j] - pc - 1 if isinstance(j, str) else j for j in (jt, jf))
        if op == _JA and isinstance(k, str):
            k = where[k] - pc - 1
        assert 0 <= jt < 256 and 0 <= jf < 256, "BPF jump out of range"
        out.append(struct.pack("=HBBI", op, jt, jf, k))
    out += [struct.pack("=HBBI", _RET_K, 0, 0, value) for value in returns.values()]
    return b"".join(out)
