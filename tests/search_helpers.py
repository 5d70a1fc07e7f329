"""Helpers for tests that run whole searches as a user would: `python -m search.run` in a
subprocess, working dir and storage under tmp_path, the tiny model, a real local Ray and a real
sqlite MLflow."""

from __future__ import annotations

import json
import os
import select
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from helpers import REPO

# fp32: these searches are compared across kills, resumes and runs; `auto` is measured in test_search_dtype.
TINY_SPACE = """\
base: smoke
search:
  method: null
  num_virtual_tokens: {{choice: [2, 4, 8]}}
  init: {{choice: [random, sample_vocab, "Write correct code."]}}
  learning_rate: {{loguniform: [1.0e-3, 3.0e-1]}}
fixed: {{batch_size: 2, max_length: 128, max_new_tokens: 8, eval_batch_size: 4, sandbox_timeout_s: 5, dtype: float32}}
data: {{train: 4, val: 4, test: 4}}
budget: {{num_samples: {samples}, max_epochs: {epochs}, grace_period: 1, reduction_factor: 2, max_concurrent: 2}}
resources: {{cpu: 1, gpu: 0}}
"""


def write_space(tmp_path: Path, samples: int = 6, epochs: int = 3) -> Path:
    path = tmp_path / "tiny_space.yaml"
    path.write_text(TINY_SPACE.format(samples=samples, epochs=epochs))
    return path


def search_env() -> dict:
    env = dict(
        os.environ,
        # The repo first; what was already there stays (a GPU machine's bundle: bench/gpu_install.sh).
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        RAY_USAGE_STATS_ENABLED="0",
        PYTHONUNBUFFERED="1",
    )
    env.pop("RAY_ADDRESS", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def search_command(space: Path, model: Path, name: str, *extra: str, storage: str = "runs") -> list[str]:
    return [
        sys.executable,
        "-m",
        "search.run",
        "--space",
        str(space),
        "--model",
        str(model),
        "--name",
        name,
        "--storage",
        storage,
        *extra,
    ]


def run_search(tmp_path: Path, space: Path, model: Path, name: str, *extra: str, timeout: int = 600):
    return subprocess.run(
        search_command(space, model, name, *extra),
        cwd=tmp_path,
        env=search_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def mlflow_runs(db: Path) -> list[dict]:
    """Runs straight from MLflow's sqlite store: id, status, parent id, and tags."""
    with sqlite3.connect(db) as conn:
        runs = conn.execute("select run_uuid, status from runs where lifecycle_stage = 'active'").fetchall()
        tags = conn.execute("select run_uuid, key, value from tags").fetchall()
    out = []
    for run_id, status in runs:
        run_tags = {k: v for r, k, v in tags if r == run_id}
        out.append({"id": run_id, "status": status, "parent": run_tags.get("mlflow.parentRunId"), "tags": run_tags})
    return out


def metric_history(db: Path, run_id: str, key: str) -> list[tuple[int, float]]:
    with sqlite3.connect(db) as conn:
        return sorted(
            conn.execute("select step, value from metrics where run_uuid = ? and key = ?", (run_id, key)).fetchall()
        )


class CliZygote:
    """`python -m MODULE ARGS` as `subprocess.run` would give it, from a zygote that imported
    MODULE once (tests/cli_zygote.py says what is and is not the same as a fresh interpreter).
    One command at a time; each command's output goes through files under `workdir`. `close()`
    ends the zygote, by its own PID if it does not leave."""

    def __init__(self, workdir: Path, env: dict | None = None, preload: tuple[str, ...] = ()):
        """`preload`: modules the zygote imports before its first command (those a command
        imports only once it runs, say), in addition to each command's module."""
        self.workdir, self.count, self.pending, self.preload = workdir, 0, b"", list(preload)
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("cli_zygote.py"))],
            cwd=workdir,
            env=env or search_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )

    def _answer(self, deadline: float) -> dict:
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.pending:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise RuntimeError(f"the CLI zygote exited ({self.proc.wait()})")
            self.pending += chunk
        line, self.pending = self.pending.split(b"\n", 1)
        return json.loads(line)

    def run(self, module: str, *args: str, cwd: Path, env: dict, timeout: float) -> subprocess.CompletedProcess:
        """As `subprocess.run([python, "-m", module, *args], capture_output=True, text=True, ...)`."""
        request = {"module": module, "preload": self.preload}
        return self._run(request, ["python", "-m", module, *args], args, cwd, env, timeout)

    def run_code(
        self, code: str, *args: str, cwd: Path, env: dict, timeout: float, preload=(), stderr: str | None = None
    ) -> subprocess.CompletedProcess:
        """As `python -c CODE ARGS`, with the `preload` modules imported by the zygote; `stderr`: a
        path (a terminal, say) that gets the command's stderr instead of the result (then None)."""
        request = {"code": code, "preload": [*self.preload, *preload]}
        return self._run(request, ["python", "-c", code, *args], args, cwd, env, timeout, stderr)

    def _run(self, request, command, args, cwd, env, timeout, stderr=None) -> subprocess.CompletedProcess:
        self.count += 1
        out, err = (self.workdir / f"{self.count}.{name}" for name in ("stdout", "stderr"))
        request = {**request, "args": list(args), "cwd": str(cwd), "env": env, "stdout": str(out)}
        request["stderr"] = stderr or str(err)
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        self.proc.stdin.flush()
        pid = self._answer(time.monotonic() + timeout + 300)["pid"]  # + the module's first import
        try:
            returncode = self._answer(time.monotonic() + timeout)["returncode"]
        except TimeoutError:
            os.kill(pid, signal.SIGKILL)
            self._answer(time.monotonic() + 30)
            raise subprocess.TimeoutExpired(command, timeout) from None
        return subprocess.CompletedProcess(command, returncode, out.read_text(), None if stderr else err.read_text())

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)
