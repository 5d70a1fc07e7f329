"""`python -m mlflow_server`: run an MLflow tracking server for the search.

    python -m mlflow_server [--host H] [--port P] [--backend-store-uri URI]
        [--artifacts-destination DIR|URI] [--auth] [--auth-db-uri URI]
        [--allowed-hosts LIST] [--cors-allowed-origins LIST] [--insecure]
        [--workers N] [--start-timeout S]

Defaults: 127.0.0.1:5000, tracking data in sqlite:///./runs/mlflow.db, artifacts proxied by
the server into mlartifacts/ beside a sqlite backend's file (./runs/mlartifacts for a database
server; clients need no storage credentials), one uvicorn worker,
no GenAI job runner. Prints `mlflow_server: ready at URL` on stdout once GET /health answers
OK; server logs go to stderr. SIGTERM/SIGINT stop the server and all its processes (exit 0).

Exit codes: 0 stopped by a signal; 2 bad input (one line: field, value, what is allowed);
1 the server failed to start or died (one line with the reason).

Environment:
  MLFLOW_BACKEND_STORE_URI   backend URI when --backend-store-uri is not given; use it for
                             URIs holding a password (argv is visible to every local user).
  With --auth (MLflow basic-auth, app `basic-auth`; anonymous requests get 401):
  MLFLOW_TRACKING_USERNAME   admin user name (default "admin");
  MLFLOW_TRACKING_PASSWORD   admin password, required, 12+ characters. These are the names
                             MLflow clients read, so one exported pair serves server and
                             client. MLFLOW_AUTH_ADMIN_USERNAME / MLFLOW_AUTH_ADMIN_PASSWORD,
                             if set, take precedence (MLflow's own server-side names).
                             The admin is created only when the user store is empty; later
                             password changes go through MLflow's update-password API.
  MLFLOW_FLASK_SERVER_SECRET_KEY  CSRF signing key; random per start if unset (set a fixed
                             one when several replicas serve one URL).
  The auth user store defaults to sqlite basic_auth.db beside a sqlite backend (else under
  ./runs); the generated auth ini (no secrets in it) lives in a private temp dir.

Binding to a non-loopback address requires --auth (or --insecure). Behind a DNS name set
--allowed-hosts (MLflow's DNS-rebinding defence matches the Host header, port included:
use patterns like 'mlflow.ns.svc.cluster.local:*,localhost:*').
"""

from __future__ import annotations

import importlib.util
import shutil
import signal
import sys
import threading
from pathlib import Path

from mlflow_server.auth import resolve_auth, write_auth_ini, child_env
from mlflow_server.config import ServerConfig, is_loopback, parse_config
from mlflow_server.supervisor import Server, StartError, check_port_free
from softprompt_cli.errors import UsageError

PROG = "mlflow_server"


def preflight(cfg: ServerConfig) -> None:
    """Missing packages and directories are runtime problems: exit 1 with the fix."""
    from sqlalchemy.engine import make_url

    for what, uri in (
        ("backend-store-uri", cfg.backend_store_uri),
        ("auth-db-uri", cfg.auth_db_uri if cfg.auth else None),
    ):
        if uri is None:
            continue
        url = make_url(uri)
        try:
            url.get_dialect().import_dbapi()
        except ImportError as e:
            hint = " (pip install 'psycopg[binary]')" if url.get_backend_name() == "postgresql" else ""
            raise StartError(f"{what}: the database driver is missing: {e}{hint}") from None
        if url.get_backend_name() == "sqlite":
            Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    dest = cfg.artifacts_destination
    if dest.startswith("s3://") and importlib.util.find_spec("boto3") is None:
        raise StartError("artifacts-destination: s3:// needs the boto3 package (pip install boto3)")
    if "://" not in dest:
        Path(dest).mkdir(parents=True, exist_ok=True)
    if cfg.auth and importlib.util.find_spec("flask_wtf") is None:
        raise StartError("--auth needs MLflow's auth extra: pip install 'mlflow[auth]' (Flask-WTF)")


def run(cfg: ServerConfig, extra_env: dict[str, str]) -> int:
    stop = threading.Event()

    def on_signal(signum, _frame):
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    server = Server(cfg, extra_env)
    try:
        try:
            ready = server.wait_healthy(stop)
        except StartError as e:
            server.stop()
            print(f"{PROG}: failed to start: {e}", file=sys.stderr, flush=True)
            return 1
        if ready:
            print(f"{PROG}: ready at {cfg.url}", flush=True)
        while not stop.is_set() and server.proc.poll() is None:
            stop.wait(0.2)
        if not stop.is_set():  # the server died on its own
            code = server.proc.returncode
            server.stop()
            print(f"{PROG}: server exited with code {code}: {server.reason()}", file=sys.stderr, flush=True)
            return 1
        server.stop()
        print(f"{PROG}: stopped", file=sys.stderr, flush=True)
        return 0
    finally:
        if server.proc.poll() is None:  # an unexpected exception: never leave it running
            server.stop()


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse_config(argv, epilog=__doc__.split("\n\n", 2)[2])
        auth = resolve_auth() if cfg.auth else None
    except UsageError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    ini_dir = None
    try:
        preflight(cfg)
        check_port_free(cfg)
        extra: dict[str, str] = {}
        if auth is not None:
            ini = write_auth_ini(cfg.auth_db_uri, auth.username)
            ini_dir = ini.parent
            extra = child_env(auth, ini)
        if not is_loopback(cfg.host) and not cfg.allowed_hosts:
            print(
                f"{PROG}: note: without --allowed-hosts MLflow answers 403 to Host headers "
                "other than localhost and private IPs",
                file=sys.stderr,
            )
        print(
            f"{PROG}: backend {cfg.backend_display}, artifacts {cfg.artifacts_destination}"
            f"{', basic-auth on' if auth else ''}",
            file=sys.stderr,
            flush=True,
        )
        return run(cfg, extra)
    except (StartError, OSError) as e:  # OSError: a directory that cannot be created, ...
        print(f"{PROG}: failed to start: {e}", file=sys.stderr)
        return 1
    finally:
        if ini_dir is not None:
            shutil.rmtree(ini_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
