"""Command-line parsing and validation for `python -m mlflow_server`.

Everything here is checked before any process starts, so bad input is one line and exit 2.
This module imports neither mlflow nor the server stack: the supervisor stays small.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from softprompt_cli.errors import UsageError, field_error
from softprompt_cli.stores import ARTIFACTS_DIR, artifacts_beside

DEFAULT_RUNS_DIR = Path("runs")
DEFAULT_BACKEND = "sqlite:///./runs/mlflow.db"
DEFAULT_ARTIFACTS = f"./runs/{ARTIFACTS_DIR}"  # for a database server backend; sqlite: beside its file
# The SQL dialects MLflow's SQLAlchemy store supports (mlflow.store.db.db_types).
SQL_DIALECTS = ("sqlite", "postgresql", "mysql", "mssql")
ARTIFACT_SCHEMES = ("file", "s3", "gs", "wasbs", "abfss", "hdfs")
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
# One --allowed-hosts entry: a host or IP, optional port, fnmatch wildcards (MLflow's syntax).
_ALLOWED_HOST = re.compile(r"^[A-Za-z0-9.*\-\[\]:]+$")


@dataclass(frozen=True)
class ServerConfig:
    host: str
    port: int
    backend_store_uri: str
    backend_display: str  # the URI with any password masked, for messages
    artifacts_destination: str
    auth: bool
    auth_db_uri: str
    allowed_hosts: str | None
    cors_allowed_origins: str | None
    insecure: bool
    workers: int
    start_timeout: float

    @property
    def client_host(self) -> str:
        """Where a local client (the health check) connects: wildcard binds -> loopback."""
        if self.host in ("0.0.0.0", ""):
            return "127.0.0.1"
        if self.host == "::":
            return "::1"
        return self.host

    @property
    def url(self) -> str:
        host = self.client_host
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"


class _Parser(argparse.ArgumentParser):
    """argparse prints usage + message on two lines; the contract is one line, exit 2."""

    def error(self, message):  # noqa: D401 - argparse API
        raise UsageError("", text=message)  # argparse's own words; its message names the flag


def build_parser(epilog: str = "") -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m mlflow_server",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run an MLflow tracking server (UI + REST API + proxied artifacts).",
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1; non-loopback needs --auth)"
    )
    p.add_argument("--port", default="5000", help="TCP port, 1..65535 (default 5000)")
    p.add_argument(
        "--backend-store-uri",
        default=None,
        help="SQLAlchemy URI (default $MLFLOW_BACKEND_STORE_URI or "
        f"{DEFAULT_BACKEND}); prefer the env var for URIs with a password",
    )
    p.add_argument(
        "--artifacts-destination",
        default=None,
        help="where proxied artifacts go: a directory or s3://... (default: mlartifacts/ beside a sqlite "
        f"backend's file, as the search driver keeps them; else {DEFAULT_ARTIFACTS})",
    )
    p.add_argument("--auth", action="store_true", help="enable MLflow basic-auth (see below)")
    p.add_argument(
        "--auth-db-uri",
        default=None,
        help="user database for --auth (default: sqlite basic_auth.db beside the sqlite backend, else under ./runs)",
    )
    p.add_argument(
        "--allowed-hosts",
        default=None,
        help="comma-separated Host header patterns accepted (MLflow's DNS-rebinding "
        "defence); e.g. 'mlflow.ns.svc.cluster.local:*,localhost:*'",
    )
    p.add_argument(
        "--cors-allowed-origins", default=None, help="comma-separated origins allowed to call the API from a browser"
    )
    p.add_argument(
        "--insecure", action="store_true", help="allow a non-loopback bind without --auth, or --allowed-hosts '*'"
    )
    p.add_argument("--workers", default="1", help="server worker processes (default 1)")
    p.add_argument("--start-timeout", default="120", help="seconds to wait for /health before giving up (default 120)")
    return p


def _int_in(field: str, raw: str, lo: int, hi: int) -> int:
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise field_error(field, raw, f"an integer in {lo}..{hi}") from None
    if not lo <= value <= hi:
        raise field_error(field, raw, f"an integer in {lo}..{hi}")
    return value


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:  # a name is loopback only if every address it resolves to is
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def validate_host(host: str) -> str:
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    if not _HOSTNAME.match(host):
        raise field_error("host", host, "an IP address or a hostname")
    return host


def check_backend_uri(uri: str) -> tuple[str, str]:
    """Parse a SQLAlchemy URI; returns (uri, display form with the password masked)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    allowed = "a SQLAlchemy URI such as sqlite:///./runs/mlflow.db or postgresql://user@host/db"
    try:
        url = make_url(uri)
    except (ArgumentError, ValueError):
        # Never echo a URI that may hold a password: show only its scheme part.
        raise field_error("backend-store-uri", uri.split("://", 1)[0] + "://...", allowed) from None
    display = url.render_as_string(hide_password=True)
    if url.get_backend_name() not in SQL_DIALECTS:
        raise field_error("backend-store-uri", display, allowed)
    try:
        url.get_dialect()  # an unknown '+driver' is bad input; a missing package is not
    except ArgumentError:
        raise field_error(
            "backend-store-uri", display, f"{allowed} with a driver SQLAlchemy knows (e.g. postgresql+psycopg2)"
        ) from None
    if url.get_backend_name() == "sqlite":
        if not url.database or url.database == ":memory:":
            raise field_error(
                "backend-store-uri", display, "a sqlite *file* (in-memory data would vanish with the server)"
            )
    elif not url.host:
        raise field_error("backend-store-uri", display, f"{allowed} (a host is missing)")
    return uri, display


