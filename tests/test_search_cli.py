"""`python -m search.run`: --dry-run prints the plan (and what this machine would lack to run it);
bad input exits 2 with one line naming the field, before Ray starts."""

import subprocess
import sys

import pytest

from search_helpers import search_env


def _run(tmp_path, *args, env=None):
    """The real command in a fresh interpreter: for what its start may print (a warning on import
    would break the one-line contract). The other tests use `run`: the same command, forked from
    an interpreter that has imported it (tests/cli_zygote.py), seconds cheaper each."""
    return subprocess.run(
        [sys.executable, "-m", "search.run", *args],
        cwd=tmp_path,
        env=env or search_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.fixture()
def run(search_cli, tmp_path):
    """`python -m search.run ARGS` in tmp_path, as `subprocess.run` gives it (conftest's search_cli)."""
    return lambda *args, env=None: search_cli(*args, cwd=tmp_path, env=env)


def test_dry_run_smoke_prints_the_plan(tmp_path):
    proc = _run(tmp_path, "--space", "smoke", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("search    smoke-") and lines[0].endswith("space smoke, model bundled")
    for part in (
        "num_virtual_tokens: 4 | 8",
        "learning_rate (prompt_tuning): log 0.001..0.3",
        "3 trials, 1 at a time, up to 2 epochs each",
        "train 12 mbpp, val 8 humaneval, test 8 humaneval",
        f"results   {tmp_path}/runs/smoke-",
        f"mlflow    sqlite:///{tmp_path}/runs/mlflow.db",
    ):
        assert part in proc.stdout, part
    # A summary, not the resolved space: the p_tuning rate smoke never samples is not shown.
    assert len(lines) < 20 and "p_tuning" not in proc.stdout and "{" not in proc.stdout
    assert "no trial started" in lines[-1] and "would not run here" not in proc.stdout
    assert not (tmp_path / "runs").exists(), "a dry run writes nothing"


def _needs_what_this_machine_lacks(proc) -> list[str]:
    return [line for line in proc.stdout.splitlines() if line.startswith("would not run here: ")]


def test_dry_run_of_the_gpu_space_succeeds_on_any_machine(tmp_path):
    """default is the GPU search on the hub model: a CPU machine (or one without the hub) says
    what it lacks and still validates the space (before, it failed on every CPU machine)."""
    proc = _run(tmp_path, "--space", "default", "--dry-run")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "model Qwen/Qwen2.5-Coder-0.5B" in proc.stdout and "48 trials" in proc.stdout
    lacks = _needs_what_this_machine_lacks(proc)
    if not lacks:
        pytest.skip("this machine has a GPU and reaches the hub")
    assert all(
        line.startswith(
            ("would not run here: resources.gpu: got 1,", "would not run here: model: got 'Qwen/Qwen2.5-Coder-0.5B'")
        )
        for line in lacks
    )
    assert proc.stdout.splitlines()[-1] == (
        "dry run: configuration valid; no trial started (this machine could not run it: see above)"
    )
    assert not proc.stderr.strip() and not (tmp_path / "runs").exists()


def test_a_real_run_of_the_gpu_space_still_fails_fast(tmp_path, run):
    dry = run("--space", "default", "--dry-run")
    if not _needs_what_this_machine_lacks(dry):
        pytest.skip("this machine has a GPU and reaches the hub: a real run would start")
    proc = run("--space", "default")
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(("error: resources.gpu: got 1,", "error: model: got 'Qwen/Qwen2.5-Coder-0.5B'"))
    assert "Traceback" not in proc.stderr and not (tmp_path / "runs").exists()


def test_a_dry_run_still_refuses_a_bad_space_meant_for_a_cluster(tmp_path, run):
    space = tmp_path / "bad.yaml"
    space.write_text("base: default\ndata: {train: {source: apps, n: 4}}\n")
    proc = run("--space", str(space), "--dry-run")
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert "data.train.source: got 'apps'" in line


def test_unreachable_hub_model_says_how_to_run_offline(tmp_path, run):
    proc = run("--space", "smoke", "--model", "Qwen/Qwen2.5-Coder-0.5B")  # HF_HUB_OFFLINE=1
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: model: got 'Qwen/Qwen2.5-Coder-0.5B'") and "--model bundled" in line
    assert not (tmp_path / "runs").exists()
    dry = run("--space", "smoke", "--model", "Qwen/Qwen2.5-Coder-0.5B", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert _needs_what_this_machine_lacks(dry) == [f"would not run here: {line.removeprefix('error: ')}"]


def test_dry_run_default_on_cpu_with_a_local_model(tmp_path, tiny_model_dir, run):
    space = tmp_path / "default-cpu.yaml"
    space.write_text("base: default\nresources: {cpu: 1, gpu: 0}\n")
    proc = run(
        "--space",
        str(space),
        "--model",
        str(tiny_model_dir),
        "--dry-run",
        "--num-samples",
        "5",
        "--max-concurrent",
        "2",
    )
    assert proc.returncode == 0, proc.stderr
    assert "5 trials, 2 at a time" in proc.stdout and "would not run here" not in proc.stdout


BAD_INPUTS = [
    (["--space", "nonesuch"], "space: got 'nonesuch'"),
    (["--space", "smoke", "--model", "./no/such/dir"], "model: got './no/such/dir'"),
    (["--space", "smoke", "--num-samples", "0"], "budget.num_samples: got 0"),
    (["--space", "smoke", "--max-concurrent", "0"], "budget.max_concurrent: got 0"),
    (["--space", "smoke", "--mlflow-uri", "ftp://x"], "--mlflow-uri: got 'ftp://x'"),
    (["--space", "smoke", "--mlflow-uri", "http://127.0.0.1:9"], "--mlflow-uri: got 'http://127.0.0.1:9'"),
    (["--space", "smoke", "--storage", "ftp://bucket/x"], "--storage: got 'ftp://bucket/x'"),
    (["--space", "smoke", "--name", "a/b"], "--name: got 'a/b'"),
    # Names SMB/Windows-backed storage cannot hold: a trailing dot is dropped, device names reserved.
    (["--space", "smoke", "--name", "abc."], "--name: got 'abc.', expected letters, digits"),
    (["--space", "smoke", "--name", "con"], "--name: got 'con', expected a name that is not a Windows device"),
    (["--space", "smoke", "--name", "LPT1.old"], "--name: got 'LPT1.old', expected a name that is not a Windows"),
    # Stores that keep nothing, or that MLflow 3 refuses or cannot load a driver for: before, the
    # first passed (and a real run kept nothing), the others ended in a 45-63 line traceback.
    (
        ["--space", "smoke", "--mlflow-uri", "sqlite:///:memory:"],
        "--mlflow-uri: got 'sqlite:///:memory:', expected a sqlite *file*",
    ),
    (["--space", "smoke", "--mlflow-uri", "file:///tmp/mlruns"], "--mlflow-uri: got 'file:///tmp/mlruns', expected"),
    (
        ["--space", "smoke", "--mlflow-uri", "postgresql://u:secret@127.0.0.1:9/db"],
        "--mlflow-uri: got 'postgresql://u:***@127.0.0.1:9/db', expected a database whose driver is installed "
        "(pip install 'psycopg[binary]')",
    ),
    (
        ["--space", "smoke", "--storage", "s3://bucket-that-does-not-exist"],
        "--storage: got 's3://bucket-that-does-not-exist', expected a storage URI this machine can reach",
    ),
    (["--space", "smoke", "--resume"], "--name: got None"),
    (["--space", "smoke", "--resume", "--name", "never-ran"], "--name: got 'never-ran'"),
    (["--space", "smoke", "--num-samples", "many"], "argument --num-samples: invalid int value"),
    (["--space", "smoke", "--bogus"], "unrecognized arguments: --bogus"),
    # A sqlite store in a directory that does not exist: before, each MLflow client retried ~100 s.
    (
        ["--space", "smoke", "--mlflow-uri", "sqlite:////no/such/dir/mlflow.db"],
        "--mlflow-uri: got 'sqlite:////no/such/dir/mlflow.db', expected a sqlite file in an existing directory",
    ),
    (
        ["--space", "smoke", "--mlflow-uri", "sqlite:////tmp"],
        "--mlflow-uri: got 'sqlite:////tmp', expected sqlite:///FILE",
    ),
]


@pytest.mark.parametrize(
    "args, message", BAD_INPUTS, ids=[m.split(":")[0] + str(i) for i, (_, m) in enumerate(BAD_INPUTS)]
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message, run):
    proc = run(*args, "--dry-run")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_more_gpu_than_the_machine_has_is_refused_before_ray(tmp_path, run):
    space = tmp_path / "gpu.yaml"
    space.write_text("base: smoke\nresources: {cpu: 1, gpu: 1}\n")
    dry = run("--space", str(space), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    if not _needs_what_this_machine_lacks(dry):
        pytest.skip("this machine has a GPU")
    assert _needs_what_this_machine_lacks(dry) == [
        "would not run here: resources.gpu: got 1, expected at most 0 (GPUs on this machine; "
        "or use --address to run on a Ray cluster)"
    ]
    proc = run("--space", str(space))
    assert proc.returncode == 2 and "resources.gpu: got 1, expected at most 0" in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_storage_that_is_a_file_is_refused(tmp_path, run):
    (tmp_path / "afile").write_text("x")
    proc = run("--space", "smoke", "--storage", "afile", "--dry-run")
    assert proc.returncode == 2 and "--storage: got 'afile'" in proc.stderr


BAD_DATA = [
    ("data: {train: {source: apps, n: 4}}", "data.train.source: got 'apps', expected one of humaneval, mbpp"),
    ("data: {train: {n: 400}}", "data.train.n: got 400, expected at most 397 (mbpp has 397 problems)"),
    ("data: {val: {n: 100}, test: {n: 100}}", "data.test.n: got 100, expected at most 64"),
    (
        "data: {val: {ids: [HumanEval/1, HumanEval/7]}, test: {ids: [HumanEval/7]}}",
        "data.test.ids: got 'HumanEval/7', expected a task id in no other split",
    ),
    ("data: {val: {ids: [HumanEval/1, HumanEval/999]}}", "data.val.ids[1]: got 'HumanEval/999'"),
    ("fixed: {dtype: fp16}", "fixed.dtype: got 'fp16', expected one of auto, float32, bfloat16"),
]


@pytest.mark.parametrize(
    "delta, message", BAD_DATA, ids=[m.split(":")[0] + str(i) for i, (_, m) in enumerate(BAD_DATA)]
)
def test_bad_data_in_a_space_is_one_line_and_exit_2(tmp_path, delta, message, run):
    space = tmp_path / "bad.yaml"
    space.write_text(f"base: smoke\n{delta}\n")
    proc = run("--space", str(space), "--dry-run")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert message in line and "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_a_missing_mbpp_file_names_the_set_up_step(tmp_path, run):
    env = {**search_env(), "SOFTPROMPT_SEARCH_CACHE": str(tmp_path / "empty-cache")}
    proc = run("--space", "smoke", "--dry-run", env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: mbpp: got ") and "run: python -m trainable.data.mbpp" in line


def test_zero_test_problems_is_refused_by_the_dry_run(tmp_path, run):
    """Before, the whole search ran, then the report crashed with the parent left RUNNING."""
    space = tmp_path / "notest.yaml"
    space.write_text("base: smoke\ndata: {test: 0}\n")
    proc = run("--space", str(space), "--dry-run")
    assert proc.returncode == 2 and proc.stderr.strip() == (
        "error: data.test: got 0, expected at least 1 problem (the final report scores on them)"
    )


def test_a_long_init_text_is_abbreviated_in_the_printed_configuration(tmp_path, run):
    space = tmp_path / "long.yaml"
    space.write_text("base: smoke\nsearch: {init: {choice: [random, '" + "y" * 10_000 + "']}}\n")
    proc = run("--space", str(space), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "y" * 1000 not in proc.stdout and "(10000 chars)" in proc.stdout
    assert max(len(line) for line in proc.stdout.splitlines()) < 200


def _in_a_small_mount(tmp_path, options: str, *args: str):
    """`python -m search.run ARGS` with tmp_path/mnt a fresh tmpfs (`options`), in a mount
    namespace of its own: nothing outside the command sees the mount."""
    (tmp_path / "mnt").mkdir()
    script = f'mount -t tmpfs -o {options} tmpfs "$0" && exec "$@"'
    cmd = ["unshare", "-m", "sh", "-c", script, str(tmp_path / "mnt"), sys.executable, "-m", "search.run", *args]
    probe = subprocess.run(["unshare", "-m", "sh", "-c", script, str(tmp_path / "mnt"), "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"no private tmpfs mounts here ({probe.stderr.decode().strip()[:80]})")
    return subprocess.run(cmd, cwd=tmp_path, env=search_env(), capture_output=True, text=True, timeout=180)


def test_storage_without_free_space_is_refused_before_ray(tmp_path):
    """Before, a full disk ended the search in 130-330 lines of tracebacks."""
    proc = _in_a_small_mount(tmp_path, "size=64m", "--space", "smoke", "--storage", "mnt/runs", "--dry-run")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: --storage: got 'mnt/runs', expected a directory with at least 1.0 GiB free")


def test_a_sqlite_store_on_a_read_only_mount_is_refused(tmp_path):
    proc = _in_a_small_mount(
        tmp_path, "ro,size=2g", "--space", "smoke", "--mlflow-uri", f"sqlite:///{tmp_path}/mnt/mlflow.db", "--dry-run"
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert "expected a writable directory" in line and "Read-only file system" in line


def test_a_local_search_without_a_usable_sandbox_stops_before_ray(tmp_path, tiny_model_dir, run):
    env = {k: v for k, v in search_env().items() if k != "SOFTPROMPT_SANDBOX"}
    env["PATH"] = str(tmp_path)  # no bwrap on it
    proc = run("--space", "smoke", "--model", str(tiny_model_dir), env=env)
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert "bubblewrap cannot run here" in line and "SOFTPROMPT_SANDBOX=rlimits" in line
    assert not (tmp_path / "runs").exists()


def test_a_dry_run_without_a_usable_sandbox_says_so_and_succeeds(tmp_path, tiny_model_dir, run):
    env = {k: v for k, v in search_env().items() if k != "SOFTPROMPT_SANDBOX"}
    env["PATH"] = str(tmp_path)  # no bwrap on it
    proc = run("--space", "smoke", "--model", str(tiny_model_dir), "--dry-run", env=env)
    assert proc.returncode == 0, proc.stderr
    (line,) = _needs_what_this_machine_lacks(proc)
    assert "bubblewrap cannot run here" in line and not (tmp_path / "runs").exists()


def test_a_bad_sandbox_mode_is_bad_input_even_in_a_dry_run(tiny_model_dir, run):
    env = {**search_env(), "SOFTPROMPT_SANDBOX": "nonesuch"}
    proc = run("--space", "smoke", "--model", str(tiny_model_dir), "--dry-run", env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert "got 'nonesuch'" in line
