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
import posixpath
import re
import secrets
import sqlite3
import sys
import time
import urllib.parse
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
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import nfhub_catalog
import nfhub_files
from nfhub_store import (  # noqa: F401  (re-exported: nfhub.Store, nfhub.migrate, ... are used across modules)
    MIGRATIONS,
    QUICK_READ_STEPS,
    USER_CACHE_SECONDS,
    StartupError,
    Store,
    _pragmas,
    _row_dict,
    migrate,
    now_iso,
)

VERSION = "0.1.0"
log = logging.getLogger("nfhub")

# ---- Constants ---------------------------------------------------------------------------------------------------

RUN_STATES = ("queued", "starting", "running", "succeeded", "failed", "cancelled", "lost")
ACTIVE_STATES = ("queued", "starting", "running")
ACTIVE_SQL = f"status IN {ACTIVE_STATES!r}"  # the same, as an SQL condition on runs
MAX_JSON_BYTES = 1 << 20
MAX_WEBLOG_BYTES = 4 << 20  # a `started` event carries all params: tens of KB, rarely more
MAX_NAME_LENGTH = 200
MAX_SQLITE_INT = 2**63 - 1
JWT_ALGORITHM = "HS256"
JWT_ISSUER = "nfhub"
JWT_LEEWAY = 30


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
    "weblog_url": Setting(str, "", "base URL Nextflow posts weblog events to (default http://<host>:<port>)"),
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


async def read_body(request: Request, limit: int, what: str = "request body") -> bytes:
    """The whole body, refused with 413 as soon as it is known to exceed `limit` bytes."""
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise APIError(413, f"{what} larger than {limit} bytes")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise APIError(413, f"{what} larger than {limit} bytes")
    return body


async def read_json(request: Request) -> dict[str, Any]:
    body = await read_body(request, MAX_JSON_BYTES)
    if not body.strip():
        return {}
    try:
        data = json.loads(body)
        # JSON allows lone UTF-16 surrogates ("\ud800") that no UTF-8 text (a file name, the database) can hold.
        json.dumps(data, ensure_ascii=False).encode()
    except (ValueError, RecursionError):
        raise APIError(400, "request body is not valid JSON (or not valid Unicode)") from None
    if not isinstance(data, dict):
        raise APIError(400, "request body must be a JSON object")
    return data


# ---- Storage (the rest is nfhub_store.py) ---------------------------------------------------------------------------


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
        self._verified: dict[str, dict[str, Any]] = {}  # token -> its checked claims (verifying costs ~50 us)

    def issue(self, user_id: int, lifetime: int | None = None, kind: str = "session") -> tuple[str, dict[str, Any]]:
        now = int(time.time())
        claims = {"sub": str(user_id), "iat": now, "exp": now + (lifetime or self.lifetime),
                  "jti": uuid.uuid4().hex, "iss": JWT_ISSUER, "kind": kind}
        return jwt.encode(claims, self.key, algorithm=JWT_ALGORITHM), claims

    def decode(self, token: str) -> dict[str, Any]:
        cached = self._verified.get(token)
        if cached is not None:
            # The signature and claims of this exact string were checked before; expiry and revocation can change.
            if cached["exp"] + JWT_LEEWAY < time.time():
                del self._verified[token]
                raise APIError(401, "invalid token: Signature has expired")
            if cached["jti"] in self.revoked:
                raise APIError(401, "token has been revoked")
            return cached
        claims = self._verify(token)
        if len(self._verified) >= 4096:
            self._verified.clear()  # a simple bound; the next requests re-verify
        self._verified[token] = claims
        return claims

    def _verify(self, token: str) -> dict[str, Any]:
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
        claims["iat"], claims["exp"] = iat, exp
        return claims

    def prune(self) -> None:
        now = time.time()
        # Tokens are accepted until exp + leeway, so their revocation must be kept as long.
        for jti in [j for j, exp in self.revoked.items() if exp + JWT_LEEWAY < now]:
            del self.revoked[jti]


async def load_revocations(store: Store, tokens: Tokens) -> None:
    rows = await store.all("SELECT jti, expires_at FROM tokens WHERE revoked_at IS NOT NULL AND expires_at > ?",
                           (int(time.time()) - JWT_LEEWAY,))
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
    user = await _login_user(state, user_id, int(claims["iat"]))
    if user is None:
        raise APIError(401, "token has been revoked, or its user is unknown or disabled")
    user["claims"] = claims
    return user