def check_artifacts(dest: str) -> str:
    """A directory becomes an absolute path (the child may resolve it from elsewhere)."""
    scheme = urlparse(dest).scheme
    if not dest.strip():
        raise field_error("artifacts-destination", dest, "a directory or an s3://... URI")
    if "://" not in dest:
        return str(Path(dest).expanduser().resolve())
    if scheme not in ARTIFACT_SCHEMES:
        raise field_error(
            "artifacts-destination", dest, "a directory or a URI with scheme " + "/".join(ARTIFACT_SCHEMES)
        )
    return dest


def check_allowed_hosts(raw: str | None, insecure: bool) -> str | None:
    if raw is None:
        return None
    items = [h.strip() for h in raw.split(",")]
    for item in items:
        if not item or not _ALLOWED_HOST.match(item):
            raise field_error(
                "allowed-hosts", raw, "comma-separated hosts like 'mlflow.ns.svc.cluster.local:*,localhost:*'"
            )
    if "*" in items and not insecure:
        # '*' turns off the Host-header check that defends browsers against DNS rebinding.
        raise field_error("allowed-hosts", raw, "explicit host patterns ('*' needs --insecure)")
    return ",".join(items)


def check_cors(raw: str | None, insecure: bool) -> str | None:
    if raw is None:
        return None
    items = [o.strip() for o in raw.split(",")]
    if any(not o for o in items):
        raise field_error("cors-allowed-origins", raw, "comma-separated origins")
    if "*" in items and not insecure:
        # '*' lets any web page a user visits drive the API with the user's session.
        raise field_error("cors-allowed-origins", raw, "explicit origins ('*' needs --insecure)")
    return ",".join(items)


def default_auth_db(backend_uri: str) -> str:
    """The auth user store lives beside the sqlite tracking db (or under ./runs)."""
    from sqlalchemy.engine import make_url

    url = make_url(backend_uri)
    if url.get_backend_name() == "sqlite":
        base = Path(url.database).expanduser().resolve().parent
    else:
        base = DEFAULT_RUNS_DIR.resolve()
    return f"sqlite:///{base / 'basic_auth.db'}"


def default_artifacts(backend_uri: str) -> str:
    """Artifacts of a sqlite store beside its file (softprompt_cli.stores); else ./runs."""
    from sqlalchemy.engine import make_url

    url = make_url(backend_uri)
    return str(artifacts_beside(url.database)) if url.get_backend_name() == "sqlite" else DEFAULT_ARTIFACTS


def parse_config(argv: list[str] | None, epilog: str = "") -> ServerConfig:
    args = build_parser(epilog).parse_args(argv)
    host = validate_host(args.host)
    port = _int_in("port", args.port, 1, 65535)
    workers = _int_in("workers", args.workers, 1, 64)
    try:
        timeout = float(args.start_timeout)
    except ValueError:
        timeout = -1.0
    if not 1 <= timeout <= 3600:
        raise field_error("start-timeout", args.start_timeout, "seconds in 1..3600")
    backend, display = check_backend_uri(
        args.backend_store_uri or os.environ.get("MLFLOW_BACKEND_STORE_URI") or DEFAULT_BACKEND
    )
    if not args.auth and not args.insecure and not is_loopback(host):
        # Without auth anyone who can reach the port can read and delete every run.
        raise field_error(
            "host",
            host,
            "a loopback address unless --auth is given (or --insecure to accept an unauthenticated server)",
        )
    auth_db = args.auth_db_uri or default_auth_db(backend)
    if args.auth_db_uri:
        check_backend_uri(auth_db)
    return ServerConfig(
        host=host,
        port=port,
        backend_store_uri=backend,
        backend_display=display,
        artifacts_destination=check_artifacts(args.artifacts_destination or default_artifacts(backend)),
        auth=args.auth,
        auth_db_uri=auth_db,
        allowed_hosts=check_allowed_hosts(args.allowed_hosts, args.insecure),
        cors_allowed_origins=check_cors(args.cors_allowed_origins, args.insecure),
        insecure=args.insecure,
        workers=workers,
        start_timeout=timeout,
    )
