"""The first stage of a sandboxed program's process: lock it down, then become its interpreter.

Never imported by the scorer: trainable/sandbox/runner.py runs this file's text as
`python -I -S -B -c TEXT CONFIG_JSON HARNESS_TEXT` inside the sandbox. No program code exists
yet. In order:
1. rlimits (address space, CPU, file size, open files, processes, no core; hard = soft);
2. where it runs as root (the opt-in modes have no user namespace): every capability set
   cleared (bounding, ambient, then effective/permitted/inheritable), securebits locked so
   that uid 0 regains none at exec, and the uid/gid dropped to `drop_to` when the scorer
   found the interpreter readable by that user;
3. the private temp dir ($TMPDIR, inside the working dir) and, in rlimits+netns, a private
   /dev/shm in its own mount namespace (bwrap has its own);
4. no_new_privs, Landlock (reads only `readable`, lists `listable`, writes only below the
   working dir and the private /dev/shm, no TCP,
   no signals out of the sandbox) and the seccomp program (trainable/sandbox/filters.py), whose
   one allowed `execve` is the call below, recognised by this process's path pointer;
5. `execve` of the interpreter on the harness (trainable/sandbox/harness.py).

So the interpreter that runs the program starts with every filter in place and never loads
`ctypes` (this stage's, and everything else of it, is gone with the exec); the files of the
denied modules are outside `readable`, so it cannot load them either.
"""


def _launch():
    import ctypes
    import json
    import os
    import sys

    config = json.loads(sys.argv[1])
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    _limit_resources(config)
    if config["shm"] and os.geteuid() == 0:  # rlimits+netns: our own mount namespace
        _private_shm(ctypes, libc, config["shm_bytes"])
    if os.geteuid() == 0:
        _drop_privileges(ctypes, libc, config.get("drop_to"))
    os.makedirs(config["tmpdir"], mode=0o700, exist_ok=True)
    path = ctypes.create_string_buffer(os.fsencode(config["python"]))
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
    if config["kernel_filters"]:
        _landlock(ctypes, libc, config["root"], config["readable"], config["listable"], config["shm"])
        if config["seccomp"]:
            _seccomp(ctypes, libc, config["seccomp"], config["exec_slots"], ctypes.addressof(path))
    argv = [config["python"], "-I", "-S", "-B", "-c", sys.argv[2], sys.argv[1]]
    env = [f"{k}={v}" for k, v in os.environ.items()]
    c_argv = (ctypes.c_char_p * (len(argv) + 1))(*[os.fsencode(a) for a in argv], None)
    c_env = (ctypes.c_char_p * (len(env) + 1))(*[os.fsencode(e) for e in env], None)
    libc.execve(path, c_argv, c_env)
    raise OSError(ctypes.get_errno(), "execve of the sandboxed interpreter failed")


def _limit_resources(config):
    import resource

    for name, value in (
        ("AS", config["memory_bytes"]),
        ("CPU", config["cpu_s"]),
        ("FSIZE", config["file_bytes"]),
        ("NOFILE", 256),
        ("NPROC", 64),
        ("CORE", 0),
    ):
        limit = getattr(resource, "RLIMIT_" + name)
        hard = resource.getrlimit(limit)[1]
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(limit, (value, value))  # hard = soft: the program cannot raise it


def _private_shm(ctypes, libc, size):
    """A fresh tmpfs on /dev/shm, seen only in this mount namespace (multiprocessing's locks).
    Without a /dev/shm (some containers) there is none to replace, and none to reach."""
    import os

    if not os.path.isdir("/dev/shm"):
        return
    options = f"size={size},mode=1777".encode()
    if libc.mount(b"tmpfs", b"/dev/shm", b"tmpfs", 2 | 4 | 8, options) != 0:  # nosuid nodev noexec
        raise OSError(ctypes.get_errno(), "mount of a private /dev/shm failed")


