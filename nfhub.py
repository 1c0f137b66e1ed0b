"""nfhub: a small, fast, self-hosted web service that runs Nextflow pipelines for researchers.

One process, one SQLite file, no broker. Run it with `nfhub serve` (or `make run`); `nfhub --help` lists the
commands. Settings come from defaults < a YAML file (`--config` / NFHUB_CONFIG) < NFHUB_<NAME> environment
variables < command-line flags; `nfhub check` validates them. The HTTP API is described at /api/openapi.json.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import sqlite3
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite
import anyio
import anyio.abc
import jwt
import yaml
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.staticfiles import StaticFiles
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import nfhub_catalog
import nfhub_files
import nfhub_worker

VERSION = "0.1.0"
log = logging.getLogger("nfhub")

# ---- Constants ---------------------------------------------------------------------------------------------------

RUN_STATES = ("queued", "starting", "running", "succeeded", "failed", "cancelled", "lost")
ACTIVE_STATES = ("queued", "starting", "running")
MAX_JSON_BYTES = 1 << 20
MAX_WEBLOG_BYTES = 4 << 20  # a `started` event carries all params: tens of KB, rarely more
MAX_NAME_LENGTH = 200
MAX_SQLITE_INT = 2**63 - 1
JWT_ALGORITHM = "HS256"
JWT_ISSUER = "nfhub"
JWT_LEEWAY = 30

# Numbered migrations; PRAGMA user_version holds how many have run. Append only, never edit a released one.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE users (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        display_name TEXT,
        email TEXT,
        provider TEXT NOT NULL DEFAULT 'local',
        subject TEXT,
        password_hash TEXT,
        is_admin INTEGER NOT NULL DEFAULT 0,
        disabled INTEGER NOT NULL DEFAULT 0,
        tokens_valid_after INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL,
        UNIQUE (provider, subject)
    );
    CREATE TABLE tokens (
        jti TEXT PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        kind TEXT NOT NULL CHECK (kind IN ('personal', 'session')),
        name TEXT,
        created_at TEXT NOT NULL,
        expires_at INTEGER NOT NULL,
        revoked_at INTEGER
    );
    CREATE INDEX tokens_user ON tokens(user_id);
    CREATE TABLE projects (
        id INTEGER PRIMARY KEY,
        owner_id INTEGER NOT NULL REFERENCES users(id),
        name TEXT NOT NULL,
        nextflow_project TEXT,
        workflow_arguments TEXT NOT NULL DEFAULT '{}',
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE INDEX projects_owner ON projects(owner_id);
    CREATE TABLE shares (
        project_id INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        access TEXT NOT NULL CHECK (access IN ('read', 'write')),
        PRIMARY KEY (project_id, user_id)
    );
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        project_id INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
        user_id INTEGER REFERENCES users(id),
        status TEXT NOT NULL,
        nextflow_project TEXT NOT NULL,
        arguments TEXT NOT NULL DEFAULT '{}',
        params TEXT NOT NULL DEFAULT '{}',
        command TEXT NOT NULL DEFAULT '[]',
        run_name TEXT NOT NULL,
        secret_hash TEXT NOT NULL,
        session_id TEXT,
        resume_of INTEGER,
        submitted_processes INTEGER NOT NULL DEFAULT 0,
        completed_processes INTEGER NOT NULL DEFAULT 0,
        failed_processes INTEGER NOT NULL DEFAULT 0,
        cached_processes INTEGER NOT NULL DEFAULT 0,
        exit_code INTEGER,
        error_message TEXT,
        failed_task TEXT,
        stats TEXT,
        pid INTEGER,
        pid_start INTEGER,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL,
        started_at TEXT,
        finished_at TEXT
    );
    CREATE INDEX runs_project ON runs(project_id, id);
    CREATE TABLE tasks (
        run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        task_id INTEGER NOT NULL,
        hash TEXT, name TEXT, process TEXT, tag TEXT, status TEXT NOT NULL,
        exit INTEGER, submit INTEGER, start INTEGER, complete INTEGER, duration INTEGER, realtime INTEGER,
        cpu_percent REAL, peak_rss INTEGER, workdir TEXT, native_id TEXT, attempt INTEGER, error_action TEXT,
        PRIMARY KEY (run_id, task_id)
    );
    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        jid TEXT NOT NULL UNIQUE,
        run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        event TEXT NOT NULL,
        body TEXT NOT NULL,
        received_at REAL NOT NULL
    );
    CREATE INDEX events_run ON events(run_id, id);
    """,
]


@dataclass(frozen=True)
class Setting:
    type: type | tuple[type, ...]
    default: Any
    help: str
    secret: bool = False


DEFAULT_LOGIN_PROVIDERS: dict[str, Any] = {"local": {"local": {"description": "Username and password"}}}

