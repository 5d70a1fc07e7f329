"""Run `mlflow server` as a child process group, wait for /health, stop it cleanly.

Why a child group and not mlflow's functions in-process: `mlflow server` itself spawns uvicorn
(and, unless disabled, a job runner with its own consumers); on SIGTERM it forwards the signal
to uvicorn only, so helpers can outlive it. Putting the whole tree in its own session lets us
signal every process in it by process-group id, and nothing outside it.
"""

from __future__ import annotations

import collections
import ctypes
import errno
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

from mlflow_server.config import ServerConfig

STOP_GRACE_S = 10.0
# Output lines that explain a failed start, best first; the last line of the best tier wins.
_REASONS = (
    re.compile(r"^[A-Za-z_][\w.]*(Error|Exception)\b: "),  # a traceback's last line
    re.compile(r"\b(ERROR|CRITICAL)\b"),  # a logged error
    re.compile(r"(error|exception|refus|denied|not found|no such)", re.I),
)


class StartError(RuntimeError):
    """The server could not be started (exit 1)."""


def build_command(cfg: ServerConfig) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        cfg.host,
        "--port",
        str(cfg.port),
        "--workers",
        str(cfg.workers),
        "--serve-artifacts",
        "--artifacts-destination",
        cfg.artifacts_destination,
    ]
    if cfg.auth:
        cmd += ["--app-name", "basic-auth"]
    if cfg.allowed_hosts:
        cmd += ["--allowed-hosts", cfg.allowed_hosts]
    if cfg.cors_allowed_origins:
        cmd += ["--cors-allowed-origins", cfg.cors_allowed_origins]
    return cmd


def build_env(cfg: ServerConfig, extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    # Passed by environment, not argv: a Postgres URI may hold a password, and argv is
    # world-readable (/proc/PID/cmdline); mlflow reads --backend-store-uri from this variable.
    env["MLFLOW_BACKEND_STORE_URI"] = cfg.backend_store_uri
    # Lean defaults: no GenAI job runner (7 extra processes, ~1 GB) and no usage telemetry.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    env.update(extra)
    return env


def check_port_free(cfg: ServerConfig) -> None:
    """Fail early with a clear reason instead of a uvicorn traceback."""
    try:
        infos = socket.getaddrinfo(cfg.host, cfg.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise StartError(f"host {cfg.host!r} does not resolve: {e.strerror}") from None
    family, stype, proto, _, addr = infos[0]
    with socket.socket(family, stype, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            s.bind(addr)
        except OSError as e:
            what = "is already in use" if e.errno == errno.EADDRINUSE else f"cannot be bound ({e.strerror})"
            raise StartError(f"{cfg.host}:{cfg.port} {what}") from None


def _die_with_parent() -> None:  # runs in the child between fork and exec
    # If this supervisor is SIGKILLed (no handler runs), the kernel sends SIGTERM to the child,
    # which forwards it to uvicorn: no orphaned server keeps the port and the database open.
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def health_ok(url: str, timeout: float = 2.0) -> bool:
    # No proxies: HTTP(S)_PROXY in the environment must not capture a loopback health check.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url + "/health", timeout=timeout) as r:
            return r.status == 200 and r.read(16).strip() == b"OK"
    except (urllib.error.URLError, OSError, ValueError):
        return False


class Server:
    """One supervised server process group."""

    def __init__(self, cfg: ServerConfig, extra_env: dict[str, str]):
        self.cfg = cfg
        self.proc = subprocess.Popen(
            build_command(cfg),
            env=build_env(cfg, extra_env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        self.tail: collections.deque[str] = collections.deque(maxlen=80)
        self._pump = threading.Thread(target=self._forward_output, daemon=True)
        self._pump.start()

    def _forward_output(self) -> None:
        # Server logs go to our stderr so that stdout carries only the "ready" line.
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip()
            self.tail.append(line)
            print(line, file=sys.stderr, flush=True)

    def reason(self) -> str:
        self._pump.join(timeout=2)
        lines = [
            ln.strip() for ln in self.tail if ln.strip() and not ln.lstrip().startswith("(Background on this error")
        ]
        for pattern in _REASONS:
            hits = [ln for ln in lines if pattern.search(ln)]
            if hits:
                return hits[-1][:400]
        return (lines or ["no output"])[-1][:400]

    def wait_healthy(self, stop: threading.Event) -> bool:
        """True when /health answers OK; False if asked to stop first. Raises StartError."""
        deadline = time.monotonic() + self.cfg.start_timeout
        while not stop.is_set():
            if self.proc.poll() is not None:
                raise StartError(f"mlflow server exited with code {self.proc.returncode}: {self.reason()}")
            if health_ok(self.cfg.url, timeout=1.0):
                return True
            if time.monotonic() > deadline:
                raise StartError(f"no healthy answer from {self.cfg.url}/health within {self.cfg.start_timeout:g} s")
            stop.wait(0.1)
        return False

    def stop(self) -> int | None:
        """SIGTERM to the whole group, SIGKILL after a grace period. Returns the exit code."""
        pgid = self.proc.pid  # the group id is the child's pid (it leads a new session)
        if _signal_group(pgid, signal.SIGTERM):
            deadline = time.monotonic() + STOP_GRACE_S
            # Wait for the group, not only the leader: grandchildren may outlive it.
            while (self.proc.poll() is None or _group_alive(pgid)) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _signal_group(pgid, signal.SIGKILL):
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
        self._pump.join(timeout=2)
        return self.proc.poll()


def _signal_group(pgid: int, sig: int) -> bool:
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
