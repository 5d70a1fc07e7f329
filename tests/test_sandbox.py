"""The sandbox: out-of-band pass signal, isolation layers, hostile canary, parallel order, modes."""

from __future__ import annotations

import fcntl
import os
import secrets
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pytest

from trainable.sandbox import runner as sandbox
from trainable.data.splits import load_problems
from softprompt_cli.errors import UsageError
from trainable.sandbox.runner import Program, SandboxUnavailable, run_programs, sandbox_mode
from trainable.sandbox.filters import ARCHES, seccomp_program
from trainable.sandbox.score import build_program

sys.path.insert(0, os.path.dirname(__file__))
from hostile_corpus import HOSTILE, KERNEL_LAYER, KNOWN_LIMITS, OS_LAYER, TASK_ID, render  # noqa: E402 - after the sys.path line above

HOSTILE_TIMEOUT_S = 3.0
SECRET_ENV = "SPS_FAKE_SECRET"
CHECK_DOUBLES = "def check(f):\n    assert f(2) == 4\n"
FALLBACK_MODES = ["rlimits+netns", "rlimits"]


def _bwrap_or_skip() -> None:
    if sandbox_mode() != "bwrap":
        pytest.skip(f"bubblewrap does not run here (mode is {sandbox_mode()!r})")


def _mode_or_skip(mode: str) -> None:
    if mode == "bwrap":
        _bwrap_or_skip()
    if mode == "rlimits+netns" and not sandbox._netns_works():
        pytest.skip("unshare -n is not permitted here")


@pytest.fixture
def traps(tmp_path, monkeypatch):
    """Things an escaping program would touch: a sentinel file, a secret file and env var, a
    listening socket, a marker for daemons. `verify(results)` checks none was touched."""
    sentinel = tmp_path / "sentinel.txt"
    sentinel.write_text("original")
    secret = "s3cr3t-" + secrets.token_hex(8)
    (tmp_path / "secret.txt").write_text(secret)
    canary = f"listed-only-{secrets.token_hex(4)}"  # a name no attack writes: seen only in a listing
    (tmp_path / canary).write_text("")
    monkeypatch.setenv(SECRET_ENV, secret)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    values = {
        "SENTINEL": sentinel,
        "SENTINEL_DIR": tmp_path,
        "SECRET_FILE": tmp_path / "secret.txt",
        "SECRET_ENV": SECRET_ENV,
        "PORT": listener.getsockname()[1],
        "MARKER": "sps-daemon-" + secrets.token_hex(6),
    }
    before = sorted(os.listdir(tmp_path))
    mtime, flags = sentinel.stat().st_mtime_ns, _fs_flags(sentinel)
    workdirs = _sandbox_workdirs()

    def verify(results) -> None:
        assert sentinel.read_text() == "original"
        assert sentinel.stat().st_mtime_ns == mtime, "a program changed a host file's timestamps"
        assert _fs_flags(sentinel) == flags, "a program changed a host file's inode flags (immutable?)"
        left = _sandbox_workdirs() - workdirs
        assert not left, f"working dirs left behind: {sorted(left)}"
        assert os.listxattr(sentinel) == [], "a program set an extended attribute"
        assert sorted(os.listdir(tmp_path)) == before, "a program created or removed files"
        leaks = [r.detail for r in results if secret in r.detail or canary in r.detail]
        assert not leaks, f"a secret or a host directory listing leaked into results: {leaks}"
        with pytest.raises(BlockingIOError):
            listener.accept()  # no connection ever arrived
        assert not _processes_with(values["MARKER"], settle_s=5.0), "a daemon survived"

    yield values, verify
    _set_fs_flags(sentinel, flags)  # only if verify already failed: tmp_path must stay removable
    listener.close()
    for pid in _processes_with(values["MARKER"]):  # only if verify already failed
        os.kill(pid, 9)


FS_IOC_GETFLAGS, FS_IOC_SETFLAGS = 0x80086601, 0x40086602


def _fs_flags(path: Path) -> int | None:
    """The inode flags (chattr's: immutable, append-only, ...); None where the file system has none."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return struct.unpack("i", fcntl.ioctl(fd, FS_IOC_GETFLAGS, b"\0" * 4))[0]
    except OSError:
        return None
    finally:
        os.close(fd)


def _set_fs_flags(path: Path, flags: int | None) -> None:
    if flags is None or _fs_flags(path) == flags:
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("i", flags))
    finally:
        os.close(fd)


def _sandbox_workdirs() -> set[str]:
    """The fallback modes' working dirs (tempfile.mkdtemp(prefix="sandbox-")) that exist now."""
    root = tempfile.gettempdir()
    return {name for name in os.listdir(root) if name.startswith("sandbox-")}


