"""Helpers for integration tests that start real servers: a Ray cluster made of `ray start --block`
nodes on 127.0.0.1, and `python -m mlflow_server`.

Every process a test starts carries a marker in its environment (`SPS_TEST_MARKER=<random>`),
which Ray's raylets, workers and job drivers and MLflow's server processes inherit. That is how a
test finds what it started, and proves that nothing survived its teardown: processes are stopped
by their PID (SIGTERM to the `ray start --block` / `mlflow_server` process we own, which tears down
its own tree), never by name. `ray stop` is never used: it kills every Ray process on the machine,
including other users' clusters.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers import REPO, MlflowServer, alive, free_ports

BIN = Path(sys.executable).parent  # the venv's bin: ray, python
RAY = str(BIN / "ray")
MARKER_VAR = "SPS_TEST_MARKER"


def new_marker() -> str:
    return secrets.token_hex(8)


def base_env(marker: str, **extra: str) -> dict[str, str]:
    """The environment of everything a test starts: no inherited cluster/tracking settings."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RAY_", "MLFLOW_TRACKING_", "MLFLOW_AUTH_", "MLFLOW_BACKEND"))
    }
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        RAY_USAGE_STATS_ENABLED="0",
        PYTHONUNBUFFERED="1",
        **{MARKER_VAR: marker},
    )
    env.pop("PYTHONPATH", None)
    env.update(extra)
    return env


# -- processes ---------------------------------------------------------------------------------
def marked_processes(marker: str) -> dict[int, str]:
    """Live processes whose environment carries our marker: pid -> command line."""
    needle = f"{MARKER_VAR}={marker}".encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0") and alive(int(entry.name)):
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                found[int(entry.name)] = cmd.strip()[:200]
        except OSError:
            continue
    return found


def reap_marked(marker: str, grace_s: float = 20.0) -> dict[int, str]:
    """Wait for the marked processes to go; SIGKILL (by PID) any still there after grace_s and
    return those survivors (pid -> command line) so that the caller can fail."""
    deadline = time.monotonic() + grace_s
    left = marked_processes(marker)
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = marked_processes(marker)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return left


def _wait_for_text(proc: subprocess.Popen, log: Path, needle: str, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        if needle in text:
            return
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before it was ready:\n{text[-4000:]}")
        time.sleep(0.5)
    raise RuntimeError(f"{what} not ready in {timeout:.0f} s:\n{log.read_text(errors='replace')[-4000:]}")


def stop_process(proc: subprocess.Popen, sig=signal.SIGTERM, timeout: float = 60) -> int | None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    return proc.returncode


# -- Ray -----------------------------------------------------------------------------------------
class RayNode:
    """One `ray start --block` process: stopping it (SIGTERM) stops its raylet, workers, and on the
    head the GCS and dashboard."""

    def __init__(self, name: str, args: list[str], env: dict, temp_dir: Path, log: Path):
        self.name, self.temp_dir, self.log = name, temp_dir, log
        temp_dir.mkdir(parents=True, exist_ok=True)
        ports = free_ports(6)
        # No --node-ip-address: Ray replaces 127.0.0.1 by this machine's routable IP anyway
        # (services.resolve_ip_for_localhost), so both nodes share that IP; nodes are told apart
        # by node id. The head's dashboard (job server) is bound to 127.0.0.1 by the caller.
        cmd = [
            RAY,
            "start",
            "--block",
            f"--temp-dir={temp_dir}",
            "--num-cpus=1",
            "--num-gpus=0",
            "--object-store-memory=200000000",
            "--disable-usage-stats",
            "--log-style=record",
            "--log-color=false",
            f"--node-manager-port={ports[0]}",
            f"--object-manager-port={ports[1]}",
            f"--dashboard-agent-listen-port={ports[2]}",
            f"--dashboard-agent-grpc-port={ports[3]}",
            f"--runtime-env-agent-port={ports[4]}",
            f"--metrics-export-port={ports[5]}",
            *args,
        ]
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=temp_dir
        )

    def wait_started(self, timeout: float = 120) -> None:
        _wait_for_text(self.proc, self.log, "Ray runtime started", timeout, f"ray start ({self.name})")

    def stop(self) -> int | None:
        return stop_process(self.proc, signal.SIGTERM, timeout=60)


def ray_cli(env: dict, *args: str, timeout: float = 120, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [RAY, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd or REPO,
        stdin=subprocess.DEVNULL,
    )


def alive_nodes(env: dict, gcs_address: str) -> list[dict]:
    proc = ray_cli(env, "list", "nodes", "--address", gcs_address, "--format", "json", timeout=60)
    if proc.returncode != 0:
        return []
    try:
        nodes = json.loads(proc.stdout)
    except json.JSONDecodeError:
        return []
    return [n for n in nodes if n.get("state") == "ALIVE"]


# -- MLflow server -------------------------------------------------------------------------------
def start_mlflow_server(
    workdir: Path, backend_db: Path, artifacts: Path, env: dict, *args: str, timeout: float = 90
) -> MlflowServer:
    """`python -m mlflow_server` (tests/helpers.py) in `env`, which carries the test's marker;
    returns once it printed its ready line."""
    server = MlflowServer(workdir, *args, env=env, backend_db=backend_db, artifacts=artifacts)
    server.START_TIMEOUT = timeout
    server.start()
    return server