async def _login_user(state: Any, user_id: int, iat: int) -> dict[str, Any] | None:
    """The user a login issued at `iat` still stands for, or None: gone, disabled, or logged out everywhere since."""
    user = await state.store.user(user_id)
    if user is None or user["disabled"] or iat < user["tokens_valid_after"]:
        return None
    user["is_admin"] = is_admin(state.config, user)
    return user


def is_admin(config: Config, user: dict[str, Any]) -> bool:
    return bool(user["is_admin"]) or user["name"] in config.admins or (
        bool(user["email"]) and user["email"] in config.admins)


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
    user, row = await project_access(request, "write")
    state = request.app.state
    project_id = row["id"]
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
    user, row = await project_access(request)
    state = request.app.state
    project_id = row["id"]
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
    state.runs.broker.buffers.pop(project_id, None)  # nobody may replay its events any more
    return JSONResponse({})


async def _active_run(db: aiosqlite.Connection, project_id: int) -> bool:
    async with db.execute(f"SELECT 1 FROM runs WHERE project_id = ? AND {ACTIVE_SQL} LIMIT 1", (project_id,)) as cur:
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


def _stream_token(request: Request) -> str | None:
    """GETs a browser cannot decorate with headers (downloads, event streams, logs) may carry ?token=."""
    if request.method == "GET" and request.url.path.endswith(("/log", "/events", "/download")):
        return request.headers.get("x-access-token") or request.query_params.get("token")
    return None


async def project_access(request: Request, need: str = "read") -> tuple[dict[str, Any], dict[str, Any]]:
    """The user behind the request and the project of its path, which they may `need` (401, 404 or 403 otherwise):
    the opening of every project handler."""
    user = await authenticate(request, _stream_token(request))
    return user, await get_project(request.app.state.store, user, _project_id(request), need)


# ---- Handlers: project files -------------------------------------------------------------------------------------


def files_context(config: Config, project_id: int) -> nfhub_files.ProjectFiles:
    return nfhub_files.ProjectFiles(root=project_dir(config, project_id).resolve(),
                                    link_roots=(runs_dir(config, project_id).resolve(),),
                                    staging=uploads_dir(config, project_id).resolve(),
                                    max_upload_bytes=config.max_upload_bytes)


def _files_handler(handler: Callable, need: str) -> Callable:
    async def endpoint(request: Request) -> Response:
        user, project = await project_access(request, need)
        state = request.app.state
        project_id = project["id"]
        ctx = files_context(state.config, project_id)
        ctx.root.mkdir(parents=True, exist_ok=True)
        return await handler(ctx, request)

    endpoint.__name__ = handler.__name__
    return endpoint


VIEW_LIFETIME = 1800  # seconds a report view link works


def _view_ticket(key: bytes, user_id: int, project_id: int, folder: str, exp: int, jti: str, iat: int) -> str:
    payload = base64.urlsafe_b64encode(json.dumps([user_id, project_id, folder, exp, jti, iat]).encode()).rstrip(b"=")
    sig = hmac.new(key + b"/view", payload, hashlib.sha256).digest()[:18]
    return payload.decode() + "." + base64.urlsafe_b64encode(sig).decode()


def _read_view_ticket(key: bytes, ticket: str) -> tuple[int, int, str, int, str, int] | None:
    payload, _, sig = ticket.partition(".")
    expected = base64.urlsafe_b64encode(hmac.new(key + b"/view", payload.encode(), hashlib.sha256).digest()[:18])
    if not hmac.compare_digest(expected, sig.encode()):
        return None
    try:
        user_id, project_id, folder, exp, jti, iat = json.loads(
            base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, TypeError):
        return None
    return int(user_id), int(project_id), str(folder), int(exp), str(jti), int(iat)


async def view_link(request: Request) -> Response:
    """A short-lived URL that shows one file (and its folder's files, for a report's images) inline in the page."""
    user, project = await project_access(request)
    state = request.app.state
    project_id = project["id"]
    data = await read_json(request)
    rel = data.get("path")
    if not isinstance(rel, str) or not rel:
        raise APIError(422, "path is required", {"path": "required"})
    real = nfhub_files.resolve_path(files_context(state.config, project_id), rel, must_exist=True, allow_root=False)
    if not real.is_file():
        raise APIError(422, "only files can be viewed", {"path": "not a file"})
    folder = rel.strip("/").rpartition("/")[0]
    exp = int(time.time()) + VIEW_LIFETIME
    claims = user["claims"]
    ticket = _view_ticket(state.tokens.key, user["id"], project_id, folder, exp, claims["jti"], int(claims["iat"]))
    quoted = "/".join(urllib.parse.quote(part) for part in rel.strip("/").split("/"))
    return JSONResponse({"url": f"/api/projects/{project_id}/view/{ticket}/{quoted}",
                         "expires_at": datetime.fromtimestamp(exp, UTC).isoformat().replace("+00:00", "Z")})


