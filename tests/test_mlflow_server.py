"""`python -m mlflow_server`: real servers on 127.0.0.1 (a start takes ~4-5 s on 2 cores, so
these are not marked integration), plus the bad-input contract (exit 2, one line).

Servers are stopped by their own PID (SIGTERM/SIGINT to the process we started); nothing is
ever killed by name.
"""

from __future__ import annotations

import base64
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from helpers import MlflowServer, alive, free_port, server_env
from softprompt_cli.errors import UsageError

USER, PASSWORD = "searcher", "correct-horse-battery"


def _tree(pid: int) -> list[int]:
    """pid and all its descendants (from /proc; psutil is optional)."""
    out, frontier = [pid], [pid]
    while frontier:
        p = frontier.pop()
        try:
            kids = [int(k) for k in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except OSError:
            kids = []
        out += kids
        frontier += kids
    return out


def _rss_mib(pids: list[int]) -> float:
    total = 0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def _stop(server: MlflowServer, sig=signal.SIGTERM) -> int:
    """Stop by our PID; every process of the server's tree must be gone once the supervisor is."""
    pids = _tree(server.proc.pid)
    code = server.stop(sig)
    deadline = time.monotonic() + 5  # the supervisor waited for its group; the kernel reaps it
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in pids if alive(p)], "server processes outlived the supervisor"
    return code


def start(workdir: Path, *args: str, env: dict | None = None) -> MlflowServer:
    server = MlflowServer(workdir, *args, env=env)
    server.start()
    assert server.ready_url == server.url == f"http://127.0.0.1:{server.port}"  # loopback by default
    return server


def _get(url: str, auth: tuple[str, str] | None = None, host: str | None = None):
    req = urllib.request.Request(url)
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    if host:
        req.add_header("Host", host)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


SEARCH = "/api/2.0/mlflow/experiments/search?max_results=1"


@pytest.fixture(scope="module")
def module_server(tmp_path_factory):
    srv = start(tmp_path_factory.mktemp("mlflow"))
    yield srv
    if srv.running():
        _stop(srv)


@pytest.fixture()
def server(module_server):
    """The module's server, started again (same port and store) if a test stopped it: one
    server start serves every test here, the SIGTERM test included, in any order."""
    if not module_server.running():
        module_server.start()
    return module_server


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    env = server_env(MLFLOW_TRACKING_USERNAME=USER, MLFLOW_TRACKING_PASSWORD=PASSWORD)
    srv = start(
        tmp_path_factory.mktemp("mlflow-auth"), "--auth", "--allowed-hosts", "127.0.0.1:*,mlflow.test:*", env=env
    )
    yield srv
    if srv.running():
        assert _stop(srv, signal.SIGINT) == 0


def test_starts_healthy_and_reports_cost(server, capsys):
    assert _get(server.url + "/health") == (200, "OK")
    rss = _rss_mib(_tree(server.proc.pid))
    with capsys.disabled():
        print(
            f"\n[mlflow_server] start to healthy {server.start_s:.2f} s, "
            f"RSS of process tree {rss:.0f} MiB ({len(_tree(server.proc.pid))} processes)"
        )
    assert rss < 1500


def test_client_roundtrip_with_proxied_artifact(server, tmp_path):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=server.url)
    exp = client.create_experiment("roundtrip")
    run = client.create_run(exp)
    client.log_metric(run.info.run_id, "val_pass_at_1", 0.25, step=1)
    src = tmp_path / "completion.txt"
    src.write_text("return a + b\n")
    client.log_artifact(run.info.run_id, str(src))
    client.set_terminated(run.info.run_id)

    got = client.get_run(run.info.run_id)
    assert got.data.metrics["val_pass_at_1"] == 0.25
    # Proxied: clients see only the server's mlflow-artifacts: scheme, never a storage path.
    assert got.info.artifact_uri.startswith("mlflow-artifacts:")
    back = Path(client.download_artifacts(run.info.run_id, "completion.txt", str(tmp_path / "d")))
    assert back.read_text() == "return a + b\n"
    stored = list(server.artifacts.rglob("completion.txt"))
    assert len(stored) == 1, "the artifact must land in --artifacts-destination"


def test_sigterm_stops_whole_tree(server):
    srv = server
    assert len(_tree(srv.proc.pid)) >= 2  # supervisor + mlflow server (+ uvicorn)
    assert _stop(srv, signal.SIGTERM) == 0  # _stop() also asserts no descendant survived


def test_auth_rejects_anonymous_and_wrong_password(auth_server):
    assert _get(auth_server.url + SEARCH)[0] == 401
    assert _get(auth_server.url + SEARCH, auth=(USER, "wrong-password-123"))[0] == 401
    assert _get(auth_server.url + SEARCH, auth=("nobody", PASSWORD))[0] == 401
    assert _get(auth_server.url + SEARCH, auth=(USER, PASSWORD))[0] == 200
    # Probes (Kubernetes liveness/readiness) must not need credentials.
    assert _get(auth_server.url + "/health") == (200, "OK")


def test_auth_client_with_env_credentials(auth_server, monkeypatch):
    import mlflow
    from mlflow.exceptions import MlflowException

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", USER)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "not-the-password")
    client = mlflow.MlflowClient(tracking_uri=auth_server.url)
    with pytest.raises(MlflowException):
        client.create_experiment("denied")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    exp = client.create_experiment("allowed")
    run = client.create_run(exp)
    client.log_metric(run.info.run_id, "val_pass_at_1", 0.5)
    assert client.get_run(run.info.run_id).data.metrics["val_pass_at_1"] == 0.5