# Every setting, its type, default and meaning. `nfhub check` and the README are generated from this mental model.
SETTINGS: dict[str, Setting] = {
    "data_dir": Setting(str, "./nfhub-data", "folder for the database, secret key, project files and run state"),
    "pipelines": Setting(str, "./nextflow_projects.yaml", "the pipeline catalog (YAML)"),
    "nextflow": Setting(str, "nextflow", "the Nextflow executable (a name on PATH or a path)"),
    "host": Setting(str, "127.0.0.1", "address to listen on"),
    "port": Setting(int, 8000, "port to listen on"),
    "public_url": Setting(str, "", "URL users reach nfhub at (default http://<host>:<port>)"),
    "frontend_url": Setting(str, "", "where logins redirect to (default <public_url>/)"),
    "weblog_url": Setting(str, "", "base URL Nextflow posts weblog events to (default http://127.0.0.1:<port>)"),
    "secret_key": Setting(str, "", "HS256 signing key, >= 32 bytes (default: generated into <data_dir>/secret_key)", True),
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


# ---- Configuration -----------------------------------------------------------------------------------------------


class StartupError(Exception):
    """A configuration problem that stops nfhub from starting; the message names the setting."""


@dataclass(frozen=True)
class Config:
    data_dir: str = "./nfhub-data"
    pipelines: str = "./nextflow_projects.yaml"
    nextflow: str = "nextflow"
    host: str = "127.0.0.1"
    port: int = 8000
    public_url: str = ""
    frontend_url: str = ""
    weblog_url: str = ""
    secret_key: str = ""
    token_lifetime: str | int = "12h"
    max_token_lifetime: str | int = "365d"
    max_concurrent_runs: int = 2
    max_upload_bytes: int = 100 * 2**30
    cancel_grace: int | float = 60
    admins: list = field(default_factory=list)
    login_providers: dict = field(default_factory=lambda: json.loads(json.dumps(DEFAULT_LOGIN_PROVIDERS)))
    log_level: str = "info"

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
    if isinstance(value, Config):
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


# ---- Errors ------------------------------------------------------------------------------------------------------


class APIError(Exception):
    def __init__(self, status: int, message: str, details: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details


def error_response(status: int, message: str, details: dict | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """The one JSON error shape: {"error": message, "details"?: {field: message}}."""
    body: dict[str, Any] = {"error": message}
    if details:
        body["details"] = details
    return JSONResponse(body, status_code=status, headers=headers)


async def _api_error(request: Request, exc: Exception) -> Response:
    return error_response(exc.status, exc.message, getattr(exc, "details", None))  # type: ignore[attr-defined]


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = {404: "not found", 405: "method not allowed"}.get(exc.status_code, str(exc.detail).lower())
    return error_response(exc.status_code, message, headers=exc.headers)


async def _internal_error(request: Request, exc: Exception) -> Response:
    # The traceback goes to the log only; request headers (tokens) are never logged.
    log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal error")


def _error_classes() -> dict[Any, Callable]:
    handlers: dict[Any, Callable] = {APIError: _api_error, nfhub_files.FilesError: _api_error,
                                     HTTPException: _http_error, Exception: _internal_error}
    return handlers


async def read_json(request: Request) -> dict[str, Any]:
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > MAX_JSON_BYTES:
        raise APIError(413, f"request body larger than {MAX_JSON_BYTES} bytes")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_JSON_BYTES:
            raise APIError(413, f"request body larger than {MAX_JSON_BYTES} bytes")
    if not body.strip():
        return {}
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise APIError(400, "request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise APIError(400, "request body must be a JSON object")
    return data


# ---- Storage -----------------------------------------------------------------------------------------------------


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _pragmas(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=5000")
    # WAL + NORMAL: a commit survives a crash or kill -9 of nfhub (not a power cut), and costs no fsync.
    conn.execute("PRAGMA synchronous=NORMAL")


def migrate(path: Path) -> int:
    """Create or upgrade the database file; returns the schema version. Safe to call from several processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, timeout=5)
    try:
        _pragmas(conn)
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise StartupError(f"database {path} has schema version {version}, newer than this nfhub knows")
            for number in range(version, len(MIGRATIONS)):
                for statement in MIGRATIONS[number].split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version={number + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return len(MIGRATIONS)
    finally:
        conn.close()


def _row_dict(cursor: Any, row: tuple) -> dict[str, Any]:
    return {col[0]: row[i] for i, col in enumerate(cursor.description)}


class Store:
    """SQLite access: one write connection behind a lock (the only write path) and one read connection."""

    def __init__(self, path: Path):
        self.path = path
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._lock = anyio.Lock()

    async def open(self) -> None:
        migrate(self.path)
        self._writer = await self._connect()
        self._reader = await self._connect()
        await self._reader.execute("PRAGMA query_only=1")

    async def _connect(self) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(self.path, isolation_level=None)
        conn.row_factory = _row_dict  # type: ignore[assignment]
        for pragma in ("journal_mode=WAL", "foreign_keys=ON", "busy_timeout=5000", "synchronous=NORMAL"):
            await conn.execute(f"PRAGMA {pragma}")
        return conn

    async def close(self) -> None:
        for conn in (self._reader, self._writer):
            if conn is not None:
                await conn.close()
        self._reader = self._writer = None

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[aiosqlite.Connection]:
        """The one write path: BEGIN IMMEDIATE … COMMIT under a lock; rollback on any exception or cancellation."""
        assert self._writer is not None
        async with self._lock:
            await self._writer.execute("BEGIN IMMEDIATE")
            try:
                yield self._writer
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await self._writer.execute("ROLLBACK")
                raise
            with anyio.CancelScope(shield=True):
                await self._writer.execute("COMMIT")

    async def all(self, sql: str, params: tuple | dict = ()) -> list[dict[str, Any]]:
        assert self._reader is not None
        async with self._reader.execute(sql, params) as cur:
            return list(await cur.fetchall())  # type: ignore[arg-type]

    async def one(self, sql: str, params: tuple | dict = ()) -> dict[str, Any] | None:
        rows = await self.all(sql, params)
        return rows[0] if rows else None


# Project rows joined with their latest run; the seed fields are derived from that run.
PROJECT_SELECT = """
    SELECT p.*, u.name AS owner_name, r.id AS run_id, r.status AS run_status,
           COALESCE(r.submitted_processes, 0) AS submitted_processes,
           COALESCE(r.completed_processes, 0) AS completed_processes, {access} AS access
    FROM projects p JOIN users u ON u.id = p.owner_id
    LEFT JOIN runs r ON r.id = (SELECT max(id) FROM runs WHERE project_id = p.id)
"""


def project_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "name": row["name"],
        "workflow_arguments": json.loads(row["workflow_arguments"] or "{}"),
        "nextflow_project": row["nextflow_project"],
        "submitted_processes": row["submitted_processes"],
        "completed_processes": row["completed_processes"],
        "is_scheduled": row["run_status"] in ACTIVE_STATES,
        "status": row["run_status"],
        "run_id": row["run_id"],
        "owner": row["owner_name"],
        "access": row["access"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }


async def list_projects(store: Store, user: dict[str, Any]) -> list[dict[str, Any]]:
    if user["is_admin"]:
        access = "CASE WHEN p.owner_id = :uid THEN 'owner' ELSE COALESCE(s.access, 'admin') END"
        where = "1"
    else:
        access = "CASE WHEN p.owner_id = :uid THEN 'owner' ELSE s.access END"
        where = "(p.owner_id = :uid OR s.user_id IS NOT NULL)"
    sql = (PROJECT_SELECT.format(access=access)
           + f" LEFT JOIN shares s ON s.project_id = p.id AND s.user_id = :uid WHERE {where} ORDER BY p.id")
    return await store.all(sql, {"uid": user["id"]})


async def get_project(store: Store, user: dict[str, Any], project_id: int, need: str = "read") -> dict[str, Any]:
    """The project as this user may see it, or APIError 404 (never revealing that it exists) / 403."""
    if project_id > MAX_SQLITE_INT:
        raise APIError(404, "project not found")
    access = "CASE WHEN p.owner_id = :uid THEN 'owner' ELSE s.access END"
    sql = (PROJECT_SELECT.format(access=access)
           + " LEFT JOIN shares s ON s.project_id = p.id AND s.user_id = :uid WHERE p.id = :pid")
    row = await store.one(sql, {"uid": user["id"], "pid": project_id})
    if row is None:
        raise APIError(404, "project not found")
    if row["access"] is None:
        if not user["is_admin"]:
            raise APIError(404, "project not found")
        row["access"] = "admin"
    rank = {"read": 1, "write": 2, "admin": 3, "owner": 3}
    if rank[row["access"]] < rank[need]:
        raise APIError(403, f"you have {row['access']} access to this project; this needs {need} access")
    return row


# ---- Auth --------------------------------------------------------------------------------------------------------

_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)
    return "scrypt$%d$%d$%d$%s$%s" % (_SCRYPT["n"], _SCRYPT["r"], _SCRYPT["p"],
                                      base64.b64encode(salt).decode(), base64.b64encode(digest).decode())


def verify_password(password: str, stored: str | None) -> bool:
    if not stored:
        # Still spend the time, so that a missing account is not told apart by timing.
        hashlib.scrypt(password.encode(), salt=b"0" * 16, dklen=32, **_SCRYPT)
        return False
    try:
        _, n, r, p, salt, digest = stored.split("$")
        check = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), dklen=32, n=int(n), r=int(r), p=int(p))
    except ValueError:
        return False
    return hmac.compare_digest(check, base64.b64decode(digest))


class Tokens:
    """nfhub's own JWTs: HS256, sub/iat/exp/jti required, pinned algorithm and issuer, revocable by jti."""

    def __init__(self, key: bytes, lifetime: int, max_lifetime: int):
        self.key = key
        self.lifetime = lifetime
        self.max_lifetime = max(lifetime, max_lifetime)
        self.revoked: dict[str, int] = {}  # jti -> exp, kept until it expires

    def issue(self, user_id: int, lifetime: int | None = None, kind: str = "session") -> tuple[str, dict[str, Any]]:
        now = int(time.time())
        claims = {"sub": str(user_id), "iat": now, "exp": now + (lifetime or self.lifetime),
                  "jti": uuid.uuid4().hex, "iss": JWT_ISSUER, "kind": kind}
        return jwt.encode(claims, self.key, algorithm=JWT_ALGORITHM), claims

    def decode(self, token: str) -> dict[str, Any]:
        try:
            claims = jwt.decode(token, self.key, algorithms=[JWT_ALGORITHM], issuer=JWT_ISSUER, leeway=JWT_LEEWAY,
                                options={"require": ["sub", "iat", "exp", "jti", "iss"]})
        except jwt.PyJWTError as exc:
            raise APIError(401, f"invalid token: {exc}") from None
        now = time.time()
        try:
            iat, exp = int(claims["iat"]), int(claims["exp"])
        except (TypeError, ValueError):
            raise APIError(401, "invalid token: bad iat/exp") from None
        if iat > now + JWT_LEEWAY:
            raise APIError(401, "invalid token: issued in the future")
        if exp - iat > self.max_lifetime:
            raise APIError(401, "invalid token: lifetime longer than allowed")
        if claims["jti"] in self.revoked:
            raise APIError(401, "token has been revoked")
        return claims

    def prune(self) -> None:
        now = time.time()
        for jti in [j for j, exp in self.revoked.items() if exp < now]:
            del self.revoked[jti]


async def load_revocations(store: Store, tokens: Tokens) -> None:
    rows = await store.all("SELECT jti, expires_at FROM tokens WHERE revoked_at IS NOT NULL AND expires_at > ?",
                           (int(time.time()),))
    tokens.revoked.update({r["jti"]: r["expires_at"] for r in rows})


async def authenticate(request: Request, token: str | None = None) -> dict[str, Any]:
    """The user behind the request's x-access-token header (or an explicit token), else APIError 401."""
    state = request.app.state
    token = token or request.headers.get("x-access-token")
    if not token:
        raise APIError(401, "missing x-access-token header")
    if len(token) > 8192:
        raise APIError(401, "invalid token")
    claims = state.tokens.decode(token)
    try:
        user_id = int(claims["sub"])
    except (TypeError, ValueError):
        raise APIError(401, "invalid token: bad subject") from None
    user = await state.store.one("SELECT * FROM users WHERE id = ?", (user_id,))
    if user is None or user["disabled"]:
        raise APIError(401, "invalid token: unknown or disabled user")
    if int(claims["iat"]) < user["tokens_valid_after"]:
        raise APIError(401, "token has been revoked")
    user["is_admin"] = bool(user["is_admin"]) or user["name"] in state.config.admins or (
        bool(user["email"]) and user["email"] in state.config.admins)
    user["claims"] = claims
    return user


async def create_user(store: Store, name: str, *, password: str | None = None, is_admin: bool = False,
                      provider: str = "local", subject: str | None = None, email: str | None = None,
                      display_name: str | None = None) -> int:
    async with store.write() as db:
        cur = await db.execute(
            "INSERT INTO users (name, display_name, email, provider, subject, password_hash, is_admin, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (name, display_name, email, provider, subject, hash_password(password) if password else None,
             int(is_admin), now_iso()))
        return int(cur.lastrowid or 0)


# ---- Handlers: service -------------------------------------------------------------------------------------------


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok", "version": VERSION})


STATIC_DIR = Path(__file__).resolve().parent / "static"
PAGE_CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
            "connect-src 'self'; frame-src 'self' blob:; object-src 'none'; base-uri 'none'; form-action 'self'; "
            "frame-ancestors 'none'")


async def page(request: Request) -> Response:
    """The web page: one HTML file and plain JavaScript modules from static/, no build step, no CDN."""
    return FileResponse(STATIC_DIR / "index.html", headers={"Content-Security-Policy": PAGE_CSP,
                                                            "Cache-Control": "no-cache"})


async def openapi(request: Request) -> Response:
    return JSONResponse(openapi_document(request.app.state.config))


# ---- Handlers: projects ------------------------------------------------------------------------------------------


def _project_id(request: Request) -> int:
    return int(request.path_params["id"])


def _check_name(value: Any) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise APIError(422, "name is required", {"name": "required"})
    if not isinstance(value, str):
        raise APIError(422, "name must be a string", {"name": "must be a string"})
    name = value.strip()
    if len(name) > MAX_NAME_LENGTH:
        raise APIError(422, f"name is longer than {MAX_NAME_LENGTH} characters",
                       {"name": f"at most {MAX_NAME_LENGTH} characters"})
    if any(ord(c) < 32 or 0x7F <= ord(c) < 0xA0 for c in name):
        raise APIError(422, "name contains control characters", {"name": "no control characters"})
    return name


async def projects_list(request: Request) -> Response:
    user = await authenticate(request)
    rows = await list_projects(request.app.state.store, user)
    return JSONResponse({"projects": [project_json(r) for r in rows]})


async def projects_count(request: Request) -> Response:
    user = await authenticate(request)
    rows = await list_projects(request.app.state.store, user)
    return JSONResponse({"count": len(rows)})


async def projects_get(request: Request) -> Response:
    user = await authenticate(request)
    row = await get_project(request.app.state.store, user, _project_id(request))
    return JSONResponse({"project": project_json(row)})


async def projects_create(request: Request) -> Response:
    user = await authenticate(request)
    data = await read_json(request)
    name = _check_name(data.get("name"))
    state = request.app.state
    async with state.store.write() as db:
        now = now_iso()
        cur = await db.execute("INSERT INTO projects (owner_id, name, created_at, updated_at) VALUES (?, ?, ?, ?)",
                               (user["id"], name, now, now))
        project_id = int(cur.lastrowid or 0)
        # The folder is made inside the transaction: if it fails, the row is rolled back too.
        project_dir(state.config, project_id).mkdir(parents=True, exist_ok=True)
    row = await get_project(state.store, user, project_id)
    return JSONResponse({"project": project_json(row)})


async def projects_update(request: Request) -> Response:
    user = await authenticate(request)
    state = request.app.state
    project_id = _project_id(request)
    row = await get_project(state.store, user, project_id, "write")
    data = await read_json(request)
    if "nextflow_argumenty" in data and "workflow_arguments" not in data:  # the seed's typo, kept as an alias
        data["workflow_arguments"] = data.pop("nextflow_argumenty")
    unknown = set(data) - {"name", "nextflow_project", "workflow_arguments", "nextflow_argumenty"}
    if unknown:
        raise APIError(422, f"unknown field '{sorted(unknown)[0]}'", {k: "unknown field" for k in sorted(unknown)})
    changes: dict[str, Any] = {}
    if "name" in data:
        changes["name"] = _check_name(data["name"])
    pipeline_name = row["nextflow_project"]
    if "nextflow_project" in data:
        pipeline_name = data["nextflow_project"]
        if pipeline_name is not None and (not isinstance(pipeline_name, str) or pipeline_name not in state.catalog):
            raise APIError(422, f"unknown nextflow project {pipeline_name!r}",
                           {"nextflow_project": "not in the catalog"})
        changes["nextflow_project"] = pipeline_name
        if pipeline_name != row["nextflow_project"] and "workflow_arguments" not in data:
            changes["workflow_arguments"] = "{}"  # another pipeline's arguments mean nothing here
    if "workflow_arguments" in data:
        values = data["workflow_arguments"]
        if values is None:
            values = {}
        if not isinstance(values, dict):
            raise APIError(422, "workflow_arguments must be an object", {"workflow_arguments": "must be an object"})
        if values:
            if pipeline_name is None:
                raise APIError(422, "choose a nextflow project before setting its arguments",
                               {"nextflow_project": "required for workflow_arguments"})
            check_values(state, project_id, pipeline_name, values, complete=False)
        changes["workflow_arguments"] = json.dumps(values)
    async with state.store.write() as db:
        if await _active_run(db, project_id):
            raise APIError(409, "the project has an active run; cancel it or wait for it to finish")
        if changes:
            sets = ", ".join(f"{k} = ?" for k in changes)
            await db.execute(f"UPDATE projects SET {sets}, updated_at = ? WHERE id = ?",
                             (*changes.values(), now_iso(), project_id))
    return JSONResponse({})


async def projects_delete(request: Request) -> Response:
    user = await authenticate(request)
    state = request.app.state
    project_id = _project_id(request)
    row = await get_project(state.store, user, project_id)
    if row["access"] not in ("owner", "admin"):
        raise APIError(403, "only the owner or an admin can delete a project")
    async with state.store.write() as db:
        if await _active_run(db, project_id):
            raise APIError(409, "the project has an active run; cancel it first")
        await db.execute("DELETE FROM projects WHERE id = ?", (project_id,))
        # Move the folders aside inside the transaction, so a failure leaves row and files together.
        trash = state.config.data_path / "trash" / f"{project_id}-{uuid.uuid4().hex}"
        trash.mkdir(parents=True)
        for name, folder in (("files", project_dir(state.config, project_id)),
                             ("runs", runs_dir(state.config, project_id)),
                             ("uploads", uploads_dir(state.config, project_id))):
            if folder.exists():
                os.replace(folder, trash / name)
    await anyio.to_thread.run_sync(_remove_tree, trash)
    return JSONResponse({})


async def _active_run(db: aiosqlite.Connection, project_id: int) -> bool:
    async with db.execute("SELECT 1 FROM runs WHERE project_id = ? AND status IN ('queued', 'starting', 'running')"
                          " LIMIT 1", (project_id,)) as cur:
        return await cur.fetchone() is not None


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def project_dir(config: Config, project_id: int) -> Path:
    return config.data_path / "projects" / str(project_id)


def runs_dir(config: Config, project_id: int) -> Path:
    return config.data_path / "runs" / str(project_id)


def uploads_dir(config: Config, project_id: int) -> Path:
    return config.data_path / "uploads" / str(project_id)


# ---- Handlers: project files -------------------------------------------------------------------------------------


def files_context(config: Config, project_id: int) -> nfhub_files.ProjectFiles:
    return nfhub_files.ProjectFiles(root=project_dir(config, project_id).resolve(),
                                    link_roots=(runs_dir(config, project_id).resolve(),),
                                    staging=uploads_dir(config, project_id).resolve(),
                                    max_upload_bytes=config.max_upload_bytes)


def _files_handler(handler: Callable, need: str) -> Callable:
    async def endpoint(request: Request) -> Response:
        user = await authenticate(request, _stream_token(request))
        state = request.app.state
        project_id = _project_id(request)
        await get_project(state.store, user, project_id, need)
        ctx = files_context(state.config, project_id)
        ctx.root.mkdir(parents=True, exist_ok=True)
        return await handler(ctx, request)

    endpoint.__name__ = handler.__name__
    return endpoint


def check_values(state: Any, project_id: int, pipeline_name: str, values: dict, *, complete: bool) -> None:
    """Validate workflow arguments against the catalog; paths go through the files' one path function."""
    ctx = files_context(state.config, project_id)
    try:
        nfhub_catalog.check_arguments(state.catalog[pipeline_name], values,
                                      lambda rel: nfhub_files.resolve_path(ctx, rel), complete=complete)
    except nfhub_catalog.ArgumentsError as exc:
        raise APIError(422, exc.message, exc.details) from None


# ---- Runs: storage and weblog event application ------------------------------------------------------------------

TASK_COLUMNS = ("hash", "name", "process", "tag", "status", "exit", "submit", "start", "complete", "duration",
                "realtime", "cpu_percent", "peak_rss", "workdir", "native_id", "attempt", "error_action")
TERMINAL_TASK_STATES = ("COMPLETED", "FAILED", "ABORTED", "CACHED")
# What a later event may not undo: a RUNNING event arriving after COMPLETED keeps COMPLETED.
_TASK_RANK = {"NEW": 0, "SUBMITTED": 1, "RUNNING": 2, "COMPLETED": 3, "FAILED": 3, "ABORTED": 3, "CACHED": 3}


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def run_json(row: dict[str, Any], brief: bool = False) -> dict[str, Any]:
    run = {
        "id": row["id"], "project_id": row["project_id"], "status": row["status"],
        "nextflow_project": row["nextflow_project"], "run_name": row["run_name"], "session_id": row["session_id"],
        "resume_of": row["resume_of"], "submitted_processes": row["submitted_processes"],
        "completed_processes": row["completed_processes"], "failed_processes": row["failed_processes"],
        "cached_processes": row["cached_processes"], "exit_code": row["exit_code"],
        "error_message": row["error_message"], "failed_task": row["failed_task"],
        "created_at": row["created_at"], "started_at": row["started_at"], "finished_at": row["finished_at"],
        "duration": _duration_ms(row["started_at"] or row["created_at"], row["finished_at"]),
        "user": row.get("user_name"),
    }
    if not brief:
        run["arguments"] = json.loads(row["arguments"])
        run["params"] = json.loads(row["params"])
        run["command"] = json.loads(row["command"])
        run["stats"] = json.loads(row["stats"]) if row["stats"] else None
    return run


def _duration_ms(start: str | None, end: str | None) -> int | None:
    if not start:
        return None
    begin = datetime.fromisoformat(start.replace("Z", "+00:00"))
    finish = datetime.fromisoformat(end.replace("Z", "+00:00")) if end else datetime.now(UTC)
    return int((finish - begin).total_seconds() * 1000)


def task_json(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in ("task_id", *TASK_COLUMNS)}


async def _upsert_task(db: aiosqlite.Connection, run_id: int, task: dict[str, Any]) -> tuple[str | None, bool]:
    """Insert or advance one task row; returns (previous status, whether anything changed)."""
    async with db.execute("SELECT status FROM tasks WHERE run_id = ? AND task_id = ?",
                          (run_id, task["task_id"])) as cur:
        found = await cur.fetchone()
    previous = found["status"] if found else None
    status = task.get("status") or "NEW"
    if previous is not None and _TASK_RANK.get(status, 0) < _TASK_RANK.get(previous, 0):
        return previous, False
    values = {k: task.get(k) for k in TASK_COLUMNS}
    values["status"] = status
    if values["native_id"] is not None:
        values["native_id"] = str(values["native_id"])
    cols = ", ".join(TASK_COLUMNS)
    marks = ", ".join("?" for _ in TASK_COLUMNS)
    updates = ", ".join(f"{c} = COALESCE(excluded.{c}, {c})" for c in TASK_COLUMNS)
    await db.execute(f"INSERT INTO tasks (run_id, task_id, {cols}) VALUES (?, ?, {marks})"
                     f" ON CONFLICT (run_id, task_id) DO UPDATE SET {updates}",
                     (run_id, task["task_id"], *(values[c] for c in TASK_COLUMNS)))
    return previous, True


async def apply_event(db: aiosqlite.Connection, run: dict[str, Any], kind: str, body: dict[str, Any],
                      changed: dict[str, Any]) -> None:
    """Apply one weblog event to the runs/tasks tables, idempotently. `changed` collects what to publish."""
    run_id = run["id"]
    if kind in ("process_submitted", "process_started", "process_completed") or (kind == "error" and body.get("trace")):
        try:
            task = nfhub_worker.task_from_weblog(body.get("trace"))  # type: ignore[arg-type]
        except ValueError:
            return
        if kind == "error":
            # errorStrategy 'finish': the failing task's trace rides on the error event.
            await db.execute("UPDATE runs SET failed_task = COALESCE(failed_task, ?) WHERE id = ?",
                             (task["name"], run_id))
            changed["runs"].add(run_id)
            return
        previous, did = await _upsert_task(db, run_id, task)
        if not did:
            return
        counters = []
        if previous is None:
            counters.append("submitted_processes = submitted_processes + 1")
        if kind == "process_completed" and previous not in TERMINAL_TASK_STATES:
            counters.append("completed_processes = completed_processes + 1")
            if task["status"] == "FAILED":
                counters.append("failed_processes = failed_processes + 1")
        if task["status"] == "FAILED" and task.get("error_action") in (None, "TERMINATE", "FINISH"):
            counters.append(f"failed_task = COALESCE(failed_task, {_sql_quote(task['name'] or '')})")
        if counters:
            await db.execute(f"UPDATE runs SET {', '.join(counters)} WHERE id = ?", (run_id,))
            changed["runs"].add(run_id)
        changed["tasks"].setdefault(run_id, set()).add(task["task_id"])
    elif kind == "started":
        summary = nfhub_worker.workflow_summary(body.get("metadata") or {})
        await db.execute("UPDATE runs SET status = CASE WHEN status IN ('queued', 'starting') THEN 'running'"
                         " ELSE status END, started_at = COALESCE(started_at, ?),"
                         " session_id = COALESCE(session_id, ?) WHERE id = ?",
                         (now_iso(), summary["session_id"] or body.get("runId"), run_id))
        changed["runs"].add(run_id)
    elif kind == "completed":
        summary = nfhub_worker.workflow_summary(body.get("metadata") or {})
        stats = {**summary["stats"], "success": summary["success"], "exit_status": summary["exit_status"],
                 "error_message": summary["error_message"], "error_report": summary["error_report"],
                 "duration": summary["duration"], "nextflow_version": summary["nextflow_version"]}
        error = None if summary["success"] else summary["error_message"]
        await db.execute("UPDATE runs SET stats = ?, session_id = COALESCE(session_id, ?),"
                         " error_message = COALESCE(?, error_message), cached_processes = ? WHERE id = ?",
                         (json.dumps(stats), summary["session_id"] or body.get("runId"), error,
                          summary["stats"]["cached"], run_id))
        changed["runs"].add(run_id)


def _sql_quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


# ---- Handlers: runs ----------------------------------------------------------------------------------------------


async def schedule(request: Request) -> Response:
    user = await authenticate(request)
    state = request.app.state
    project_id = _project_id(request)
    project = await get_project(state.store, user, project_id, "write")
    data = await read_json(request)
    resume = data.get("resume", False)
    if set(data) - {"resume"}:
        raise APIError(422, f"unknown field '{sorted(set(data) - {'resume'})[0]}'")
    if not isinstance(resume, (bool, int)) or (not isinstance(resume, bool) and resume < 1):
        raise APIError(422, "resume must be true, false or a run id", {"resume": "true, false or a run id"})
    name = project["nextflow_project"]
    if not name:
        raise APIError(422, "choose a nextflow project first", {"nextflow_project": "required"})
    if name not in state.catalog:
        raise APIError(422, f"nextflow project {name!r} is no longer in the catalog",
                       {"nextflow_project": "not in the catalog"})
    pipeline = state.catalog[name]
    values = json.loads(project["workflow_arguments"] or "{}")
    check_values(state, project_id, name, values, complete=True)
    params = nfhub_catalog.build_params(pipeline, values, project_dir(state.config, project_id))
    session = None
    resume_of = None
    if resume is not False:
        sql = "SELECT id, session_id FROM runs WHERE project_id = ? AND session_id IS NOT NULL"
        args: tuple = (project_id,)
        if resume is not True:
            sql += " AND id = ?"
            args = (project_id, resume)
        prior = await state.store.one(sql + " ORDER BY id DESC LIMIT 1", args)
        if prior is None:
            raise APIError(422, "there is no earlier run with a Nextflow session to resume",
                           {"resume": "no run to resume"})
        session, resume_of = prior["session_id"], prior["id"]
    run_id = await state.runs.create(project_id, user["id"], name, values, params, session, resume_of)
    return JSONResponse({"is_scheduled": True, "run_id": run_id})


async def cancel(request: Request) -> Response:
    user = await authenticate(request)
    state = request.app.state
    project_id = _project_id(request)
    await get_project(state.store, user, project_id, "write")
    await state.runs.cancel_project(project_id)
    project = await get_project(state.store, user, project_id)
    return JSONResponse({"is_scheduled": project["run_status"] in ACTIVE_STATES})


async def _get_run(request: Request, need: str = "read") -> tuple[dict[str, Any], dict[str, Any]]:
    user = await authenticate(request, _stream_token(request))
    state = request.app.state
    project_id = _project_id(request)
    await get_project(state.store, user, project_id, need)
    run_id = int(request.path_params["run_id"])
    row = await state.store.one("SELECT r.*, u.name AS user_name FROM runs r LEFT JOIN users u ON u.id = r.user_id"
                                " WHERE r.id = ? AND r.project_id = ?", (min(run_id, MAX_SQLITE_INT), project_id))
    if row is None:
        raise APIError(404, "run not found")
    return user, row


def _stream_token(request: Request) -> str | None:
    """GETs a browser cannot decorate with headers (downloads, event streams, logs) may carry ?token=."""
    if request.method == "GET" and request.url.path.endswith(("/log", "/events", "/download")):
        return request.headers.get("x-access-token") or request.query_params.get("token")
    return None


async def runs_list(request: Request) -> Response:
    user = await authenticate(request)
    state = request.app.state
    project_id = _project_id(request)
    await get_project(state.store, user, project_id)
    rows = await state.store.all("SELECT r.*, u.name AS user_name FROM runs r LEFT JOIN users u ON u.id = r.user_id"
                                 " WHERE r.project_id = ? ORDER BY r.id DESC", (project_id,))
    return JSONResponse({"runs": [run_json(r) for r in rows]})


async def runs_get(request: Request) -> Response:
    _, row = await _get_run(request)
    run = run_json(row)
    run["work_dir_size"] = await request.app.state.runs.work_size(row)
    return JSONResponse({"run": run})


def _int_param(request: Request, name: str, default: int, lo: int = 0, hi: int = MAX_SQLITE_INT) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    if not re.fullmatch(r"\d{1,18}", raw) or not lo <= int(raw) <= hi:
        raise APIError(400, f"{name} must be an integer from {lo} to {hi}")
    return int(raw)


async def runs_tasks(request: Request) -> Response:
    _, run = await _get_run(request)
    state = request.app.state
    status = request.query_params.get("status")
    offset = _int_param(request, "offset", 0)
    limit = _int_param(request, "limit", 100, 1, 1000)
    where, args = "run_id = ?", [run["id"]]
    if status:
        wanted = [s.strip().upper() for s in status.split(",") if s.strip()]
        where += f" AND status IN ({', '.join('?' for _ in wanted)})"
        args += wanted
    total = (await state.store.one(f"SELECT count(*) AS n FROM tasks WHERE {where}", tuple(args)))["n"]
    # Failed tasks first, then in task order: what a user looks for in a failed run.
    rows = await state.store.all(f"SELECT * FROM tasks WHERE {where} ORDER BY status != 'FAILED', task_id"
                                 " LIMIT ? OFFSET ?", (*args, limit, offset))
    return JSONResponse({"tasks": [task_json(r) for r in rows], "total": total})


async def runs_log(request: Request) -> Response:
    _, run = await _get_run(request)
    offset = _int_param(request, "offset", 0)
    path = request.app.state.runs.run_dir(run) / "console.log"
    max_bytes = 1 << 20

    def read() -> tuple[bytes, int]:
        try:
            with open(path, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                fh.seek(min(offset, size))
                return fh.read(max_bytes), size
        except FileNotFoundError:
            return b"", 0

    data, size = await anyio.to_thread.run_sync(read)
    # Nextflow's weblog warnings quote the URL, run secret included; same length keeps offsets true.
    data = _SECRET_IN_URL.sub(lambda m: m.group(1) + b"*" * len(m.group(2)), data)
    return Response(data, media_type="text/plain; charset=utf-8",
                    headers={"X-Log-Size": str(size), "X-Log-Offset": str(min(offset, size) + len(data)),
                             "Cache-Control": "no-store"})


_SECRET_IN_URL = re.compile(rb"([?&]token=)([A-Za-z0-9_-]+)")


async def runs_clean(request: Request) -> Response:
    _, run = await _get_run(request, "write")
    if run["status"] in ACTIVE_STATES:
        raise APIError(409, "the run is still active")
    freed = await request.app.state.runs.clean(run)
    return JSONResponse({"freed_bytes": freed, "work_dir_size": await request.app.state.runs.work_size(run)})


async def nextflow_log(request: Request) -> Response:
    """Nextflow's weblog endpoint: authenticated by the run's own secret, durable before it answers."""
    return await request.app.state.runs.ingest(request, _project_id(request))


async def finished(request: Request) -> Response:
    """For an external worker: the run ended (its secret authenticates; user tokens are refused with 403)."""
    runs = request.app.state.runs
    ref = runs.run_for_secret(request, _project_id(request))
    if ref is None:
        if request.headers.get("x-access-token"):
            raise APIError(403, "this endpoint is for the worker; it needs the run's secret, not a user token")
        raise APIError(401, "missing or wrong run secret")
    data = await read_json(request)
    exit_code = data.get("exit_code", data.get("exitStatus"))
    if exit_code is not None and (isinstance(exit_code, bool) or not isinstance(exit_code, int)):
        raise APIError(422, "exit_code must be an integer", {"exit_code": "must be an integer"})
    await runs.finish(ref.run_id, exit_code, external=True)
    return JSONResponse("")


async def project_events(request: Request) -> Response:
    user = await authenticate(request, _stream_token(request))
    state = request.app.state
    project_id = _project_id(request)
    await get_project(state.store, user, project_id)
    last = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    return StreamingResponse(state.runs.broker.stream(project_id, last, state.runs.snapshot),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


# ---- Background: the run manager ---------------------------------------------------------------------------------


@dataclass
class RunRef:
    run_id: int
    project_id: int
    run_name: str


class Broker:
    """Server-sent events per project: numbered messages, a replay buffer for Last-Event-ID, heartbeats."""

    def __init__(self, heartbeat: float = 15.0, keep: int = 2000):
        self.boot = uuid.uuid4().hex[:8]
        self.seq = 0
        self.heartbeat = heartbeat
        self.keep = keep
        self.buffers: dict[int, list[tuple[int, str, str]]] = {}
        self.waiters: dict[int, set[anyio.Event]] = {}

    def publish(self, project_id: int, kind: str, data: dict[str, Any]) -> None:
        self.seq += 1
        buf = self.buffers.setdefault(project_id, [])
        buf.append((self.seq, kind, json.dumps(data)))
        if len(buf) > self.keep:
            del buf[: len(buf) - self.keep]
        for event in self.waiters.pop(project_id, set()):
            event.set()

    def _frame(self, seq: int, kind: str, data: str) -> bytes:
        return f"id: {self.boot}-{seq}\nevent: {kind}\ndata: {data}\n\n".encode()

    async def stream(self, project_id: int, last: str | None,
                     snapshot: Callable[[int], Any]) -> AsyncIterator[bytes]:
        after = None
        if last and last.startswith(self.boot + "-") and last[len(self.boot) + 1:].isdigit():
            after = int(last[len(self.boot) + 1:])
        buf = self.buffers.get(project_id, [])
        if after is None or (buf and buf[0][0] > after + 1 and after < self.seq):
            # New client, or too far behind for the buffer: start from a full picture.
            yield b"retry: 2000\n\n"
            yield self._frame(self.seq, "snapshot", json.dumps(await snapshot(project_id)))
            after = self.seq
        while True:
            for seq, kind, data in list(self.buffers.get(project_id, [])):
                if seq > after:
                    yield self._frame(seq, kind, data)
                    after = seq
            event = anyio.Event()
            self.waiters.setdefault(project_id, set()).add(event)
            with anyio.move_on_after(self.heartbeat) as scope:
                await event.wait()
            if scope.cancelled_caught:
                self.waiters.get(project_id, set()).discard(event)
                yield b": heartbeat\n\n"


class RunManager:
    """Owns runs from scheduling to their end: the dispatcher, launching, weblog ingestion, recovery, cancel."""

    def __init__(self, config: Config, store: Store, catalog: dict[str, Any]):
        self.config = config
        self.store = store
        self.catalog = catalog
        self.dispatcher = nfhub_worker.Dispatcher(config.max_concurrent_runs, self._run)
        self.broker = Broker()
        self.procs: dict[int, nfhub_worker.RunProcess] = {}
        self.secrets: dict[str, RunRef] = {}  # sha256(secret) -> run, for weblog and finished
        self.ended: dict[int, anyio.Event] = {}
        self.boot = uuid.uuid4().hex[:12]
        self.seq = 0
        self.queue: list[tuple[str, int, str, dict[str, Any], bytes, float]] = []
        self.wake = anyio.Event()
        self.applied = 0  # journal sequence numbers applied so far (this boot)
        self.applied_event = anyio.Event()
        self.journal_path = config.data_path / "weblog.journal"
        self.journal_fd = -1
        self.task_group: anyio.abc.TaskGroup | None = None

    # -- paths
    def run_dir(self, run: dict[str, Any]) -> Path:
        return runs_dir(self.config, run["project_id"]) / str(run["id"])

    def weblog_base(self) -> str:
        return (self.config.weblog_url or f"http://127.0.0.1:{self.config.port}").rstrip("/")

    # -- lifecycle
    async def start(self, tg: anyio.abc.TaskGroup) -> None:
        self.task_group = tg
        await self._replay_journal()
        self.journal_fd = os.open(self.journal_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        await tg.start(self.dispatcher.serve)
        tg.start_soon(self._applier)
        await self._recover()

    def close(self) -> None:
        if self.journal_fd >= 0:
            os.close(self.journal_fd)
            self.journal_fd = -1

    # -- scheduling
    async def create(self, project_id: int, user_id: int, pipeline_name: str, values: dict, params: dict,
                     session: str | None, resume_of: int | None) -> int:
        secret = secrets.token_urlsafe(24)
        async with self.store.write() as db:
            if await _active_run(db, project_id):
                raise APIError(409, "the project already has a queued or running run")
            cur = await db.execute(
                "INSERT INTO runs (project_id, user_id, status, nextflow_project, arguments, params, run_name,"
                " secret_hash, session_id, resume_of, created_at) VALUES (?, ?, 'queued', ?, ?, ?, '', ?, ?, ?, ?)",
                (project_id, user_id, pipeline_name, json.dumps(values), json.dumps(params), secret_hash(secret),
                 None, resume_of, now_iso()))
            run_id = int(cur.lastrowid or 0)
            run_name = nfhub_worker.new_run_name(run_id)
            spec = self._spec(project_id, run_id, run_name, pipeline_name, params, secret, session)
            try:
                argv = await anyio.to_thread.run_sync(nfhub_worker.prepare_run, spec)
            except ValueError as exc:
                raise APIError(422, f"cannot prepare the run: {exc}") from None
            await db.execute("UPDATE runs SET run_name = ?, command = ?, session_id = ? WHERE id = ?",
                             (run_name, json.dumps(argv), session, run_id))
        self.secrets[secret_hash(secret)] = RunRef(run_id, project_id, run_name)
        self.ended[run_id] = anyio.Event()
        self.dispatcher.submit(run_id)
        await self._publish_run(run_id)
        return run_id

    def _spec(self, project_id: int, run_id: int, run_name: str, pipeline_name: str, params: dict, secret: str,
              session: str | None) -> nfhub_worker.LaunchSpec:
        pipeline = self.catalog[pipeline_name]
        launch = runs_dir(self.config, project_id)
        return nfhub_worker.LaunchSpec(
            run_id=run_id, nextflow=self.config.nextflow, source=pipeline.source, local=pipeline.local,
            revision=pipeline.revision, profiles=tuple(pipeline.profiles), config_files=tuple(pipeline.config),
            params=params, run_dir=launch / str(run_id), launch_dir=launch, work_dir=launch / "work",
            run_name=run_name,
            weblog_url=f"{self.weblog_base()}/api/projects/{project_id}/nextflow-log?token={secret}",
            resume_session=session, env={"NXF_ANSI_LOG": "false"})

    async def _run(self, run_id: int) -> None:
        """Dispatcher callback: launch a queued run and supervise it to its end."""
        run = await self.store.one("SELECT * FROM runs WHERE id = ?", (run_id,))
        if run is None or run["status"] != "queued":
            return
        async with self.store.write() as db:
            await db.execute("UPDATE runs SET status = 'starting', started_at = ? WHERE id = ? AND status = 'queued'",
                             (now_iso(), run_id))
        await self._publish_run(run_id)
        # The run's files and argv were written when it was scheduled; launching needs only its folders.
        argv = json.loads(run["command"])
        launch = runs_dir(self.config, run["project_id"])
        spec = nfhub_worker.LaunchSpec(
            run_id=run_id, nextflow=argv[0], source="", local=True, revision=None, profiles=(), config_files=(),
            params={}, run_dir=self.run_dir(run), launch_dir=launch, work_dir=launch / "work",
            run_name=run["run_name"], weblog_url="", env={"NXF_ANSI_LOG": "false"})
        try:
            proc = await nfhub_worker.launch(spec, argv)
        except nfhub_worker.LaunchError as exc:
            await self.finish(run_id, None, error=str(exc))
            return
        self.procs[run_id] = proc
        async with self.store.write() as db:
            await db.execute("UPDATE runs SET pid = ?, pid_start = ? WHERE id = ?", (proc.pid, proc.start_time, run_id))
        await self._supervise(run_id, proc)

    async def _supervise(self, run_id: int, proc: nfhub_worker.RunProcess) -> None:
        code = await proc.wait()
        await self.finish(run_id, code)

    # -- the end of a run
    async def finish(self, run_id: int, exit_code: int | None, *, error: str | None = None,
                     external: bool = False) -> None:
        """Set the final state from the exit code, the events and the files Nextflow left."""
        run = await self.store.one("SELECT * FROM runs WHERE id = ?", (run_id,))
        if run is None or run["status"] not in ACTIVE_STATES:
            return
        self.procs.pop(run_id, None)
        await self.flush()  # every event acknowledged so far is applied before the verdict
        run = await self.store.one("SELECT * FROM runs WHERE id = ?", (run_id,))
        if run is None:
            return
        run_dir = self.run_dir(run)
        launch = runs_dir(self.config, run["project_id"])
        trace = await anyio.to_thread.run_sync(nfhub_worker.parse_trace, run_dir / "trace.txt")
        history = await anyio.to_thread.run_sync(nfhub_worker.find_history, launch, run["run_name"])
        stats = json.loads(run["stats"]) if run["stats"] else {}
        if run["cancel_requested"]:
            status = "cancelled"
        elif exit_code is None and not external:
            # Not our child (adopted after a restart): judge from Nextflow's own records.
            if history and history["status"] in ("OK", "ERR"):
                status = "succeeded" if history["status"] == "OK" else "failed"
            elif stats.get("success") is not None:
                status = "succeeded" if stats["success"] else "failed"
            else:
                status = "lost" if error is None else "failed"
        elif exit_code == 0 or (external and exit_code is None and stats.get("success")):
            status = "succeeded"
        else:
            status = "failed"
        message = run["error_message"]
        if status == "failed" and not message:
            message = error or await anyio.to_thread.run_sync(nfhub_worker.console_tail, run_dir / "console.log")
            message = message or f"Nextflow exited with code {exit_code}"
        elif status == "lost":
            message = message or "nfhub lost track of this run (its process ended while nfhub was down)"
        session = run["session_id"] or (history or {}).get("session_id")
        async with self.store.write() as db:
            for task in trace:  # cached tasks send no events, and events sent while nfhub was down are lost
                await _upsert_task(db, run_id, task)
            cached = sum(1 for t in trace if t["status"] == "CACHED")
            await db.execute(
                "UPDATE runs SET status = ?, exit_code = ?, error_message = ?, finished_at = ?, session_id = ?,"
                " cached_processes = max(cached_processes, ?) WHERE id = ? AND status IN ('queued', 'starting',"
                " 'running')", (status, exit_code, message, now_iso(), session, cached, run_id))
        for key, ref in list(self.secrets.items()):
            if ref.run_id == run_id:
                del self.secrets[key]  # the secret dies with the run
        log.info("run %d ended %s (exit code %s)", run_id, status, exit_code)
        self.ended.setdefault(run_id, anyio.Event()).set()
        await self._publish_run(run_id)

    # -- cancel
    async def cancel_project(self, project_id: int) -> None:
        run = await self.store.one("SELECT * FROM runs WHERE project_id = ? AND status IN ('queued', 'starting',"
                                   " 'running') ORDER BY id DESC LIMIT 1", (project_id,))
        if run is None:
            return
        run_id = run["id"]
        async with self.store.write() as db:
            await db.execute("UPDATE runs SET cancel_requested = 1 WHERE id = ?", (run_id,))
        if self.dispatcher.drop(run_id) or run["status"] == "queued":
            await self.finish(run_id, None, external=True)
            return
        proc = self.procs.get(run_id)
        ended = self.ended.setdefault(run_id, anyio.Event())
        if proc is None:
            # Starting: launch is a moment away; the supervisor will see cancel_requested. Or nothing is left.
            with anyio.move_on_after(5):
                while run_id not in self.procs and not ended.is_set():
                    await anyio.sleep(0.02)
            proc = self.procs.get(run_id)
            if proc is None:
                if not ended.is_set():
                    await self.finish(run_id, None, external=True)
                return
        assert self.task_group is not None
        self.task_group.start_soon(nfhub_worker.terminate, proc, float(self.config.cancel_grace))
        with anyio.move_on_after(float(self.config.cancel_grace) + 15):
            await ended.wait()

    # -- weblog ingestion
    def run_for_secret(self, request: Request, project_id: int) -> RunRef | None:
        token = request.query_params.get("token")
        auth = request.headers.get("authorization", "")
        if not token and auth[:6].lower() == "basic ":
            try:
                token = base64.b64decode(auth[6:], validate=True).decode().partition(":")[2]
            except ValueError:
                token = None
        if not token or len(token) > 256:
            return None
        ref = self.secrets.get(secret_hash(token))  # a hash lookup: no timing leak on the secret itself
        if ref is None or ref.project_id != project_id:
            return None
        return ref

    async def ingest(self, request: Request, project_id: int) -> Response:
        ref = self.run_for_secret(request, project_id)
        if ref is None:
            raise APIError(401, "missing or wrong run secret")
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > MAX_WEBLOG_BYTES:
            raise APIError(413, f"event larger than {MAX_WEBLOG_BYTES} bytes")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_WEBLOG_BYTES:
                raise APIError(413, f"event larger than {MAX_WEBLOG_BYTES} bytes")
        try:
            event = json.loads(body)
        except (ValueError, RecursionError):
            raise APIError(400, "event is not valid JSON") from None
        if not isinstance(event, dict) or not isinstance(event.get("event"), str):
            raise APIError(400, "event must be a JSON object with an 'event' name")
        if event.get("runName") not in (None, ref.run_name):
            raise APIError(401, "event belongs to another run")
        self.seq += 1
        jid = f"{self.boot}-{self.seq}"
        now = time.time()
        header = f"{jid}\t{ref.run_id}\t{now}\t{len(body)}\n".encode()
        os.write(self.journal_fd, header + body + b"\n")  # durable against kill -9 once write(2) returns
        self.queue.append((jid, ref.run_id, event["event"][:64], event, body, now))
        self.wake.set()
        return Response(status_code=200)

    async def flush(self) -> None:
        target = self.seq
        while self.applied < target:
            await self.applied_event.wait()

    async def _applier(self) -> None:
        while True:
            await self.wake.wait()
            self.wake = anyio.Event()
            while self.queue:
                batch, self.queue = self.queue[:1000], self.queue[1000:]
                await self._apply_batch(batch)
                self.applied = max(self.applied, int(batch[-1][0].rsplit("-", 1)[1]))
                event, self.applied_event = self.applied_event, anyio.Event()
                event.set()
            if not self.queue and self.journal_fd >= 0:
                os.ftruncate(self.journal_fd, 0)  # everything in it is committed; no await since the check

    async def _apply_batch(self, batch: list[tuple[str, int, str, dict[str, Any], bytes, float]]) -> None:
        changed: dict[str, Any] = {"runs": set(), "tasks": {}}
        async with self.store.write() as db:
            run_ids = {item[1] for item in batch}
            marks = ", ".join("?" for _ in run_ids)
            async with db.execute(f"SELECT * FROM runs WHERE id IN ({marks})", tuple(run_ids)) as cur:
                runs = {r["id"]: r for r in await cur.fetchall()}
            for jid, run_id, kind, event, body, received in batch:
                if run_id not in runs:
                    continue
                cur = await db.execute("INSERT OR IGNORE INTO events (jid, run_id, event, body, received_at)"
                                       " VALUES (?, ?, ?, ?, ?)", (jid, run_id, kind, body.decode("utf-8", "replace"),
                                                                   received))
                if cur.rowcount:
                    await apply_event(db, runs[run_id], kind, event, changed)
        for run_id in changed["runs"] | set(changed["tasks"]):
            await self._publish_run(run_id, changed["tasks"].get(run_id))

    async def _replay_journal(self) -> None:
        """Events acknowledged before a crash but not yet applied are applied now (idempotent by jid)."""
        try:
            data = self.journal_path.read_bytes()
        except FileNotFoundError:
            return
        batch = []
        pos = 0
        while pos < len(data):
            end = data.find(b"\n", pos)
            if end < 0:
                break
            try:
                jid, run_id, received, length = data[pos:end].decode().split("\t")
                body = data[end + 1:end + 1 + int(length)]
                if len(body) < int(length):
                    break  # torn write at the very end: never acknowledged
                event = json.loads(body)
                batch.append((jid, int(run_id), str(event.get("event"))[:64], event, body, float(received)))
            except (ValueError, AttributeError):
                log.warning("weblog journal: skipping a damaged entry at byte %d", pos)
                break
            pos = end + 1 + int(length) + 1
        if batch:
            log.info("replaying %d weblog event(s) from the journal", len(batch))
            for i in range(0, len(batch), 1000):
                await self._apply_batch(batch[i:i + 1000])
        self.journal_path.unlink()

    # -- recovery after a restart
    async def _recover(self) -> None:
        rows = await self.store.all("SELECT * FROM runs WHERE status IN ('queued', 'starting', 'running')"
                                    " ORDER BY id")
        for run in rows:
            self.secrets[run["secret_hash"]] = RunRef(run["id"], run["project_id"], run["run_name"])
            self.ended[run["id"]] = anyio.Event()
            if run["status"] == "queued" or (run["status"] == "starting" and not run["pid"]):
                async with self.store.write() as db:
                    await db.execute("UPDATE runs SET status = 'queued' WHERE id = ?", (run["id"],))
                self.dispatcher.submit(run["id"])
                continue
            proc = nfhub_worker.adopt(run["pid"], run["pid_start"], run["run_name"]) if run["pid"] else None
            if proc is not None:
                log.info("run %d: adopted its running Nextflow (pid %d)", run["id"], proc.pid)
                self.procs[run["id"]] = proc
                assert self.task_group is not None
                self.task_group.start_soon(self._supervise, run["id"], proc)
            else:
                log.info("run %d: its Nextflow ended while nfhub was down; judging from its files", run["id"])
                await self.finish(run["id"], None)

    # -- publishing to event streams
    async def snapshot(self, project_id: int) -> dict[str, Any]:
        project = await self.store.one(PROJECT_SELECT.format(access="NULL") + " WHERE p.id = ?", (project_id,))
        run = None
        if project and project["run_id"]:
            row = await self.store.one("SELECT * FROM runs WHERE id = ?", (project["run_id"],))
            run = run_json(row, brief=True) if row else None
        return {"project": _progress(project) if project else None, "run": run}

    async def _publish_run(self, run_id: int, task_ids: set[int] | None = None) -> None:
        row = await self.store.one("SELECT * FROM runs WHERE id = ?", (run_id,))
        if row is None:
            return
        project_id = row["project_id"]
        if not self.broker.waiters.get(project_id) and project_id not in self.broker.buffers:
            return  # nobody has ever listened to this project: skip the work
        self.broker.publish(project_id, "run", run_json(row, brief=True))
        if task_ids:
            marks = ", ".join("?" for _ in task_ids)
            tasks = await self.store.all(f"SELECT * FROM tasks WHERE run_id = ? AND task_id IN ({marks})",
                                         (run_id, *task_ids))
            for task in tasks:
                self.broker.publish(project_id, "task", {"run_id": run_id, **task_json(task)})

    # -- hygiene
    async def work_size(self, run: dict[str, Any]) -> int:
        rows = await self.store.all("SELECT workdir FROM tasks WHERE run_id = ? AND workdir IS NOT NULL", (run["id"],))
        work = runs_dir(self.config, run["project_id"]) / "work"

        def size() -> int:
            total = 0
            for r in rows:
                path = Path(r["workdir"])
                if path.is_dir() and _inside(path, work):
                    total += nfhub_worker.work_dir_size(path)
            return total

        return await anyio.to_thread.run_sync(size)

    async def clean(self, run: dict[str, Any]) -> int:
        rows = await self.store.all("SELECT workdir FROM tasks WHERE run_id = ? AND workdir IS NOT NULL", (run["id"],))
        work = runs_dir(self.config, run["project_id"]) / "work"
        keep = [project_dir(self.config, run["project_id"])]
        return await anyio.to_thread.run_sync(nfhub_worker.clean_work_dir, work, [r["workdir"] for r in rows], keep)


def _inside(path: Path, root: Path) -> bool:
    try:
        return os.path.commonpath([os.path.realpath(path), os.path.realpath(root)]) == os.path.realpath(root)
    except ValueError:
        return False


def _progress(project: dict[str, Any]) -> dict[str, Any]:
    return {"id": project["id"], "submitted_processes": project["submitted_processes"],
            "completed_processes": project["completed_processes"],
            "is_scheduled": project["run_status"] in ACTIVE_STATES, "status": project["run_status"],
            "run_id": project["run_id"]}


# ---- Handlers: pipeline catalog -------------------------------------------------------------------------------


def _pipeline(request: Request) -> nfhub_catalog.Pipeline:
    pipeline = request.app.state.catalog.get(request.path_params["name"])
    if pipeline is None:
        raise APIError(404, "nextflow project not found")
    return pipeline


async def pipelines_list(request: Request) -> Response:
    await authenticate(request)
    return JSONResponse({"nextflow_projects": list(request.app.state.catalog)})


async def pipelines_get(request: Request) -> Response:
    await authenticate(request)
    return JSONResponse({"nextflow_project": _pipeline(request).summary()})


async def pipelines_arguments(request: Request) -> Response:
    await authenticate(request)
    return JSONResponse({"arguments": _pipeline(request).arguments})


# ---- OpenAPI -----------------------------------------------------------------------------------------------------

_ERROR_SCHEMA = {"type": "object", "required": ["error"],
                 "properties": {"error": {"type": "string"}, "details": {"type": "object"}}}
_PROJECT_SCHEMA = {
    "type": "object",
    "required": ["id", "name", "workflow_arguments", "nextflow_project", "submitted_processes",
                 "completed_processes", "is_scheduled"],
    "properties": {
        "id": {"type": "integer"}, "name": {"type": "string"}, "workflow_arguments": {"type": "object"},
        "nextflow_project": {"type": ["string", "null"]}, "submitted_processes": {"type": "integer"},
        "completed_processes": {"type": "integer"}, "is_scheduled": {"type": "boolean"},
        "status": {"type": ["string", "null"], "enum": [*RUN_STATES, None]},
        "run_id": {"type": ["integer", "null"]}, "owner": {"type": "string"},
        "access": {"type": "string", "enum": ["owner", "write", "read", "admin"]},
        "created_at": {"type": "string"}, "updated_at": {"type": "string"},
    },
}


def _op(summary: str, *, auth: bool = True, body: dict | None = None, response: dict | None = None,
        errors: tuple[int, ...] = (), params: list[dict] | None = None, content_type: str = "application/json",
        status: str = "200") -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {
        status: {"description": "OK", **({"content": {content_type: {"schema": response}}} if response else {})}}}
    if auth:
        op["security"] = [{"token": []}]
        errors = (401, *errors)
    for code in sorted(set(errors)):
        op["responses"][str(code)] = {"description": "error",
                                      "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    if params:
        op["parameters"] = params
    return op


_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}
_PROJECT_OUT = {"type": "object", "properties": {"project": {"$ref": "#/components/schemas/Project"}}}


def openapi_document(config: Config) -> dict[str, Any]:
    """An OpenAPI 3 description of every endpoint; kept beside the routes so they change together."""
    paths: dict[str, Any] = {
        "/api/health": {"get": _op("Liveness and version", auth=False,
                                   response={"type": "object", "properties": {"status": {"type": "string"},
                                                                              "version": {"type": "string"}}})},
        "/api/openapi.json": {"get": _op("This document", auth=False, response={"type": "object"})},
        "/api/projects": {"get": _op("List the projects you own, share or (admins) all", response={
            "type": "object", "properties": {"projects": {"type": "array",
                                                          "items": {"$ref": "#/components/schemas/Project"}}}})},
        "/api/projects/count": {"get": _op("Count your projects", response={
            "type": "object", "properties": {"count": {"type": "integer"}}})},
        "/api/projects/create": {"post": _op("Create a project", body={
            "type": "object", "required": ["name"], "properties": {"name": {"type": "string", "maxLength": 200}}},
            response=_PROJECT_OUT, errors=(400, 413, 422))},
        "/api/projects/{id}": {"get": _op("Get a project", params=[_ID], response=_PROJECT_OUT, errors=(404,))},
        "/api/projects/{id}/update": {"post": _op(
            "Change name, pipeline or arguments (nextflow_argumenty is accepted as an alias of workflow_arguments)",
            params=[_ID], body={"type": "object", "properties": {
                "name": {"type": "string"}, "nextflow_project": {"type": ["string", "null"]},
                "workflow_arguments": {"type": "object"}, "nextflow_argumenty": {"type": "object"}}},
            response={"type": "object"}, errors=(400, 403, 404, 409, 422))},
        "/api/projects/{id}/delete": {"post": _op("Delete a project and its files", params=[_ID],
                                                  response={"type": "object"}, errors=(403, 404, 409))},
    }
    import nfhub_auth

    paths.update(nfhub_auth.openapi_paths())
    return {
        "openapi": "3.1.0",
        "info": {"title": "nfhub", "version": VERSION,
                 "description": "Run Nextflow pipelines from the browser. Authenticate with the x-access-token "
                                "header (a JWT from a login or `nfhub token`)."},
        "servers": [{"url": config.base_url}],
        "paths": paths,
        "components": {
            "securitySchemes": {"token": {"type": "apiKey", "in": "header", "name": "x-access-token"}},
            "schemas": {"Error": _ERROR_SCHEMA, "Project": _PROJECT_SCHEMA},
        },
    }


# ---- App assembly ------------------------------------------------------------------------------------------------


class SecurityHeaders:
    """Adds protective headers to every response (pure ASGI: no per-request task like BaseHTTPMiddleware)."""

    # Same-origin framing only: the page shows HTML reports in a sandboxed iframe of its own.
    HEADERS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
               (b"x-frame-options", b"SAMEORIGIN")]

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                headers.extend(h for h in self.HEADERS if h[0] not in present)
                if b"content-security-policy" not in present:
                    headers.append((b"content-security-policy", b"frame-ancestors 'self'"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


def load_catalog_for(config: Config) -> dict[str, nfhub_catalog.Pipeline]:
    """The validated pipeline catalog; a problem stops startup with a message naming pipeline and argument."""
    try:
        return nfhub_catalog.load_catalog(config.pipelines)
    except nfhub_catalog.CatalogError as exc:
        raise StartupError(f"pipeline catalog {config.pipelines}: {exc}") from None


async def ensure_first_user(store: Store) -> dict[str, Any]:
    """The first start creates the local admin account, like a fresh Jupyter server; returns the first admin."""
    user = await store.one("SELECT * FROM users WHERE is_admin = 1 ORDER BY id LIMIT 1")
    if user is None and await store.one("SELECT id FROM users LIMIT 1") is None:
        name = re.sub(r"[^A-Za-z0-9_.-]", "", os.environ.get("USER", "")) or "admin"
        await create_user(store, name, is_admin=True)
        user = await store.one("SELECT * FROM users WHERE name = ?", (name,))
    return user or {}


def create_app(config: Config) -> Starlette:
    """Build the nfhub application for this configuration. Nothing starts until the ASGI lifespan runs."""
    import nfhub_auth  # a sibling that uses this module's storage and errors; imported here to avoid a cycle

    catalog = load_catalog_for(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        data = config.data_path
        for sub in ("projects", "runs", "uploads"):
            (data / sub).mkdir(parents=True, exist_ok=True)
        store = Store(data / "nfhub.sqlite")
        await store.open()
        app.state.store = store
        app.state.tokens = Tokens(load_secret_key(config), config.token_seconds, config.max_token_seconds)
        await load_revocations(store, app.state.tokens)
        app.state.first_admin = await ensure_first_user(store)
        await nfhub_auth.startup(app, config)
        if getattr(app.state, "announce_login", False) and app.state.first_admin:
            admin = app.state.first_admin
            token, _ = app.state.tokens.issue(admin["id"])
            # Printed to the terminal (like Jupyter), never to the log.
            print(f"\n  Open this URL to log in as '{admin['name']}':\n    {_login_url(config, token)}\n",
                  file=sys.stderr, flush=True)
        trash = data / "trash"
        if trash.exists():  # deletions interrupted by a crash
            await anyio.to_thread.run_sync(_remove_tree, trash)
        for staging in (data / "uploads").iterdir():  # resumable uploads abandoned long ago
            await anyio.to_thread.run_sync(nfhub_files.sweep_staging, staging)
        runs = RunManager(config, store, app.state.catalog)
        app.state.runs = runs
        try:
            async with anyio.create_task_group() as tg:
                app.state.task_group = tg
                await runs.start(tg)
                yield
                # Running pipelines are left running: the next start adopts them.
                tg.cancel_scope.cancel()
        finally:
            runs.close()
            await store.close()

    routes = [
        Route("/", page, methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC_DIR, check_dir=False), name="static"),
        Route("/api/health", health, methods=["GET"]),
        Route("/api/openapi.json", openapi, methods=["GET"]),
        Route("/api/projects", projects_list, methods=["GET"]),
        Route("/api/projects/count", projects_count, methods=["GET"]),
        Route("/api/projects/create", projects_create, methods=["POST"]),
        Route("/api/projects/{id:int}", projects_get, methods=["GET"]),
        Route("/api/projects/{id:int}/update", projects_update, methods=["POST"]),
        Route("/api/projects/{id:int}/delete", projects_delete, methods=["POST"]),
        Route("/api/projects/{id:int}/files", _files_handler(nfhub_files.list_files, "read"), methods=["GET"]),
        Route("/api/projects/{id:int}/download", _files_handler(nfhub_files.download, "read"), methods=["GET"]),
        Route("/api/projects/{id:int}/upload-file", _files_handler(nfhub_files.upload_file, "write"),
              methods=["POST"]),
        Route("/api/projects/{id:int}/upload-status", _files_handler(nfhub_files.upload_status, "write"),
              methods=["GET"]),
        Route("/api/projects/{id:int}/delete-path", _files_handler(nfhub_files.delete_path, "write"),
              methods=["POST"]),
        Route("/api/projects/{id:int}/create-folder", _files_handler(nfhub_files.create_folder, "write"),
              methods=["POST"]),
        Route("/api/projects/{id:int}/schedule", schedule, methods=["POST"]),
        Route("/api/projects/{id:int}/cancel", cancel, methods=["POST"]),
        Route("/api/projects/{id:int}/nextflow-log", nextflow_log, methods=["POST"]),
        Route("/api/projects/{id:int}/finished", finished, methods=["POST"]),
        Route("/api/projects/{id:int}/events", project_events, methods=["GET"]),
        Route("/api/projects/{id:int}/runs", runs_list, methods=["GET"]),
        Route("/api/projects/{id:int}/runs/{run_id:int}", runs_get, methods=["GET"]),
        Route("/api/projects/{id:int}/runs/{run_id:int}/tasks", runs_tasks, methods=["GET"]),
        Route("/api/projects/{id:int}/runs/{run_id:int}/log", runs_log, methods=["GET"]),
        Route("/api/projects/{id:int}/runs/{run_id:int}/clean", runs_clean, methods=["POST"]),
        Route("/api/nextflow-projects", pipelines_list, methods=["GET"]),
        Route("/api/nextflow-projects/{name}", pipelines_get, methods=["GET"]),
        Route("/api/nextflow-projects/{name}/arguments", pipelines_arguments, methods=["GET"]),
        *nfhub_auth.routes(),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=_error_classes())
    app.state.config = config
    app.state.catalog = catalog
    app.add_middleware(SecurityHeaders)
    return app


# ---- CLI ---------------------------------------------------------------------------------------------------------


def _open_sync(config: Config) -> sqlite3.Connection:
    path = config.data_path / "nfhub.sqlite"
    migrate(path)
    conn = sqlite3.connect(path, isolation_level=None, timeout=5)
    _pragmas(conn)
    conn.row_factory = sqlite3.Row
    return conn


def _login_url(config: Config, token: str) -> str:
    return f"{config.base_url}/?token={token}"


def _print_banner(config: Config, app: Starlette) -> None:
    import shutil

    exe = shutil.which(config.nextflow) if os.sep not in config.nextflow else (
        config.nextflow if os.access(config.nextflow, os.X_OK) else None)
    print(f"nfhub {VERSION} serving on {config.base_url}", file=sys.stderr)
    print(f"  data: {config.data_path}   pipelines: {Path(config.pipelines).resolve()}", file=sys.stderr)
    if exe:
        print(f"  nextflow: {exe}", file=sys.stderr)
    else:
        print(f"  WARNING: no Nextflow executable '{config.nextflow}' found: runs will fail until it is installed.\n"
              "  Install it with:  curl -s https://get.nextflow.io | bash && mv nextflow ~/.local/bin/  (needs Java 17+)\n"
              "  or point the 'nextflow' setting (NFHUB_NEXTFLOW) at it.", file=sys.stderr)


def cmd_serve(args: argparse.Namespace, config: Config) -> int:
    import uvicorn

    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(config)
    _print_banner(config, app)

    app.state.announce_login = True
    uvicorn.run(app, host=config.host, port=config.port, log_level=config.log_level, access_log=False,
                timeout_graceful_shutdown=5)
    return 0


def cmd_user_add(args: argparse.Namespace, config: Config) -> int:
    import getpass

    try:
        name = _check_name(args.name)
    except APIError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    password = None
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif sys.stdin.isatty():
        password = getpass.getpass(f"Password for {name} (empty: token login only): ")
        if password and getpass.getpass("Repeat: ") != password:
            print("error: the passwords differ", file=sys.stderr)
            return 2
    if password is not None and password and len(password) < 8:
        print("error: a password needs at least 8 characters", file=sys.stderr)
        return 2
    conn = _open_sync(config)
    try:
        conn.execute("INSERT INTO users (name, password_hash, is_admin, created_at) VALUES (?, ?, ?, ?)",
                     (name, hash_password(password) if password else None, int(args.admin), now_iso()))
    except sqlite3.IntegrityError:
        print(f"error: a user named '{name}' already exists", file=sys.stderr)
        return 1
    finally:
        conn.close()
    print(f"created user '{name}'" + (" (admin)" if args.admin else ""))
    return 0


def cmd_token(args: argparse.Namespace, config: Config) -> int:
    conn = _open_sync(config)
    try:
        row = conn.execute("SELECT id FROM users WHERE name = ?", (args.name,)).fetchone()
    finally:
        conn.close()
    if row is None:
        print(f"error: no user named '{args.name}' (create one with: nfhub user add {args.name})", file=sys.stderr)
        return 1
    lifetime = parse_duration(args.lifetime, "--lifetime") if args.lifetime else config.token_seconds
    if lifetime > max(config.token_seconds, config.max_token_seconds):
        print("error: --lifetime is longer than max_token_lifetime", file=sys.stderr)
        return 2
    tokens = Tokens(load_secret_key(config), config.token_seconds, config.max_token_seconds)
    token, _ = tokens.issue(row["id"], lifetime)
    print(token)
    return 0


def cmd_check(args: argparse.Namespace, config: Config) -> int:
    import shutil
    import subprocess

    problems = 0
    print("settings:")
    for key, value in redacted(config).items():
        print(f"  {key}: {json.dumps(value)}")
    try:
        catalog = load_catalog_for(config)
        print(f"catalog {config.pipelines}: {len(catalog)} pipeline(s): {', '.join(catalog)}")
    except StartupError as exc:
        print(f"catalog: ERROR {exc}")
        problems += 1
    exe = shutil.which(config.nextflow)
    if not exe:
        print(f"nextflow: ERROR '{config.nextflow}' not found; install Nextflow or set the 'nextflow' setting")
        problems += 1
    else:
        try:
            out = subprocess.run([exe, "-v"], capture_output=True, text=True, timeout=60).stdout.strip()
        except (OSError, subprocess.TimeoutExpired) as exc:
            out = f"(could not run it: {exc})"
            problems += 1
        print(f"nextflow: {exe}: {out}")
    return 1 if problems else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nfhub", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Settings (YAML file, or environment NFHUB_<NAME>):\n" + "\n".join(
                                         f"  {k:<20} {s.help}" for k, s in SETTINGS.items()))
    parser.add_argument("--config", help="YAML settings file (default: $NFHUB_CONFIG)")
    parser.add_argument("--version", action="version", version=f"nfhub {VERSION}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="start the web service")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8000)")
    serve.add_argument("--config", dest="config_sub", help="YAML settings file")
    user = sub.add_parser("user", help="manage local accounts")
    user_sub = user.add_subparsers(dest="user_command", required=True)
    add = user_sub.add_parser("add", help="create a local account")
    add.add_argument("name")
    add.add_argument("--admin", action="store_true", help="give the account admin rights")
    add.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    add.add_argument("--config", dest="config_sub", help="YAML settings file")
    token = sub.add_parser("token", help="print an access token (JWT) for an existing user")
    token.add_argument("name")
    token.add_argument("--lifetime", help="e.g. 30m, 12h, 7d (default: token_lifetime)")
    token.add_argument("--config", dest="config_sub", help="YAML settings file")
    check = sub.add_parser("check", help="validate settings and catalog, report the Nextflow executable")
    check.add_argument("--config", dest="config_sub", help="YAML settings file")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {"host": getattr(args, "host", None), "port": getattr(args, "port", None)}
    try:
        config = load_config(getattr(args, "config_sub", None) or args.config, overrides)
        if args.command == "serve":
            return cmd_serve(args, config)
        if args.command == "user":
            return cmd_user_add(args, config)
        if args.command == "token":
            return cmd_token(args, config)
        return cmd_check(args, config)
    except StartupError as exc:
        print(f"nfhub: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    # Run through the importable module, so that sibling modules importing `nfhub` share its classes.
    import nfhub

    sys.exit(nfhub.main())