async def view_file(request: Request) -> Response:
    state = request.app.state
    project_id = _project_id(request)
    found = _read_view_ticket(state.tokens.key, request.path_params["ticket"])
    if found is None or found[1] != project_id or found[3] < time.time():
        raise APIError(404, "this view link is unknown or has expired")
    user_id, _, folder, _, jti, iat = found
    # Lexically normalised first, so that 'folder/../elsewhere' cannot leave the ticket's folder; the files' path
    # function then applies every other rule (symlinks included). Only the folder's own files, not sub-folders.
    rel = posixpath.normpath(request.path_params["path"])
    if rel.startswith(("/", "../")) or rel in ("..", ".") or posixpath.dirname(rel) != folder:
        raise APIError(404, "not found")
    user = None if jti in state.tokens.revoked else await _login_user(state, user_id, iat)
    if user is None:
        raise APIError(404, "this view link is unknown or has expired")  # the login it came from has ended
    await get_project(state.store, user, project_id)  # access may have been withdrawn since
    return await nfhub_files.view(files_context(state.config, project_id), rel, request)


def check_values(state: Any, project_id: int, pipeline_name: str, values: dict, *, complete: bool) -> None:
    """Validate workflow arguments against the catalog; paths go through the files' one path function."""
    ctx = files_context(state.config, project_id)
    try:
        nfhub_catalog.check_arguments(state.catalog[pipeline_name], values,
                                      lambda rel: nfhub_files.resolve_path(ctx, rel), complete=complete)
    except nfhub_catalog.ArgumentsError as exc:
        raise APIError(422, exc.message, exc.details) from None


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


_EMPTY_STRING = {"type": "string", "enum": [""]}
_PATH_BODY = {"type": "object", "required": ["path"], "properties": {"path": {"type": "string"}}}


def _query(name: str, kind: str = "string", required: bool = False, description: str = "") -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "schema": {"type": kind},
            **({"description": description} if description else {})}


def _files_openapi() -> dict[str, Any]:
    entry = {"type": "object", "properties": {"name": {"type": "string"}, "type": {"enum": ["file", "folder"]},
                                              "size": {"type": ["integer", "null"]}, "modified": {"type": "string"}}}
    upload_body = {"multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary"}, "directory": {"type": "string"},
        "offset": {"type": "integer", "description": "resumable upload: where this slice starts"},
        "total": {"type": "integer", "description": "resumable upload: size of the whole file"}}}}}
    upload = _op("Upload a file (streamed; or one slice of a resumable upload, see the README)", params=[_ID],
                 response={"type": "object", "properties": {
                     "directory": {"type": "string"}, "file": {"type": "string"}, "received": {"type": "integer"},
                     "total": {"type": "integer"}, "complete": {"type": "boolean"}}},
                 errors=(400, 403, 404, 409, 413, 422, 507))
    upload["requestBody"] = {"required": True, "content": upload_body}
    download = _op("Download a file (Range supported) or a folder as a zip; a browser may pass ?token=",
                   params=[_ID, _query("path", required=True), _query("token")], errors=(400, 404, 416))
    download["responses"]["200"] = {"description": "the file, or <folder>.zip",
                                    "content": {"application/octet-stream": {"schema": {"type": "string",
                                                                                        "format": "binary"}}}}
    download["responses"]["206"] = {"description": "a byte range of the file"}
    return {
        "/api/projects/{id}/files": {"get": _op(
            "List one folder of the project", params=[_ID, _query("dir", description="folder (default: root)")],
            response={"type": "object", "properties": {
                "folders": {"type": "array", "items": {"type": "string"}},
                "files": {"type": "array", "items": {"type": "string"}},
                "entries": {"type": "array", "items": entry}}}, errors=(400, 404))},
        "/api/projects/{id}/upload-file": {"post": upload},
        "/api/projects/{id}/upload-status": {"get": _op(
            "Bytes received so far of a pending resumable upload", params=[_ID, _query("path", required=True),
                                                                            _query("total", "integer")],
            response={"type": "object", "properties": {"received": {"type": "integer"},
                                                       "total": {"type": ["integer", "null"]}}},
            errors=(400, 403, 404))},
        "/api/projects/{id}/delete-path": {"post": _op(
            "Delete a file or a folder with its contents", params=[_ID], body=_PATH_BODY, response=_EMPTY_STRING,
            errors=(400, 403, 404))},
        "/api/projects/{id}/create-folder": {"post": _op(
            "Create a folder (parents included)", params=[_ID], body=_PATH_BODY, response=_EMPTY_STRING,
            errors=(400, 403, 404, 409))},
        "/api/projects/{id}/download": {"get": download},
        "/api/projects/{id}/view-link": {"post": _op(
            "A short-lived URL showing a file inline (HTML reports with their scripts, sandboxed; the file's folder "
            "is readable through it too, for the report's images)", params=[_ID], body=_PATH_BODY,
            response={"type": "object", "properties": {"url": {"type": "string"}, "expires_at": {"type": "string"}}},
            errors=(400, 404, 422))},
        "/api/projects/{id}/view/{ticket}/{path}": {"get": _op(
            "A file shown inline through a view link (no token: the ticket is the credential)", auth=False,
            params=[_ID, {"name": "ticket", "in": "path", "required": True, "schema": {"type": "string"}},
                    {"name": "path", "in": "path", "required": True, "schema": {"type": "string"}}],
            errors=(400, 404))},
    }


