"""Basic-auth settings for `--auth`: credentials from the environment, a generated auth ini.

Threats addressed here:
- a password on a command line is world-readable in /proc/*/cmdline and `ps`: credentials are
  read from environment variables only and handed to the server the same way;
- a password written to disk outlives the process: the ini we write holds no secret (MLflow
  reads the admin password from MLFLOW_AUTH_ADMIN_PASSWORD, which wins over the ini);
- MLflow's historic default password, short passwords and obvious guesses (a character
  repeated, a default word with digits, the username): refused before start (exit 2).
"""

from __future__ import annotations

import os
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path

from softprompt_cli.errors import UsageError

MIN_PASSWORD = 12  # MLflow's own policy (mlflow.utils.validation)
_LEGACY_DEFAULT = "password1234"  # GHSA-gq3w-7jj3-x7gr; MLflow refuses it too
# Words that default and example passwords are made of: the first guesses of any attacker, with
# or without digits after them ("password1234", "changeme2024", "admin123456789").
_DEFAULT_WORDS = ("password", "passw0rd", "changeme", "admin", "mlflow", "secret", "letmein", "qwerty", "default")
USERNAME_VARS = ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_TRACKING_USERNAME")
PASSWORD_VARS = ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_TRACKING_PASSWORD")
SECRET_KEY_VAR = "MLFLOW_FLASK_SERVER_SECRET_KEY"


@dataclass(frozen=True)
class AuthSettings:
    username: str
    password: str
    secret_key: str
    generated_secret_key: bool

    def __repr__(self) -> str:  # never let a password reach a log line or a traceback
        return f"AuthSettings(username={self.username!r}, password=***)"


def _first_set(names: tuple[str, ...], env) -> tuple[str | None, str | None]:
    for name in names:
        if env.get(name):
            return name, env[name]
    return None, None


def resolve_auth(env=None) -> AuthSettings:
    """Admin credentials: MLflow's own MLFLOW_AUTH_ADMIN_* first, else the client's
    MLFLOW_TRACKING_* (so one exported pair serves both server and client on one machine)."""
    env = os.environ if env is None else env
    _, username = _first_set(USERNAME_VARS, env)
    name, password = _first_set(PASSWORD_VARS, env)
    if not password:
        raise UsageError(
            PASSWORD_VARS[1],
            text=f"not set, expected the admin password "
            f"({MIN_PASSWORD}+ characters) in the environment when --auth is "
            f"given (or {PASSWORD_VARS[0]})",
        )
    if len(password) < MIN_PASSWORD:
        # The value itself stays out of the error: it is a secret.
        raise UsageError(name, None, f"at least {MIN_PASSWORD} characters", got=f"a {len(password)}-character password")
    if password == _LEGACY_DEFAULT:
        raise UsageError(name, None, "a secret one", got="MLflow's published legacy default password")
    username = username or "admin"
    if ":" in username or not username.strip():
        raise UsageError(USERNAME_VARS[1], username, "a name without ':'", got=repr(username))
    weak = weak_password(password, username)
    if weak:
        raise UsageError(name, None, "a password no one would guess first", got=f"a password that is {weak}")
    key = env.get(SECRET_KEY_VAR)
    # A per-start random key is fine for one replica: it only signs the CSRF token of the
    # user-signup form. Several replicas behind one Service must share a fixed key.
    return AuthSettings(username, password, key or secrets.token_hex(32), not key)


def weak_password(password: str, username: str) -> str | None:
    """What makes `password` an obvious guess (a few characters repeated, a default word with
    digits after it, the username), or None. Never includes the password itself."""
    for unit in (1, 2, 3):
        if password == (password[:unit] * len(password))[: len(password)]:
            return f"{'one character' if unit == 1 else f'{unit} characters'} repeated"
    lowered = password.lower()
    stem = lowered.rstrip("0123456789")
    if stem in _DEFAULT_WORDS or lowered in _DEFAULT_WORDS:
        return "a known default word with digits"
    user = username.lower()
    if lowered == user or (stem and stem == user.rstrip("0123456789")):
        return "the username (or the username with digits)"
    return None


def write_auth_ini(auth_db_uri: str, username: str) -> Path:
    """The basic-auth config in a private (0700) temp dir; the caller deletes it on exit."""
    if auth_db_uri.startswith("sqlite:///"):
        Path(auth_db_uri[len("sqlite:///") :]).expanduser().parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="mlflow-auth-"))
    ini = folder / "basic_auth.ini"
    # configparser interpolates '%': escape it so URIs with %-encoding survive.
    db = auth_db_uri.replace("%", "%%")
    ini.write_text(
        "[mlflow]\n"
        # READ: any *authenticated* user may read all experiments; only the admin writes
        # unless granted. Anonymous requests get 401 whatever this says.
        "default_permission = READ\n"
        f"database_uri = {db}\n"
        f"admin_username = {username}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    ini.chmod(0o600)
    return ini


def child_env(settings: AuthSettings, ini: Path) -> dict[str, str]:
    return {
        "MLFLOW_AUTH_CONFIG_PATH": str(ini),
        "MLFLOW_AUTH_ADMIN_USERNAME": settings.username,
        "MLFLOW_AUTH_ADMIN_PASSWORD": settings.password,
        SECRET_KEY_VAR: settings.secret_key,
    }
