"""Helpers shared by tests of every tier: the project's pinned versions (pyproject.toml is their
one source), free loopback ports, and a real `python -m mlflow_server` stopped by its own PID."""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = REPO / "pyproject.toml"


def pinned_versions() -> dict[str, str]:
    """Distribution name -> version, for every exact (`==`) pin of pyproject.toml's
    dependencies and optional dependencies."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    requirements = [
        *project["dependencies"],
        *(r for group in project.get("optional-dependencies", {}).values() for r in group),
    ]
    pins = {}
    for requirement in requirements:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[^\]]*\])?==([^;,\s]+)", requirement.strip())
        if m:
            pins[m.group(1).lower()] = m.group(3)
    return pins


def pinned(name: str) -> str:
    return pinned_versions()[name.lower()]


def free_port() -> int:
    """A loopback port that nothing listens on now (the OS picks it; a race with another
    process binding it first is possible and rare)."""
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """n distinct free loopback ports (held open together so that they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie is not running)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (OSError, IndexError):
        return False


# -- a real MLflow server --------------------------------------------------------------------------


def server_env(**extra: str) -> dict[str, str]:
    """This environment without tracking/auth/backend settings of the caller's own, plus the repo
    on PYTHONPATH (`python -m mlflow_server` runs from the test's directory)."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING_", "MLFLOW_AUTH_", "MLFLOW_BACKEND"))
    }
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


class MlflowServer:
    """`python -m mlflow_server` on a loopback port with a sqlite store and an artifact dir under
    `workdir`. The port is kept across `stop()`/`start()`, so a restart is the same server coming
    back. Stopped by its own PID (the supervisor stops its process group); never by name."""

    START_TIMEOUT = 90

    def __init__(
        self,
        workdir: Path,
        *args: str,
        env: dict | None = None,
        port: int | None = None,
        backend_db: Path | None = None,
        artifacts: Path | None = None,
    ):
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.args, self.port = args, port or free_port()
        self.db = backend_db or workdir / "mlflow.db"
        self.artifacts = artifacts or workdir / "artifacts"
        self.env = dict(env, PYTHONPATH=str(REPO)) if env is not None else server_env()
        self.proc: subprocess.Popen | None = None
        self.starts, self.start_s, self.log, self.ready_url = 0, None, None, None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "mlflow_server",
            "--port",
            str(self.port),
            "--backend-store-uri",
            f"sqlite:///{self.db}",
            "--artifacts-destination",
            str(self.artifacts),
            *self.args,
        ]

    def start(self) -> float:
        """Start and wait for the ready line (kept in `ready_url`); returns the seconds it took."""
        self.starts += 1
        self.log = self.workdir / f"mlflow-server-{self.port}-{self.starts}.log"
        t0 = time.monotonic()
        with open(self.log, "w") as err:
            self.proc = proc = subprocess.Popen(
                self.command(),
                cwd=self.workdir,
                env=self.env,
                text=True,
                stdout=subprocess.PIPE,
                stderr=err,
                stdin=subprocess.DEVNULL,
            )
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: lines.put(proc.stdout.readline()), daemon=True).start()
        try:
            line = lines.get(timeout=self.START_TIMEOUT)
        except queue.Empty:
            self.stop()
            raise AssertionError(
                f"mlflow_server: no ready line in {self.START_TIMEOUT} s:\n{self.log.read_text()[-3000:]}"
            )
        if "ready at" not in line:
            proc.wait(30)
            raise AssertionError(f"mlflow_server failed (exit {proc.returncode}):\n{self.log.read_text()[-3000:]}")
        self.ready_url = line.split("ready at", 1)[1].strip()
        self.start_s = time.monotonic() - t0
        return self.start_s

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        """Signal our process and wait for it (SIGKILL after 30 s); its exit code."""
        if not self.running():
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(30)

    def port_closed(self) -> bool:
        with socket.socket() as s:
            s.settimeout(1)
            return s.connect_ex(("127.0.0.1", self.port)) != 0