def test_allowed_hosts_blocks_foreign_host_header(auth_server):
    port = auth_server.url.rsplit(":", 1)[1]
    creds = (USER, PASSWORD)
    assert _get(auth_server.url + SEARCH, auth=creds, host=f"mlflow.test:{port}")[0] == 200
    # DNS rebinding: a page on evil.example resolving to this server sends its own Host.
    assert _get(auth_server.url + SEARCH, auth=creds, host=f"evil.example:{port}")[0] == 403


def test_failed_start_exits_1_with_reason(tmp_path):
    (tmp_path / "mlflow.db").write_bytes(b"this is not a sqlite database" * 100)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlflow_server",
            "--port",
            str(free_port()),
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'mlflow.db'}",
            "--artifacts-destination",
            str(tmp_path / "a"),
        ],
        cwd=tmp_path,
        env=server_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("mlflow_server: failed to start:") and "database" in last.lower()


def test_port_in_use_exits_1(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = _cli(tmp_path, "--port", str(port))
    assert proc.returncode == 1
    assert "already in use" in proc.stderr


def _cli(cwd: Path, *args: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mlflow_server", *args],
        cwd=cwd,
        env=server_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    "args, env, needle",
    [
        (["--auth"], {}, "MLFLOW_TRACKING_PASSWORD"),
        (["--auth"], {"MLFLOW_TRACKING_PASSWORD": "short"}, "12 characters"),
        # Obvious guesses of 12+ characters: before, each was accepted.
        (["--auth"], {"MLFLOW_TRACKING_PASSWORD": "a" * 12}, "one character repeated"),
        (["--auth"], {"MLFLOW_TRACKING_PASSWORD": "abab" * 4}, "2 characters repeated"),
        (["--auth"], {"MLFLOW_TRACKING_PASSWORD": "Password123456"}, "a known default word"),
        (["--auth"], {"MLFLOW_TRACKING_PASSWORD": "changeme2024"}, "a known default word"),
        (
            ["--auth"],
            {"MLFLOW_TRACKING_USERNAME": "researcher-01", "MLFLOW_TRACKING_PASSWORD": "researcher-01"},
            "the username",
        ),
        (["--host", "0.0.0.0"], {}, "host: got '0.0.0.0'"),
        (["--host", "10.1.2.3"], {}, "--auth"),
        (["--port", "0"], {}, "port: got '0'"),
        (["--port", "65536"], {}, "1..65535"),
        (["--port", "http"], {}, "port: got 'http'"),
        (["--backend-store-uri", "not a uri"], {}, "backend-store-uri"),
        (["--backend-store-uri", "redis://h/0"], {}, "SQLAlchemy URI"),
        (["--backend-store-uri", "postgresql://u:hunter2hunter2@/db"], {}, "host is missing"),
        (["--artifacts-destination", "ftp://x/y"], {}, "artifacts-destination"),
        (["--allowed-hosts", "*"], {}, "--insecure"),
        (["--no-such-flag"], {}, "unrecognized arguments"),
    ],
)
def test_bad_input_exits_2_one_line(tmp_path, args, env, needle):
    proc = _cli(tmp_path, *args, **env)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert needle in proc.stderr
    assert "hunter2" not in proc.stderr  # a password in a URI is never echoed
    assert proc.stdout == ""
    assert not (tmp_path / "runs").exists()  # nothing created on bad input


def test_weak_password_messages_never_show_the_password():
    from mlflow_server.auth import resolve_auth

    for password in ("zzzzzzzzzzzzzzzz", "password1234567"):
        with pytest.raises(UsageError) as caught:
            resolve_auth({"MLFLOW_TRACKING_PASSWORD": password})
        assert password not in str(caught.value) and str(caught.value).startswith("MLFLOW_TRACKING_PASSWORD: got a")
    assert resolve_auth({"MLFLOW_TRACKING_PASSWORD": "correct-horse-battery"}).username == "admin"


def test_artifacts_default_beside_the_sqlite_backend(tmp_path, monkeypatch):
    """One home for artifacts, the driver's rule: before, they went to ./runs/mlartifacts of the
    working directory whatever --backend-store-uri said."""
    from mlflow_server.config import parse_config

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_BACKEND_STORE_URI", raising=False)
    store = tmp_path / "store" / "mlflow.db"
    cfg = parse_config(["--backend-store-uri", f"sqlite:///{store}"])
    assert cfg.artifacts_destination == str(tmp_path / "store" / "mlartifacts")
    assert parse_config([]).artifacts_destination == str(tmp_path / "runs" / "mlartifacts")
    cfg = parse_config(["--backend-store-uri", "postgresql://u@db.example/mlflow"])
    assert cfg.artifacts_destination == str(tmp_path / "runs" / "mlartifacts")
    cfg = parse_config(["--backend-store-uri", f"sqlite:///{store}", "--artifacts-destination", "elsewhere"])
    assert cfg.artifacts_destination == str(tmp_path / "elsewhere")


def test_insecure_allows_non_loopback_validation(tmp_path):
    # Only validation: --insecure lifts the refusal (the server itself is not started here).
    from mlflow_server.config import parse_config

    cfg = parse_config(["--host", "0.0.0.0", "--insecure"])
    assert cfg.host == "0.0.0.0" and cfg.url.startswith("http://127.0.0.1:")
