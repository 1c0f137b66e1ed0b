"""nfhub settings: the table of every setting (type, default, meaning), the `Config` built from it, loading from a
YAML file, the environment and the command line, the signing key, and the layout of the data directory.

Floor 2: imports only the leaves (nfhub_store for StartupError). Nothing here runs at import time."""

from __future__ import annotations

import copy
import dataclasses
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from nfhub_store import StartupError

# ---- Settings -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    type: type | tuple[type, ...]
    default: Any
    help: str
    secret: bool = False


DEFAULT_LOGIN_PROVIDERS: dict[str, Any] = {"local": {"local": {"description": "Username and password"}}}

# Every setting, its type, default and meaning: `Config`, `nfhub --help` and `nfhub check` are built from this table.
SETTINGS: dict[str, Setting] = {
    "data_dir": Setting(str, "./nfhub-data", "folder for the database, secret key, project files and run state"),
    "pipelines": Setting(str, "./nextflow_projects.yaml", "the pipeline catalog (YAML)"),
    "nextflow": Setting(str, "nextflow", "the Nextflow executable (a name on PATH or a path)"),
    "host": Setting(str, "127.0.0.1", "address to listen on"),
    "port": Setting(int, 8000, "port to listen on"),
    "http": Setting(str, "auto", "HTTP parser: auto (httptools on loopback, h11 with header limits elsewhere), "
                                 "httptools or h11"),
    "public_url": Setting(str, "", "URL users reach nfhub at (default http://<host>:<port>)"),
    "frontend_url": Setting(str, "", "where logins redirect to (default <public_url>/)"),
    "weblog_url": Setting(str, "", "base URL Nextflow posts weblog events to (default http://<host>:<port>)"),
    "secret_key": Setting(str, "", "HS256 signing key, >= 32 bytes (default: generated into <data_dir>/secret_key)",
                          True),
    "token_lifetime": Setting((str, int), "12h", "lifetime of login tokens (e.g. 30m, 12h, 7d)"),
    "max_token_lifetime": Setting((str, int), "365d", "longest lifetime a personal API token may have"),
    "max_concurrent_runs": Setting(int, 2, "runs executed at the same time; further runs wait in the queue"),
    "max_upload_bytes": Setting(int, 100 * 2**30, "largest file one upload may create (bytes)"),
    "cancel_grace": Setting((int, float), 60, "seconds a cancelled run gets to stop before its process group is killed"),
    "admins": Setting(list, [], "user names or e-mail addresses with admin rights"),
    "login_providers": Setting(dict, DEFAULT_LOGIN_PROVIDERS, "login methods: {openid: {name: {...}}, local: {...}}"),
    "log_level": Setting(str, "info", "logging level (debug, info, warning, error)"),
}
SECRET_WORDS = ("secret", "password", "credential")
HTTP_PARSERS = ("auto", "httptools", "h11")


def _defaults_from_settings(cls: type) -> type:
    """Make `cls` a frozen dataclass whose fields (declared with their types) take their defaults from SETTINGS, so
    that a default is written in one place only; lists and dicts are copied for each Config."""
    declared = set(cls.__annotations__)
    if declared != set(SETTINGS):
        raise TypeError(f"Config and SETTINGS differ: {sorted(declared ^ set(SETTINGS))}")
    for name, setting in SETTINGS.items():
        setattr(cls, name, dataclasses.field(default_factory=lambda d=setting.default: copy.deepcopy(d)))
    return dataclass(frozen=True)(cls)


@_defaults_from_settings
class Config:
    """The settings in force (see SETTINGS for each one's meaning and default). Build it with load_config, which
    checks every value; `Config(**values)` is for callers that know their values are right."""

    data_dir: str
    pipelines: str
    nextflow: str
    host: str
    port: int
    http: str
    public_url: str
    frontend_url: str
    weblog_url: str
    secret_key: str
    token_lifetime: str | int
    max_token_lifetime: str | int
    max_concurrent_runs: int
    max_upload_bytes: int
    cancel_grace: int | float
    admins: list
    login_providers: dict
    log_level: str

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).resolve()

    @property
    def base_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")

    @property
    def token_seconds(self) -> int:
        return parse_duration(self.token_lifetime, "token_lifetime")

    @property
    def max_token_seconds(self) -> int:
        return parse_duration(self.max_token_lifetime, "max_token_lifetime")


# ---- Loading ------------------------------------------------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")


def parse_duration(value: str | int, name: str = "duration") -> int:
    """'90', '30m', '12h', '7d' → seconds."""
    if isinstance(value, bool):
        raise StartupError(f"{name}: expected a duration like 30m, 12h or 7d, got {value!r}")
    if isinstance(value, int):
        seconds = value
    else:
        m = _DURATION.match(str(value))
        if not m:
            raise StartupError(f"{name}: expected a duration like 30m, 12h or 7d, got {value!r}")
        seconds = int(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    if seconds <= 0:
        raise StartupError(f"{name}: must be positive, got {value!r}")
    return seconds


def _coerce_env(name: str, raw: str) -> Any:
    kind = SETTINGS[name].type
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if int in kinds and re.fullmatch(r"-?\d+", raw.strip()):
        return int(raw)
    if float in kinds:
        try:
            return float(raw)
        except ValueError:
            pass
    if str in kinds:
        return raw
    if list in kinds:
        return [part.strip() for part in raw.split(",") if part.strip()]
    if dict in kinds:
        try:
            return yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise StartupError(f"NFHUB_{name.upper()}: not valid YAML/JSON ({exc})") from None
    raise StartupError(f"NFHUB_{name.upper()}: cannot read {raw!r} as {kinds[0].__name__}")


def _check_setting(name: str, value: Any, origin: str) -> Any:
    if name not in SETTINGS:
        known = ", ".join(sorted(SETTINGS))
        raise StartupError(f"unknown setting '{name}' in {origin} (known settings: {known})")
    kind = SETTINGS[name].type
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) or not isinstance(value, kinds):
        wanted = " or ".join(k.__name__ for k in kinds)
        hint = " (remove the quotes around numbers)" if isinstance(value, str) and int in kinds else ""
        raise StartupError(f"setting '{name}' in {origin} must be {wanted}, got {type(value).__name__} {value!r}{hint}")
    return value