def _processes_with(marker: str, settle_s: float = 0.0) -> list[int]:
    """Processes whose command line holds `marker`; waits up to `settle_s` for them to go (a
    killed pid namespace is torn down by the kernel asynchronously)."""
    deadline = time.monotonic() + settle_s
    while (found := _scan_processes(marker)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return found


def _scan_processes(marker: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found


def _hostile_programs(names, values) -> list[Program]:
    problem = load_problems()[TASK_ID]
    return [build_program(problem, render(HOSTILE[name], values)) for name in names]


def _report(label: str, names, results) -> None:
    print(f"\n[{label}]", *(f"{n}: {r.status} ({r.detail})" for n, r in zip(names, results)), sep="\n  ")


def test_reports_mode_and_prefers_bwrap():
    if shutil.which("bwrap") is None:
        pytest.skip("bwrap is not installed here (apt-get install bubblewrap)")
    mode = sandbox_mode()
    print(f"\nsandbox mode: {mode}")
    assert mode == "bwrap"


def test_pass_needs_check_to_return_not_an_exit_code():
    programs = [
        CHECK_DOUBLES + "check(lambda x: x * 2)",  # passes, prints nothing special
        "import sys\nprint('FAILED'); print('FAILED', file=sys.stderr)\n"
        + CHECK_DOUBLES
        + "check(lambda x: x * 2)",  # passes whatever it prints
        "import os\nos._exit(0)\n" + CHECK_DOUBLES + "check(lambda x: x * 2)",
        "raise SystemExit(0)\n" + CHECK_DOUBLES + "check(lambda x: x * 2)",
        CHECK_DOUBLES + "check(lambda x: x + 1)",
    ]
    results = run_programs(programs, timeout_s=5)
    assert [r.status for r in results] == ["passed", "passed", "failed", "failed", "failed"]
    assert "before check returned" in results[2].detail
    assert results[4].detail.startswith("AssertionError")


def test_program_passes_only_through_the_tests_own_check():
    double = "def double(x):\n    return 2 * x\n"
    programs = [
        Program(double, CHECK_DOUBLES, "double"),
        Program("def double(x):\n    return x\n", CHECK_DOUBLES, "double"),
        Program(double + "raise StopIteration\n", CHECK_DOUBLES, "double"),
        Program("def double(x):\n    return next(iter([]))\n", CHECK_DOUBLES, "double"),
        Program(double, CHECK_DOUBLES, "missing_name"),
        Program(double, "def helper():\n    pass\n", "double"),  # the test defines no check
        Program(double + "def check(f):\n    pass\n", CHECK_DOUBLES, "double"),  # overwritten
        Program(double, CHECK_DOUBLES + "check = lambda f: None\n", "double"),
    ]
    results = run_programs(programs, timeout_s=5)
    assert [r.passed for r in results] == [True, False, False, False, False, False, True, False]
    assert "RuntimeError: generator raised StopIteration" in results[2].detail
    assert "name 'missing_name' is not defined" in results[4].detail
    assert "not the test's own check" in results[7].detail


def test_parallel_results_keep_input_order():
    kinds = {
        "pass": CHECK_DOUBLES + "check(lambda x: 2 * x)",
        "fail": CHECK_DOUBLES + "check(lambda x: x)",
        "loop": "while True:\n    pass",
    }
    order = ["loop", "pass", "fail", "pass", "loop", "fail", "pass", "fail"]
    results = run_programs([kinds[k] for k in order], timeout_s=1.0, workers=2)
    expected = {"pass": "passed", "fail": "failed", "loop": "timed out"}
    assert [r.status for r in results] == [expected[k] for k in order]
    assert [r.passed for r in results] == [k == "pass" for k in order]


def test_bad_arguments_are_usage_errors(monkeypatch):
    with pytest.raises(UsageError, match="timeout_s"):
        run_programs(["pass"], timeout_s=0)
    with pytest.raises(UsageError, match="workers"):
        run_programs(["pass"], timeout_s=5, workers=0)
    with pytest.raises(UsageError, match="sandbox mode"):
        run_programs(["pass"], timeout_s=5, mode="docker")
    with pytest.raises(UsageError, match=r"programs\[1\]"):
        run_programs(["pass", 42], timeout_s=5)
    with pytest.raises(UsageError, match=r"programs\[0\].entry_point"):
        run_programs([Program("pass", CHECK_DOUBLES, None)], timeout_s=5)
    monkeypatch.setenv(sandbox.MODE_ENV, "sandbox-of-sand")
    with pytest.raises(UsageError, match=r"SOFTPROMPT_SANDBOX.*got 'sandbox-of-sand'"):
        sandbox_mode()
    monkeypatch.setenv(sandbox.MODE_ENV, "rlimits")
    assert sandbox_mode() == "rlimits"
    assert run_programs([], timeout_s=5) == []


def test_without_bwrap_scoring_stops_unless_a_weaker_mode_is_named(monkeypatch):
    real_which = shutil.which
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None if name == "bwrap" else real_which(name))
    monkeypatch.delenv(sandbox.MODE_ENV, raising=False)
    sandbox._probe.cache_clear()
    sandbox._announce.cache_clear()
    try:
        with pytest.raises(SandboxUnavailable, match=r"bwrap is not installed.*SOFTPROMPT_SANDBOX=rlimits"):
            run_programs(["pass"], timeout_s=5)
        monkeypatch.setenv(sandbox.MODE_ENV, "rlimits")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert run_programs(["pass"], timeout_s=5)[0].passed
        assert any("SANDBOX IS WEAKER" in str(w.message) for w in caught)
    finally:
        sandbox._probe.cache_clear()
        sandbox._announce.cache_clear()


def test_evaluate_cli_without_bwrap_is_one_line_exit_2(tmp_path):
    """No bubblewrap on PATH and no opt-in: `--completions` stops before scoring anything."""
    samples = tmp_path / "samples.jsonl"
    samples.write_text('{"task_id": "HumanEval/0", "completion": "    return True\\n"}\n')
    env = {k: v for k, v in os.environ.items() if k != sandbox.MODE_ENV}
    env["PATH"] = str(tmp_path)  # no bwrap there
    proc = subprocess.run(
        [sys.executable, "-m", "trainable.evaluate", "--completions", str(samples)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "bubblewrap cannot run here" in lines[0], proc.stderr


@pytest.mark.parametrize("mode", ["bwrap", *FALLBACK_MODES])
def test_hostile_corpus_all_fail_and_leave_no_trace(mode, traps):
    _mode_or_skip(mode)
    values, verify = traps
    names = list(HOSTILE)
    assert len(names) >= 105
    results = run_programs(_hostile_programs(names, values), timeout_s=HOSTILE_TIMEOUT_S, mode=mode)
    _report(mode, names, results)
    passed = [name for name, result in zip(names, results) if result.passed]
    assert not passed, f"hostile completions passed in mode {mode}: {passed}"
    verify(results)


def test_bwrap_alone_contains_os_level_attacks(traps):
    """Guard and kernel filters off: namespaces, read-only binds and the tmpfs still hold."""
    _bwrap_or_skip()
    values, verify = traps
    results = run_programs(
        _hostile_programs(OS_LAYER, values),
        timeout_s=HOSTILE_TIMEOUT_S,
        mode="bwrap",
        guard=False,
        kernel_filters=False,
    )
    _report("bwrap alone", OS_LAYER, results)
    assert not [name for name, result in zip(OS_LAYER, results) if result.passed]
    verify(results)


@pytest.mark.parametrize("mode", ["bwrap", "rlimits"])
def test_kernel_filters_alone_contain_os_level_attacks(mode, traps):
    """Guard off, and in "rlimits" no namespaces either: seccomp and Landlock hold on their own,
    fork bombs included (as root, where RLIMIT_NPROC does not count)."""
    _mode_or_skip(mode)
    values, verify = traps
    results = run_programs(_hostile_programs(KERNEL_LAYER, values), timeout_s=HOSTILE_TIMEOUT_S, mode=mode, guard=False)
    _report(f"{mode}, kernel filters without the guard", KERNEL_LAYER, results)
    assert not [name for name, result in zip(KERNEL_LAYER, results) if result.passed]
    verify(results)


# Programs that pass only when the sandbox refused what they tried: effects inside the
# working dir that a trap outside cannot see. Run without the guard, so the kernel answers.
CONTAINMENT_PROBES = {
    "no_processes": """
import os
spawned = 0
for _ in range(150):
    try:
        if os.fork() == 0:
            os._exit(0)
        spawned += 1
    except OSError:
        pass
assert spawned == 0, spawned""",
    "no_fifos_or_nodes": """
import os, stat
for make in (lambda: os.mkfifo("f"), lambda: os.mknod("n", stat.S_IFIFO | 0o600)):
    try:
        make()
        raise AssertionError("created a node")
    except PermissionError:
        pass
assert not {"f", "n"} & set(os.listdir("."))""",
    "no_memfd_no_sockets_no_xattrs": """
import os, socket
open("x", "w").close()
for attempt in (lambda: os.memfd_create("m"), lambda: socket.socket(),
                lambda: socket.socket(socket.AF_UNIX), lambda: os.setxattr("x", "user.a", b"1")):
    try:
        attempt()
        raise AssertionError("allowed")
    except PermissionError:
        pass
a, b = socket.socketpair()  # AF_UNIX, inside the process: allowed
a.sendall(b"ping")
assert b.recv(4) == b"ping"
""",
    "no_timestamps_flags_or_file_signals": """
import fcntl, os, struct
open("x", "w").close()
fd = os.open("x", os.O_RDONLY)
FS_IOC_GETFLAGS, FS_IOC_SETFLAGS, FS_IMMUTABLE_FL = 0x80086601, 0x40086602, 0x10
for attempt in (lambda: os.utime("x", (0, 0)), lambda: os.utime(fd, (0, 0)),
                lambda: fcntl.ioctl(fd, FS_IOC_GETFLAGS, b"\\0" * 4),
                lambda: fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("i", FS_IMMUTABLE_FL)),
                lambda: fcntl.fcntl(fd, fcntl.F_SETOWN, 1),
                lambda: fcntl.fcntl(fd, fcntl.F_SETSIG, 9),
                lambda: fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)):
    try:
        attempt()
        raise AssertionError("allowed")
    except PermissionError:
        pass
assert os.get_blocking(fd) and os.isatty(fd) is False  # the ioctls/fcntls Python needs still work""",
    "no_host_listing_or_reading": """
import os
for attempt in (lambda: os.listdir("/"), lambda: open("/etc/hostname").read(),
                lambda: os.listdir("/proc")):
    try:
        attempt()
        raise AssertionError("allowed")
    except OSError:
        pass""",
    "threads_still_work": """
import threading
out = []
t = threading.Thread(target=out.append, args=(1,))
t.start(); t.join()
assert out == [1]""",
}


@pytest.mark.parametrize("mode", ["bwrap", *FALLBACK_MODES])
def test_kernel_filters_refuse_from_inside(mode):
    _mode_or_skip(mode)
    names = list(CONTAINMENT_PROBES)
    results = run_programs([CONTAINMENT_PROBES[n] for n in names], timeout_s=5, mode=mode, guard=False)
    _report(f"{mode} probes", names, results)
    assert [r.status for r in results] == ["passed"] * len(names)


def test_seccomp_program_is_well_formed_for_each_table():
    for arch in ARCHES:
        program = seccomp_program(arch)
        assert program and len(program.code) % 8 == 0 and len(program.code) // 8 < 4096
        lo, hi = program.exec_slots  # the two `jeq` whose constants the launcher fills in
        for slot in (lo, hi):
            op, _, _, k = struct.unpack_from("=HBBI", program.code, 8 * slot)
            assert (op, k) == (0x15, 0)
    assert seccomp_program("sparc") is None


NO_RAW_MEMORY_PROBE = """
import sys, types
denied = ("ctypes", "_ctypes", "cffi", "_cffi_backend", "_testcapi", "_testinternalcapi",
          "_testbuffer", "_xxsubinterpreters", "_lsprof")
def every_subclass():
    seen, todo = set(), [object]
    while todo:
        for sub in type.__subclasses__(todo.pop()):
            if id(sub) not in seen:
                seen.add(id(sub))
                todo.append(sub)
                yield sub
def denied_name(name):
    return any(part in denied or part.startswith("_test") for part in (name or "").split("."))
types_found = sorted({t.__module__ + "." + t.__name__ for t in every_subclass() if denied_name(t.__module__)})
assert not types_found, types_found
modules_found = sorted(name for name in sys.modules if denied_name(name))
assert not modules_found, modules_found
bound = sorted(f"{module.__name__}.{attribute}" for module in list(sys.modules.values())
               for attribute, value in list(vars(module).items())
               if isinstance(value, types.ModuleType) and denied_name(value.__name__))
assert not bound, bound
for name in ("ctypes", "_ctypes", "ctypes._endian", "ctypes.util", "_testcapi", "multiprocessing.sharedctypes"):
    try:
        __import__(name)
        raise AssertionError(f"imported {name}")
    except ImportError:
        pass
# A program that names modules which import ctypes: they are not pre-imported either.
if False:
    import multiprocessing.sharedctypes, ctypes.util, ctypes._endian, uuid, platform
"""


@pytest.mark.parametrize("mode", ["bwrap", *FALLBACK_MODES])
def test_no_raw_memory_primitive_inside_the_program(mode):
    """From inside a program: no ctypes/cffi/test-module type among object's subclasses, no such
    module in sys.modules or bound as any module's attribute, and none importable."""
    _mode_or_skip(mode)
    result = run_programs([NO_RAW_MEMORY_PROBE], timeout_s=10, mode=mode)[0]
    assert result.status == "passed", result.detail


GUARD_PROBES = {
    "no_native_module_from_the_working_dir": """
import importlib.util, json, shutil, sys
origin = sys.modules["_json"].__spec__.origin if "_json" in sys.modules else None
shutil.copyfile(origin, "copy.so")  # an allowed module's bytes, as a crafted one would be
spec = importlib.util.spec_from_file_location("_json", "copy.so")
try:
    importlib.util.module_from_spec(spec)
    raise AssertionError("loaded a native module the program wrote")
except ImportError:
    pass""",
    "no_environment_changes": """
import os
try:
    os.environ["OPENSSL_CONF"] = "evil.cnf"
    raise AssertionError("changed the environment")
except PermissionError:
    pass""",
}


@pytest.mark.parametrize("mode", ["bwrap", *FALLBACK_MODES])
def test_guard_refuses_native_code_and_environment_changes(mode):
    _mode_or_skip(mode)
    names = list(GUARD_PROBES)
    results = run_programs([GUARD_PROBES[n] for n in names], timeout_s=10, mode=mode)
    _report(f"{mode} guard probes", names, results)
    assert [r.status for r in results] == ["passed"] * len(names)


@pytest.mark.skipif(os.geteuid() != 0, reason="the privilege drop applies to a root scorer")
def test_root_scorer_runs_programs_without_capabilities():
    """In the fallback modes (no user namespace) a root scorer's program holds no capability in
    any set: read from /proc with the guard and the kernel filters off, so the kernel tells."""
    probe = """
fields = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
caps = {k: int(fields[k], 16) for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")}
assert not any(caps.values()), caps
assert fields["NoNewPrivs"].strip() == "1"
"""
    result = run_programs([probe], timeout_s=10, mode="rlimits", guard=False, kernel_filters=False)[0]
    assert result.status == "passed", result.detail


def test_works_when_python_lives_under_tmp(tmp_path):
    """bwrap's private /tmp must not hide a venv (or a checkout) that lives under /tmp."""
    _bwrap_or_skip()
    if not str(tmp_path).startswith("/tmp/"):
        pytest.skip(f"tmp_path {tmp_path} is not under /tmp")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    repo = Path(__file__).resolve().parents[1]
    script = (
        "import sys; sys.path[:0] = [sys.argv[1], *sys.argv[2:]]\n"
        "from trainable.sandbox.runner import Program, run_programs, sandbox_mode\n"
        "r = run_programs([Program('def f(x):\\n    return 2 * x\\n', "
        "'def check(f):\\n    assert f(2) == 4\\n', 'f')], timeout_s=10)\n"
        "print(sandbox_mode(), r[0].status, sys.prefix)"
    )
    site = [p for p in sys.path if p.endswith("site-packages")]
    env = {k: v for k, v in os.environ.items() if k != sandbox.MODE_ENV}
    proc = subprocess.run(
        [str(venv / "bin" / "python"), "-c", script, str(repo), *site],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["bwrap", "passed", str(venv)], proc.stdout


def test_known_limits_pass_as_documented():
    """Not defended, on purpose (see trainable.sandbox.runner): `check` really returns normally."""
    problems = load_problems()
    programs = [build_program(problems[task_id], completion) for task_id, completion in KNOWN_LIMITS.values()]
    results = run_programs(programs, timeout_s=5)
    assert all(r.passed for r in results), results


@pytest.mark.skipif(os.geteuid() != 0, reason="setting the immutable flag needs root")
def test_a_working_dir_that_cannot_be_removed_is_named_in_one_line(tmp_path, caplog):
    workdir = tmp_path / "sandbox-stuck"
    workdir.mkdir()
    stuck = workdir / "stuck"
    stuck.write_text("")
    flags = _fs_flags(stuck)
    if flags is None:
        pytest.skip("this file system has no inode flags")
    _set_fs_flags(stuck, flags | 0x10)  # FS_IMMUTABLE_FL
    try:
        with caplog.at_level("WARNING", logger="trainable.sandbox.runner"):
            sandbox._remove_workdir(str(workdir))
    finally:
        _set_fs_flags(stuck, flags)
    lines = [r.getMessage() for r in caplog.records if "could not remove" in r.getMessage()]
    assert len(lines) == 1 and str(workdir) in lines[0] and "\n" not in lines[0], lines