def _drop_privileges(ctypes, libc, drop_to):
    """Root without capabilities: no immutable flags, no DAC override, no raw I/O, nothing
    that seccomp and Landlock would otherwise have to refuse one by one."""
    import os

    for cap in range(64):  # PR_CAPBSET_DROP; EINVAL past the kernel's last capability
        if libc.prctl(24, cap, 0, 0, 0) != 0 and ctypes.get_errno() != 22:
            raise OSError(ctypes.get_errno(), f"prctl(PR_CAPBSET_DROP, {cap}) failed")
    libc.prctl(47, 4, 0, 0, 0)  # PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL
    # SECBIT_NOROOT(+LOCKED): uid 0 gains no capabilities at exec; KEEP_CAPS and
    # NO_CAP_AMBIENT_RAISE locked in their safe settings.
    if libc.prctl(28, 0x01 | 0x02 | 0x20 | 0x40 | 0x80, 0, 0, 0) != 0:  # PR_SET_SECUREBITS
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECUREBITS) failed")
    if drop_to is not None:
        os.setgroups([])
        os.setresgid(drop_to, drop_to, drop_to)
        os.setresuid(drop_to, drop_to, drop_to)
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    data = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable, twice: all zero
    if libc.capset(header, data) != 0:
        raise OSError(ctypes.get_errno(), "capset failed")
    libc.capget(header, data)
    if any(data):
        raise OSError(1, "capabilities are still set after capset")


def _landlock(ctypes, libc, root, readable, listable, shm):
    """Restrict file access to the allowed trees (Linux >= 5.13; skipped where the kernel has
    no Landlock: bwrap's mount namespace and the guard still hold)."""
    import os
    import stat
    import struct

    abi = libc.syscall(444, None, 0, 1)  # landlock_create_ruleset(NULL, 0, VERSION)
    if abi < 1:
        return
    fs = (1 << 13) - 1  # ABI 1: execute, write, read, read_dir, remove_*, make_*
    fs |= (1 << 13 if abi >= 2 else 0) | (1 << 14 if abi >= 3 else 0) | (1 << 15 if abi >= 5 else 0)
    net, scoped = (3 if abi >= 4 else 0), (3 if abi >= 6 else 0)  # TCP bind+connect; signals
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    attr = ctypes.create_string_buffer(struct.pack("=QQQ", fs, net, scoped)[:size], size)
    ruleset = libc.syscall(444, attr, size, 0)
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset failed")
    read = 1 | 4 | 8  # execute, read_file, read_dir
    file_only = 1 | 2 | 4 | (1 << 14) | (1 << 15)
    rules = [(root, fs), ("/dev/null", 2 | 4), ("/dev/urandom", 4), ("/dev/zero", 4)]
    if shm:
        rules.append(("/dev/shm", fs))
    rules += [(path, read) for path in readable] + [(path, 8) for path in listable]  # 8: read_dir
    for path, access in rules:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            continue
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            access &= file_only
        rule = ctypes.create_string_buffer(struct.pack("=Qi", access & fs, fd), 12)
        added = libc.syscall(445, ruleset, 1, rule, 0)  # LANDLOCK_RULE_PATH_BENEATH
        os.close(fd)
        if added < 0:
            raise OSError(ctypes.get_errno(), f"landlock_add_rule {path} failed")
    if libc.syscall(446, ruleset, 0) < 0:
        raise OSError(ctypes.get_errno(), "landlock_restrict_self failed")
    os.close(ruleset)


def _seccomp(ctypes, libc, program_hex, exec_slots, exec_pointer):
    import struct

    program = bytearray.fromhex(program_hex)
    for slot, half in zip(exec_slots, (exec_pointer & 0xFFFFFFFF, exec_pointer >> 32)):
        struct.pack_into("=I", program, 8 * slot + 4, half)

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]

    fprog = SockFprog(len(program) // 8, bytes(program))
    if libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) != 0:  # PR_SET_SECCOMP, FILTER
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP) failed")


if __name__ == "__main__":
    try:
        _launch()
    except BaseException as error:
        import os

        os.write(2, f"sandbox launcher: {type(error).__name__}: {error}"[:300].encode() + b"\n")
        os._exit(1)