def load_config(path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None,
                environ: dict[str, str] | None = None) -> Config:
    """Build the Config: defaults < YAML file < NFHUB_<NAME> environment < overrides (CLI flags).

    Unknown keys and wrong types raise StartupError naming the key."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    path = path or environ.get("NFHUB_CONFIG") or None
    if path:
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise StartupError(f"cannot read config file {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise StartupError(f"config file {path} is not valid YAML: {exc}") from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise StartupError(f"config file {path} must be a mapping of settings")
        for key, value in data.items():
            values[key] = _check_setting(str(key), value, f"config file {path}")
    for key, raw in environ.items():
        if key.startswith("NFHUB_") and key != "NFHUB_CONFIG":
            name = key[len("NFHUB_"):].lower()
            if name not in SETTINGS:
                raise StartupError(f"unknown setting '{name}' in environment variable {key}")
            values[name] = _check_setting(name, _coerce_env(name, raw), f"environment variable {key}")
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = _check_setting(key, value, "command line")
    config = Config(**values)
    parse_duration(config.token_lifetime, "token_lifetime")
    parse_duration(config.max_token_lifetime, "max_token_lifetime")
    if config.max_concurrent_runs < 1:
        raise StartupError("setting 'max_concurrent_runs' must be at least 1")
    if config.max_upload_bytes < 1:
        raise StartupError("setting 'max_upload_bytes' must be positive")
    if not 0 < config.port < 65536:
        raise StartupError(f"setting 'port' must be 1-65535, got {config.port}")
    if config.http not in HTTP_PARSERS:
        raise StartupError(f"setting 'http' must be one of {', '.join(HTTP_PARSERS)}, got {config.http!r}")
    if config.secret_key and len(config.secret_key.encode()) < 32:
        raise StartupError("setting 'secret_key' must be at least 32 bytes long")
    _check_login_providers(config.login_providers)
    return config


def _check_login_providers(providers: dict) -> None:
    for kind, entries in providers.items():
        if kind not in ("openid", "local"):
            raise StartupError(f"login_providers: unknown provider type '{kind}' (use openid or local)")
        if not isinstance(entries, dict):
            raise StartupError(f"login_providers.{kind} must be a mapping of provider name to settings")
        for name, spec in entries.items():
            if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", str(name)):
                raise StartupError(f"login_providers.{kind}: provider name {name!r} must be letters, digits, _ or -")
            if not isinstance(spec, dict):
                raise StartupError(f"login_providers.{kind}.{name} must be a mapping")
            allowed = {"description"} if kind == "local" else {
                "description", "client_id", "client_secret", "discovery_url", "scope"}
            unknown = set(spec) - allowed
            if unknown:
                raise StartupError(f"login_providers.{kind}.{name}: unknown key '{sorted(unknown)[0]}'")
            if kind == "openid":
                for key in ("client_id", "discovery_url"):
                    if not spec.get(key):
                        raise StartupError(f"login_providers.openid.{name}: '{key}' is required")


def redacted(value: Any, key: str = "") -> Any:
    """A copy of a config value with every secret-looking entry replaced by '***'."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {k: redacted(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [redacted(v, key) for v in value]
    lowered = key.lower()
    if value and (any(word in lowered for word in SECRET_WORDS) or lowered.endswith(("token", "key"))):
        return "***"
    return value


def load_secret_key(config: Config) -> bytes:
    if config.secret_key:
        return config.secret_key.encode()
    path = config.data_path / "secret_key"
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    config.data_path.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(48).encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process won the race; use its key
        return path.read_bytes().strip()
    with os.fdopen(fd, "wb") as fh:
        fh.write(key)
    return key


# ---- Data directory -----------------------------------------------------------------------------------------------
# <data_dir>/nfhub.sqlite, secret_key, weblog.journal; projects/<id>/ (the user's files); runs/<id>/ (the project's
# launch dir: .nextflow/, work/, and runs/<id>/<run id>/ with each run's own files); uploads/<id>/ (staging).


def database_path(config: Config) -> Path:
    return config.data_path / "nfhub.sqlite"


def project_dir(config: Config, project_id: int) -> Path:
    return config.data_path / "projects" / str(project_id)


def runs_dir(config: Config, project_id: int) -> Path:
    return config.data_path / "runs" / str(project_id)


def uploads_dir(config: Config, project_id: int) -> Path:
    return config.data_path / "uploads" / str(project_id)