def _catalog_openapi() -> dict[str, Any]:
    name = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
    return {
        "/api/nextflow-projects": {"get": _op("Pipelines in the catalog", response={
            "type": "object", "properties": {"nextflow_projects": {"type": "array", "items": {"type": "string"}}}})},
        "/api/nextflow-projects/{name}": {"get": _op(
            "A pipeline's description and source", params=[name], response={
                "type": "object", "properties": {"nextflow_project": {"type": "object"}}}, errors=(404,))},
        "/api/nextflow-projects/{name}/arguments": {"get": _op(
            "The pipeline's argument definitions in display order", params=[name], response={
                "type": "object", "properties": {"arguments": {"type": "object"}}}, errors=(404,))},
    }


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
    paths.update(_files_openapi())
    paths.update(_catalog_openapi())
    import nfhub_auth
    import nfhub_runs

    paths.update(nfhub_runs.openapi_paths())
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


class FrontDoor:
    """Outermost pure-ASGI layer (no per-request task like BaseHTTPMiddleware): adds protective headers to every
    response, and takes Nextflow's weblog POSTs straight to the run manager. Nextflow waits for each answer, so that
    lane skips routing and the other layers; a GET there, and every other path, goes through the normal routes."""

    # Same-origin framing only: the page shows HTML reports in a sandboxed iframe of its own.
    HEADERS = ((b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
               (b"x-frame-options", b"SAMEORIGIN"), (b"content-security-policy", b"frame-ancestors 'self'"))
    NAMES = frozenset(name for name, _ in HEADERS)
    WEBLOG = re.compile(r"/api/projects/(\d{1,18})/nextflow-log")

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = message.get("headers") or []
                present = [name for name, _ in headers if name in self.NAMES]
                message["headers"] = [*headers, *(h for h in self.HEADERS if h[0] not in present)]
            await send(message)

        if scope["method"] == "POST" and (match := self.WEBLOG.fullmatch(scope["path"])):
            # (under `nfhub serve`, uvicorn's protocol answers these itself: nfhub_runs.weblog_protocol)
            scope["path_params"] = {"id": int(match[1])}
            try:
                await scope["app"].state.runs.ingest(scope, receive, send_with_headers)
            except APIError as exc:
                await error_response(exc.status, exc.message, exc.details)(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)


def load_catalog_for(config: Config) -> dict[str, nfhub_catalog.Pipeline]:
    """The validated pipeline catalog; a problem stops startup with a message naming pipeline and argument."""
    try:
        return nfhub_catalog.load_catalog(config.pipelines)
    except nfhub_catalog.CatalogError as exc:
        raise StartupError(f"pipeline catalog {config.pipelines}: {exc}") from None


CATALOG_POLL = 2.0  # seconds between looks at the catalog file for changes


async def watch_catalog(config: Config, catalog: dict[str, nfhub_catalog.Pipeline]) -> None:
    """Reload the catalog when its file changes, in place (every holder of the dict sees the new one). A catalog that
    does not validate is refused with the same messages as at startup, and the one in use stays."""
    path = Path(config.pipelines)

    def stamp() -> tuple[int, int] | None:
        try:
            st = path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    seen = stamp()
    while True:
        await anyio.sleep(CATALOG_POLL)
        now = stamp()
        if now == seen or now is None:
            continue
        seen = now
        try:
            fresh = await anyio.to_thread.run_sync(nfhub_catalog.load_catalog, path)
        except (nfhub_catalog.CatalogError, OSError) as exc:
            log.error("pipeline catalog %s not reloaded, the previous one stays in use: %s", path, exc)
            continue
        except Exception:  # a bug must not take the server down with it
            log.exception("pipeline catalog %s not reloaded, the previous one stays in use", path)
            continue
        catalog.clear()
        catalog.update(fresh)
        log.warning("pipeline catalog %s reloaded: %d pipeline(s)", path, len(fresh))


async def ensure_first_user(store: Store) -> dict[str, Any]:
    """The first start creates the local admin account, like a fresh Jupyter server; returns the first admin."""
    user = await store.one("SELECT * FROM users WHERE is_admin = 1 ORDER BY id LIMIT 1")
    if user is None and await store.one("SELECT id FROM users LIMIT 1") is None:
        name = re.sub(r"[^A-Za-z0-9_.-]", "", os.environ.get("USER", "")) or "admin"
        await create_user(store, name, is_admin=True)
        user = await store.one("SELECT * FROM users WHERE name = ?", (name,))
    return user or {}


class _asgi_endpoint:  # noqa: N801 - used like a decorator
    """Marks a plain ASGI callable as such for Route (which wraps functions as request/response handlers)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


def create_app(config: Config) -> Starlette:
    """Build the nfhub application for this configuration. Nothing starts until the ASGI lifespan runs."""
    # Siblings that use this module's storage, errors and auth; imported here, not at the top, to avoid a cycle.
    import nfhub_auth
    import nfhub_runs
    from nfhub_runs import (
        cancel,
        finished,
        nextflow_log,
        project_events,
        runs_clean,
        runs_get,
        runs_list,
        runs_log,
        runs_tasks,
        schedule,
    )

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
            await anyio.to_thread.run_sync(lambda s=staging: nfhub_files.sweep_staging(s, temp_age_seconds=0))
        runs = nfhub_runs.RunManager(config, store, app.state.catalog)
        app.state.runs = runs
        try:
            async with anyio.create_task_group() as tg:
                app.state.task_group = tg
                await runs.start(tg)
                tg.start_soon(watch_catalog, config, app.state.catalog)
                yield
                # Running pipelines are left running: the next start adopts them.
                tg.cancel_scope.cancel()
        finally:
            runs.close()
            await store.close()

    routes = [
        # FrontDoor answers these POSTs before routing; the route is here for the other methods and the docs.
        Route("/api/projects/{id:int}/nextflow-log", _asgi_endpoint(nextflow_log), methods=["POST"]),
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
        Route("/api/projects/{id:int}/view-link", view_link, methods=["POST"]),
        Route("/api/projects/{id:int}/view/{ticket}/{path:path}", view_file, methods=["GET"]),
        Route("/api/projects/{id:int}/schedule", schedule, methods=["POST"]),
        Route("/api/projects/{id:int}/cancel", cancel, methods=["POST"]),
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
    app.add_middleware(FrontDoor)
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


def http_protocol(app: Starlette) -> type | str:
    """uvicorn's httptools protocol with nfhub's weblog fast lane (nfhub_runs.weblog_protocol); plain "auto" where
    httptools is missing (uvicorn without [standard]): the weblog route then answers through ASGI."""
    import nfhub_runs

    try:
        return nfhub_runs.weblog_protocol(app.state, FrontDoor.HEADERS)
    except ImportError:
        return "auto"


def cmd_serve(args: argparse.Namespace, config: Config) -> int:
    import uvicorn

    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(config)
    _print_banner(config, app)

    app.state.announce_login = True
    uvicorn.run(app, host=config.host, port=config.port, log_level=config.log_level, access_log=False,
                timeout_graceful_shutdown=5, http=http_protocol(app))
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
