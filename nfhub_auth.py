"""nfhub users: passwords, nfhub's own tokens and their revocation, who a request is (authenticate), what they may
do with a project (project_access), local and OpenID Connect logins, logout, personal API tokens and sharing.

Every token is one of nfhub's own HS256 JWTs (Tokens); identity providers only prove who someone is.
Floor 3: imports the leaves and floor 2 (nfhub_config, nfhub_http). Nothing here runs at import time."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import math
import re
import secrets
import sqlite3
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio
import anyio.to_thread
import httpx
import joserfc.errors
import jwt
from authlib.common.errors import AuthlibBaseError
from authlib.integrations.base_client.errors import MismatchingStateError
from authlib.integrations.starlette_client import OAuth
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from nfhub_config import Config, StartupError, load_secret_key, parse_duration
from nfhub_http import (
    EMPTY_OBJECT,
    ID_PARAM,
    MAX_NAME_LENGTH,
    APIError,
    check_name,
    error_response,
    operation,
    path_id,
    read_json,
)
from nfhub_store import Store, insert_user, now_iso

try:  # Authlib >= 1.7 talks to the IdP through httpx2 when it is installed, else through httpx
    import httpx2

    _HTTP_ERRORS: tuple[type[Exception], ...] = (httpx.HTTPError, httpx2.HTTPError)
except ImportError:  # pragma: no cover
    _HTTP_ERRORS = (httpx.HTTPError,)

log = logging.getLogger("auth")

LOGIN_ATTEMPTS = 10  # failed logins allowed per username and per client address ...
LOGIN_WINDOW = 60  # ... in this many seconds
MIN_PASSWORD = 8
MAX_PASSWORD = 1024
DEFAULT_TOKEN_LIFETIME = 30 * 86400  # personal tokens, when the request names no lifetime (capped by the setting)
MAX_PERSONAL_TOKENS = 100  # unexpired, unrevoked personal tokens per user
OIDC_COOKIE = "nfhub_oidc"
OIDC_FLOW_SECONDS = 600  # a login must come back from the provider within this time
OIDC_DEFAULT_SCOPE = "openid email profile"
MAX_REMEMBERED_FLOWS = 100_000  # completed login flows remembered to refuse replays (oldest forgotten first)
# ID tokens must be signed with the provider's published keys: never HMAC (the client secret is no signing key) or none.
_ID_TOKEN_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
_REASON = re.compile(r"[a-z_]{1,40}")


# ---- Passwords and tokens ---------------------------------------------------------------------------------------

JWT_ALGORITHM = "HS256"
JWT_ISSUER = "nfhub"
JWT_LEEWAY = 30

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


# ---- Services -----------------------------------------------------------------------------------------------------


@dataclass
class Auth:
    """Everything about users that lives as long as the server: built once by open_auth in the lifespan."""

    config: Config
    store: Store
    tokens: Tokens
    login_limiter: RateLimiter
    hash_limiter: anyio.CapacityLimiter = field(default_factory=lambda: anyio.CapacityLimiter(4))
    oauth: OAuth = field(default_factory=OAuth)
    oidc_session_key: str = ""
    oidc_cookie_path: str = "/api/users/openid/"
    oidc_https: bool = False
    oidc_used_states: dict[str, float] = field(default_factory=dict)  # completed login flows -> when forgotten
    oidc_checked: dict[str, Any] = field(default_factory=dict)  # provider -> when its discovery document was checked


def auth_of(conn: HTTPConnection) -> Auth:
    """The Auth of the app serving this request (set by nfhub.create_app's lifespan)."""
    return conn.app.state.auth


# ---- Authentication and access ------------------------------------------------------------------------------------


async def authenticate(request: Request, token: str | None = None) -> dict[str, Any]:
    """The user behind the request's x-access-token header (or an explicit token), else APIError 401."""
    state = auth_of(request)
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
    user = await login_user(state, user_id, int(claims["iat"]))
    if user is None:
        raise APIError(401, "token has been revoked, or its user is unknown or disabled")
    user["claims"] = claims
    return user


async def login_user(state: Auth, user_id: int, iat: int) -> dict[str, Any] | None:
    """The user a login issued at `iat` still stands for, or None: gone, disabled, or logged out everywhere since."""
    user = await state.store.user(user_id)
    if user is None or user["disabled"] or iat < user["tokens_valid_after"]:
        return None
    user["is_admin"] = is_admin(state.config, user)
    return user


def is_admin(config: Config, user: dict[str, Any]) -> bool:
    return bool(user["is_admin"]) or user["name"] in config.admins or (
        bool(user["email"]) and user["email"] in config.admins)


async def create_user(store: Store, name: str, *, password: str | None = None, is_admin: bool = False) -> int:
    """A local account (nfhub_store.insert_user, the one statement that creates users); its id."""
    digest = await anyio.to_thread.run_sync(hash_password, password) if password else None
    return await store.write_fn(lambda db: insert_user(db, name, password_hash=digest, is_admin=is_admin))


# Project rows joined with their latest run; the seed fields are derived from that run.
PROJECT_SELECT = """
    SELECT p.*, u.name AS owner_name, r.id AS run_id, r.status AS run_status,
           COALESCE(r.submitted_processes, 0) AS submitted_processes,
           COALESCE(r.completed_processes, 0) AS completed_processes, {access} AS access
    FROM projects p JOIN users u ON u.id = p.owner_id
    LEFT JOIN runs r ON r.id = (SELECT max(id) FROM runs WHERE project_id = p.id)
"""


async def get_project(store: Store, user: dict[str, Any], project_id: int, need: str = "read") -> dict[str, Any]:
    """The project as this user may see it, or APIError 404 (never revealing that it exists) / 403."""
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


def _stream_token(request: Request) -> str | None:
    """GETs a browser cannot decorate with headers (downloads, event streams, logs) may carry ?token=."""
    if request.method == "GET" and request.url.path.endswith(("/log", "/events", "/download")):
        return request.headers.get("x-access-token") or request.query_params.get("token")
    return None


async def project_access(request: Request, need: str = "read") -> tuple[dict[str, Any], dict[str, Any]]:
    """The user behind the request and the project of its path, which they may `need` (401, 404 or 403 otherwise):
    the opening of every project handler."""
    user = await authenticate(request, _stream_token(request))
    return user, await get_project(auth_of(request).store, user, path_id(request), need)


# ---- Helpers -----------------------------------------------------------------------------------------------------


class RateLimiter:
    """Attempts per key in a sliding window, in memory (nfhub is one process)."""

    def __init__(self, limit: int, window: float):
        self.limit = limit
        self.window = window
        self._hits: dict[str, deque[float]] = {}
        self._prune_at = 10_000  # keys held before the stale ones are dropped

    def _recent(self, key: str, now: float) -> deque[float] | None:
        hits = self._hits.get(key)
        if hits is None:
            return None
        while hits and hits[0] <= now - self.window:
            hits.popleft()
        if not hits:
            del self._hits[key]
            return None
        return hits

    def retry_after(self, key: str) -> int:
        """Seconds until `key` may try again; 0 when it may now."""
        now = time.monotonic()
        hits = self._recent(key, now)
        if hits is None or len(hits) < self.limit:
            return 0
        return max(1, math.ceil(hits[-self.limit] + self.window - now))

    def hit(self, key: str) -> None:
        now = time.monotonic()
        if len(self._hits) > self._prune_at:  # many keys (a username spray): drop the ones with nothing recent
            for old in list(self._hits):
                self._recent(old, now)
            self._prune_at = max(10_000, 2 * len(self._hits))  # (not a full scan on every attempt of a spray)
        self._hits.setdefault(key, deque(maxlen=2 * self.limit)).append(now)

    def undo(self, key: str) -> None:
        hits = self._hits.get(key)
        if hits:
            hits.pop()

    def forget(self, key: str) -> None:
        self._hits.pop(key, None)


def frontend_url(config: Config, **params: str) -> str:
    """The configured frontend URL with `params` added to its query."""
    parts = urlsplit(config.frontend_url or config.base_url + "/")
    query = parse_qsl(parts.query, keep_blank_values=True) + list(params.items())
    return urlunsplit(parts._replace(query=urlencode(query)))


def _redirect(url: str) -> Response:
    return RedirectResponse(url, status_code=302, headers={"Cache-Control": "no-store"})


def _login_error(config: Config, reason: str) -> Response:
    return _redirect(frontend_url(config, error=reason))


def _iso(epoch: int | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


def _text(data: dict[str, Any], key: str, *, max_length: int = MAX_NAME_LENGTH) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise APIError(422, f"{key} is required and must be a string", {key: "required string"})
    if len(value) > max_length:
        raise APIError(422, f"{key} is longer than {max_length} characters", {key: f"at most {max_length}"})
    return value


def _user_json(config: Config, row: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "name": row["name"], "display_name": row["display_name"], "email": row["email"],
            "provider": row["provider"], "is_admin": is_admin(config, row),
            "has_password": bool(row.get("password_hash"))}


def _clean_claim(value: Any, max_length: int) -> str | None:
    if not isinstance(value, str):
        return None
    value = "".join(c for c in value if c.isprintable()).strip()[:max_length]
    return value or None


async def _record_token(db: Any, claims: dict[str, Any], kind: str, name: str | None = None) -> None:
    await db.execute("INSERT INTO tokens (jti, user_id, kind, name, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?)",
                     (claims["jti"], int(claims["sub"]), kind, name, now_iso(), int(claims["exp"])))


async def issue_login_token(state: Auth, user_id: int) -> str:
    """A session JWT for a user who just logged in, recorded so that "log out everywhere" can revoke it."""
    token, claims = state.tokens.issue(user_id)
    async with state.store.write() as db:
        await _record_token(db, claims, "session")
    return token


async def revoke_token(state: Auth, claims: dict[str, Any]) -> None:
    """Refuse this token (by jti) from now until it expires; survives restarts through the tokens table."""
    kind = claims.get("kind") if claims.get("kind") in ("personal", "session") else "session"
    jti, exp = str(claims["jti"]), int(claims["exp"])
    async with state.store.write() as db:
        await db.execute(
            "INSERT INTO tokens (jti, user_id, kind, created_at, expires_at, revoked_at) VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT(jti) DO UPDATE SET revoked_at = COALESCE(tokens.revoked_at, excluded.revoked_at)",
            (jti, int(claims["sub"]), kind, now_iso(), exp, int(time.time())))
    state.tokens.revoked[jti] = exp
    state.tokens.prune()


async def _hash_in_thread(state: Auth, func: Any, *args: Any) -> Any:
    # scrypt costs ~16 MB and tens of ms: keep it off the event loop, and few at a time.
    return await anyio.to_thread.run_sync(func, *args, limiter=state.hash_limiter)


# ---- Handlers: login ---------------------------------------------------------------------------------------------


async def login_providers(request: Request) -> Response:
    providers = auth_of(request).config.login_providers
    return JSONResponse({kind: {name: str(spec.get("description") or name) for name, spec in entries.items()}
                         for kind, entries in providers.items()})


async def local_login(request: Request) -> Response:
    state = auth_of(request)
    if request.path_params["provider"] not in (state.config.login_providers.get("local") or {}):
        raise APIError(404, "unknown login provider")
    data = await read_json(request)
    username = _text(data, "username")
    password = _text(data, "password", max_length=MAX_PASSWORD)
    keys = ("user:" + username.casefold(), "ip:" + (request.client.host if request.client else "unknown"))
    wait = max(state.login_limiter.retry_after(key) for key in keys)
    if wait:
        return error_response(429, f"too many failed logins; try again in {wait} seconds",
                                    headers={"Retry-After": str(wait)})
    for key in keys:  # counted before the check, so that parallel guesses cannot slip past the limit
        state.login_limiter.hit(key)
    user = await state.store.one("SELECT * FROM users WHERE name = ? AND provider = 'local'", (username,))
    ok = await _hash_in_thread(state, verify_password, password, user["password_hash"] if user else None)
    if not ok or user is None or user["disabled"]:
        # One message for every failure: the response never tells whether the account exists.
        raise APIError(401, "wrong username or password")
    state.login_limiter.forget(keys[0])
    state.login_limiter.undo(keys[1])
    return JSONResponse({"token": await issue_login_token(state, user["id"])})


async def change_password(request: Request) -> Response:
    state = auth_of(request)
    user = await authenticate(request)
    data = await read_json(request)
    new = data.get("new_password")
    if not isinstance(new, str) or not MIN_PASSWORD <= len(new) <= MAX_PASSWORD:
        raise APIError(422, f"the new password needs {MIN_PASSWORD} to {MAX_PASSWORD} characters",
                             {"new_password": f"{MIN_PASSWORD} to {MAX_PASSWORD} characters"})
    if user["provider"] != "local":
        raise APIError(422, f"your account logs in through {user['provider']}; change the password there")
    if user["password_hash"]:
        key = "user:" + user["name"].casefold()
        wait = state.login_limiter.retry_after(key)
        if wait:
            return error_response(429, f"too many failed attempts; try again in {wait} seconds",
                                        headers={"Retry-After": str(wait)})
        old = data.get("old_password")
        if not isinstance(old, str) or not old:
            raise APIError(422, "old_password is required", {"old_password": "required"})
        state.login_limiter.hit(key)
        if not await _hash_in_thread(state, verify_password, old[:MAX_PASSWORD], user["password_hash"]):
            raise APIError(403, "the old password is wrong")
        state.login_limiter.forget(key)
    elif user["claims"].get("kind") == "personal":
        # A token-only account (e.g. the first admin) may set its first password, but not from a script's token.
        raise APIError(403, "log in to set a password; personal API tokens cannot")
    digest = await _hash_in_thread(state, hash_password, new)
    async with state.store.write() as db:
        await db.execute("UPDATE users SET password_hash = ? WHERE id = ?", (digest, user["id"]))
    return JSONResponse({})


async def logout(request: Request) -> Response:
    user = await authenticate(request)
    await revoke_token(auth_of(request), user["claims"])
    if "text/html" in request.headers.get("accept", ""):
        return _redirect(frontend_url(auth_of(request).config))
    return Response(status_code=200)


async def logout_all(request: Request) -> Response:
    state = auth_of(request)
    user = await authenticate(request)
    now = int(time.time())
    async with state.store.write() as db:
        known = (await db.execute("SELECT jti, expires_at FROM tokens WHERE user_id = ? AND revoked_at IS NULL"
                                  " AND expires_at > ?", (user["id"], now))).fetchall()
        await db.execute("UPDATE tokens SET revoked_at = ? WHERE user_id = ? AND revoked_at IS NULL", (now, user["id"]))
        # tokens_valid_after has one-second resolution; the recorded jtis cover tokens issued in this very second.
        await db.execute("UPDATE users SET tokens_valid_after = ? WHERE id = ?", (now, user["id"]))
    state.tokens.revoked.update({row["jti"]: row["expires_at"] for row in known})
    await revoke_token(state, user["claims"])
    return JSONResponse({})


# ---- Handlers: OpenID Connect ------------------------------------------------------------------------------------


class _ProviderError(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class _OIDCSession:
    """A signed, short-lived cookie holding the login flow's state, nonce and PKCE verifier (Authlib keeps them in
    request.session). Only the OpenID routes get it; its key is derived from the token key at startup."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = scope["app"].state.auth
        session = SessionMiddleware(self.app, secret_key=state.oidc_session_key, session_cookie=OIDC_COOKIE,
                                    max_age=OIDC_FLOW_SECONDS, path=state.oidc_cookie_path, same_site="lax",
                                    https_only=state.oidc_https)
        await session(scope, receive, send)


def _oidc_client(request: Request) -> Any:
    name = request.path_params["provider"]
    if name not in (auth_of(request).config.login_providers.get("openid") or {}):
        raise APIError(404, "unknown login provider")
    return auth_of(request).oauth.create_client(name)


def _callback_url(config: Config, name: str) -> str:
    return f"{config.base_url}/api/users/openid/{name}/callback"


async def _provider_metadata(state: Auth, name: str, client: Any) -> dict[str, Any]:
    """The provider's discovery document: fetched once (Authlib caches it on the client), checked once."""
    metadata = await client.load_server_metadata()
    if state.oidc_checked.get(name) == metadata.get("_loaded_at"):
        return metadata
    discovery_url = state.config.login_providers["openid"][name]["discovery_url"]
    issuer = metadata.get("issuer")
    problem = None
    if not isinstance(issuer, str) or not issuer:
        problem = "the discovery document has no issuer"
    elif discovery_url.rstrip("/") != issuer.rstrip("/") + "/.well-known/openid-configuration":
        # OpenID Connect Discovery 1.0 §4.3: the issuer is exactly the discovery URL's prefix.
        problem = f"issuer {issuer!r} does not match the discovery URL {discovery_url!r}"
    else:
        missing = [k for k in ("authorization_endpoint", "token_endpoint", "jwks_uri") if not metadata.get(k)]
        if missing:
            problem = f"the discovery document lacks {', '.join(missing)}"
    if problem:
        client.server_metadata.clear()  # fetch it again next time: the provider may get fixed
        raise _ProviderError("provider_misconfigured", f"OpenID provider {name}: {problem}")
    offered = metadata.get("id_token_signing_alg_values_supported") or ["RS256"]
    metadata["id_token_signing_alg_values_supported"] = [a for a in offered if a in _ID_TOKEN_ALGORITHMS] or ["RS256"]
    state.oidc_checked[name] = metadata.get("_loaded_at")
    return metadata


async def openid_login(request: Request) -> Response:
    state = auth_of(request)
    client = _oidc_client(request)
    name = request.path_params["provider"]
    try:
        await _provider_metadata(state, name, client)
        return await client.authorize_redirect(request, _callback_url(state.config, name))
    except _ProviderError as exc:
        log.warning("%s", exc)
        return _login_error(state.config, exc.reason)
    except (*_HTTP_ERRORS, ValueError) as exc:
        log.warning("OpenID provider %s is unavailable: %s", name, exc)
        return _login_error(state.config, "provider_unavailable")


def _reason(error: Any, default: str) -> str:
    # Provider error codes are snake_case words (RFC 6749 §4.1.2.1); anything else is not echoed to the frontend.
    return error if isinstance(error, str) and _REASON.fullmatch(error) else default


async def openid_callback(request: Request) -> Response:
    state = auth_of(request)
    config = state.config
    client = _oidc_client(request)
    name = request.path_params["provider"]
    params = request.query_params
    if params.get("error"):
        log.info("OpenID login via %s refused by the provider: %r", name, params["error"][:100])
        return _login_error(config, _reason(params["error"], "login_failed"))
    flow = params.get("state") or ""
    used = state.oidc_used_states
    now = time.time()
    for old in [s for s, exp in used.items() if exp < now]:
        del used[old]
    if not flow or flow in used:
        # The signed cookie cannot be revoked: a replayed callback with an old copy of it is refused here.
        return _login_error(config, "invalid_state")
    if f"_state_{name}_{flow}" in request.session:  # Authlib's key: only flows this server started are remembered
        while len(used) >= MAX_REMEMBERED_FLOWS:
            del used[next(iter(used))]
        used[flow] = now + OIDC_FLOW_SECONDS
    try:
        await _provider_metadata(state, name, client)
        token = await client.authorize_access_token(request)
    except MismatchingStateError:
        return _login_error(config, "invalid_state")
    except _ProviderError as exc:
        log.warning("%s", exc)
        return _login_error(config, exc.reason)
    except (*_HTTP_ERRORS, ValueError) as exc:
        log.warning("OpenID provider %s is unavailable: %s", name, exc)
        return _login_error(config, "provider_unavailable")
    except joserfc.errors.JoseError as exc:
        log.warning("OpenID login via %s: ID token rejected: %r", name, exc)
        return _login_error(config, "invalid_id_token")
    except AuthlibBaseError as exc:
        log.warning("OpenID login via %s failed: %r", name, exc)
        return _login_error(config, _reason(getattr(exc, "error", None), "login_failed"))
    claims = token.get("userinfo")  # set only when an ID token was present and valid (signature, iss, aud, nonce, exp)
    if not claims or not isinstance(claims.get("sub"), str) or not claims["sub"]:
        log.warning("OpenID login via %s: no valid ID token in the token response", name)
        return _login_error(config, "invalid_id_token")
    user = await _upsert_oidc_user(state.store, config, name, dict(claims))
    if user["disabled"]:
        return _login_error(config, "account_disabled")
    return _redirect(frontend_url(config, token=await issue_login_token(state, user["id"])))


def _name_base(claims: dict[str, Any], email: str | None) -> str:
    for candidate in (claims.get("preferred_username"), (email or "").split("@")[0]):
        if isinstance(candidate, str):
            name = re.sub(r"[^A-Za-z0-9_.-]", "", candidate)[:64].strip(".-")
            if name:
                return name
    return "user"


async def _upsert_oidc_user(store: Store, config: Config, provider_name: str,
                            claims: dict[str, Any]) -> dict[str, Any]:
    """Create or update the user keyed by (provider, sub); returns its row."""
    provider = f"openid:{provider_name}"
    # Only a verified address is kept: e-mails grant admin rights (admins setting) and select users to share with.
    email = _clean_claim(claims.get("email"), 320) if claims.get("email_verified") is True else None
    display_name = _clean_claim(claims.get("name"), MAX_NAME_LENGTH)

    def upsert(db: sqlite3.Connection) -> dict[str, Any]:
        row = db.execute("SELECT * FROM users WHERE provider = ? AND subject = ?", (provider, claims["sub"])).fetchone()
        if row is not None:
            db.execute("UPDATE users SET email = ?, display_name = ? WHERE id = ?", (email, display_name, row["id"]))
            return dict(row)
        base = _name_base(claims, email)
        name, number = base, 1
        # Names in the admins setting are skipped: preferred_username is often the user's own choice.
        while db.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone() is not None or name in config.admins:
            number += 1
            name = f"{base}-{number}"
        user_id = insert_user(db, name, provider=provider, subject=claims["sub"], email=email,
                              display_name=display_name)
        log.info("new user %s from OpenID provider %s", name, provider_name)
        return {"id": user_id, "name": name, "disabled": 0}

    return await store.write_fn(upsert)


# ---- Handlers: identity and tokens -------------------------------------------------------------------------------


async def me(request: Request) -> Response:
    user = await authenticate(request)
    return JSONResponse({"user": _user_json(auth_of(request).config, user)})


async def users_list(request: Request) -> Response:
    user = await authenticate(request)
    if not user["is_admin"]:
        raise APIError(403, "only admins can list users")
    config = auth_of(request).config
    rows = await auth_of(request).store.all("SELECT * FROM users ORDER BY id")
    return JSONResponse({"users": [{**_user_json(config, r), "disabled": bool(r["disabled"]),
                                    "created_at": r["created_at"]} for r in rows]})


def _lifetime(value: Any, config: Config) -> int:
    if value is None:
        return min(DEFAULT_TOKEN_LIFETIME, config.max_token_seconds)
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise APIError(422, "lifetime must be seconds or a duration like 30m, 12h, 90d",
                             {"lifetime": "seconds or a duration"})
    try:
        seconds = parse_duration(value, "lifetime")
    except StartupError as exc:
        raise APIError(422, str(exc), {"lifetime": "seconds or a duration like 30m, 12h, 90d"}) from None
    if seconds > config.max_token_seconds:
        raise APIError(422, f"lifetime is longer than the allowed {config.max_token_lifetime}",
                             {"lifetime": f"at most {config.max_token_lifetime}"})
    return seconds


async def tokens_create(request: Request) -> Response:
    state = auth_of(request)
    user = await authenticate(request)
    if user["claims"].get("kind") == "personal":
        # Otherwise a leaked short-lived token could mint itself a long-lived successor.
        raise APIError(403, "personal API tokens cannot create tokens; log in first")
    data = await read_json(request)
    unknown = set(data) - {"name", "lifetime"}
    if unknown:
        raise APIError(422, f"unknown field '{sorted(unknown)[0]}'", {k: "unknown field" for k in unknown})
    name = check_name(data.get("name"))
    lifetime = _lifetime(data.get("lifetime"), state.config)
    token, claims = state.tokens.issue(user["id"], lifetime, kind="personal")
    async with state.store.write() as db:
        count = (await db.execute("SELECT count(*) AS n FROM tokens WHERE user_id = ? AND kind = 'personal'"
                                  " AND revoked_at IS NULL AND expires_at > ?", (user["id"], int(time.time())))
                 ).rows[0]["n"]
        if count >= MAX_PERSONAL_TOKENS:
            raise APIError(422, f"you already have {MAX_PERSONAL_TOKENS} active tokens; revoke some first")
        await _record_token(db, claims, "personal", name)
    return JSONResponse({"token": token, "id": claims["jti"], "name": name, "expires_at": _iso(claims["exp"])})


async def tokens_list(request: Request) -> Response:
    user = await authenticate(request)
    rows = await auth_of(request).store.all(
        "SELECT jti, name, created_at, expires_at, revoked_at FROM tokens WHERE user_id = ? AND kind = 'personal'"
        " ORDER BY created_at, jti", (user["id"],))
    now = time.time()
    return JSONResponse({"tokens": [
        {"id": r["jti"], "name": r["name"], "created_at": r["created_at"], "expires_at": _iso(r["expires_at"]),
         "revoked": r["revoked_at"] is not None, "expired": r["expires_at"] <= now} for r in rows]})


async def tokens_revoke(request: Request) -> Response:
    state = auth_of(request)
    user = await authenticate(request)
    row = await state.store.one("SELECT * FROM tokens WHERE jti = ? AND user_id = ? AND kind = 'personal'",
                                (request.path_params["id"], user["id"]))
    if row is None:
        raise APIError(404, "token not found")
    await revoke_token(state, {"jti": row["jti"], "exp": row["expires_at"], "sub": user["id"], "kind": "personal"})
    return JSONResponse({})


# ---- Handlers: sharing -------------------------------------------------------------------------------------------


async def _shareable(request: Request) -> tuple[dict[str, Any], dict[str, Any]]:
    user, project = await project_access(request)
    if project["access"] not in ("owner", "admin"):
        raise APIError(403, "only the owner or an admin can share this project")
    return user, project


async def _find_user(store: Store, who: str) -> dict[str, Any]:
    row = await store.one("SELECT * FROM users WHERE name = ?", (who,))
    if row is not None:
        return row
    rows = await store.all("SELECT * FROM users WHERE lower(email) = lower(?) LIMIT 2", (who,))
    if len(rows) > 1:
        raise APIError(422, f"several users have the e-mail address {who}; name the user instead",
                             {"user": "ambiguous e-mail address"})
    if not rows:
        raise APIError(422, f"no user named {who!r}", {"user": "no such user"})
    return rows[0]


async def project_share(request: Request) -> Response:
    _, project = await _shareable(request)
    data = await read_json(request)
    who = _text(data, "user", max_length=320)
    access = data.get("access")
    if access not in ("read", "write"):
        raise APIError(422, "access must be 'read' or 'write'", {"access": "read or write"})
    store = auth_of(request).store
    target = await _find_user(store, who)
    if target["id"] == project["owner_id"]:
        raise APIError(422, "the owner already has full access", {"user": "is the owner"})
    async with store.write() as db:
        await db.execute("INSERT INTO shares (project_id, user_id, access) VALUES (?, ?, ?)"
                         " ON CONFLICT(project_id, user_id) DO UPDATE SET access = excluded.access",
                         (project["id"], target["id"], access))
    return JSONResponse({})


async def project_unshare(request: Request) -> Response:
    _, project = await _shareable(request)
    data = await read_json(request)
    store = auth_of(request).store
    target = await _find_user(store, _text(data, "user", max_length=320))
    async with store.write() as db:
        await db.execute("DELETE FROM shares WHERE project_id = ? AND user_id = ?", (project["id"], target["id"]))
    return JSONResponse({})


async def project_shares(request: Request) -> Response:
    _, project = await project_access(request)
    store = auth_of(request).store
    rows = await store.all("SELECT u.name, u.email, s.access FROM shares s JOIN users u ON u.id = s.user_id"
                           " WHERE s.project_id = ? ORDER BY u.name", (project["id"],))
    return JSONResponse({"shares": [{"user": r["name"], "email": r["email"], "access": r["access"]} for r in rows]})


# ---- Assembly ----------------------------------------------------------------------------------------------------


def routes() -> list[Route]:
    """The /api/users* and sharing routes."""
    oidc = [Middleware(_OIDCSession)]
    return [
        Route("/api/users", users_list, methods=["GET"]),
        Route("/api/users/login-providers", login_providers, methods=["GET"]),
        Route("/api/users/openid/{provider}/login", openid_login, methods=["GET"], middleware=oidc),
        Route("/api/users/openid/{provider}/callback", openid_callback, methods=["GET"], middleware=oidc),
        Route("/api/users/local/{provider}/login", local_login, methods=["POST"]),
        Route("/api/users/logout", logout, methods=["GET", "POST"]),
        Route("/api/users/logout-all", logout_all, methods=["POST"]),
        Route("/api/users/me", me, methods=["GET"]),
        Route("/api/users/password", change_password, methods=["POST"]),
        Route("/api/users/tokens", tokens_list, methods=["GET"]),
        Route("/api/users/tokens", tokens_create, methods=["POST"]),
        Route("/api/users/tokens/{id}/revoke", tokens_revoke, methods=["POST"]),
        Route("/api/projects/{id:int}/share", project_share, methods=["POST"]),
        Route("/api/projects/{id:int}/unshare", project_unshare, methods=["POST"]),
        Route("/api/projects/{id:int}/shares", project_shares, methods=["GET"]),
    ]


_PROVIDER = {"name": "provider", "in": "path", "required": True, "schema": {"type": "string"}}
_TOKEN_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
_USER = {"type": "object", "properties": {
    "id": {"type": "integer"}, "name": {"type": "string"}, "display_name": {"type": ["string", "null"]},
    "email": {"type": ["string", "null"]}, "provider": {"type": "string"}, "is_admin": {"type": "boolean"}}}
_EMPTY = EMPTY_OBJECT
_REDIRECT = {"description": "redirect (302)"}


def _redirect_op(summary: str, *, auth: bool = False, errors: tuple[int, ...] = ()) -> dict[str, Any]:
    op = operation(summary, auth=auth, errors=errors, params=[_PROVIDER] if not auth else None, status="302")
    op["responses"]["302"] = _REDIRECT
    return op


def openapi_paths() -> dict[str, Any]:
    """OpenAPI path items for the routes above."""
    op = operation
    logout_op = op("Log out: revoke the presented token. 200 with an empty body, or 302 to the frontend when the"
                   " request accepts text/html")
    logout_op["responses"]["302"] = _REDIRECT
    return {
        "/api/users": {"get": op("List users (admins only)", response={"type": "object", "properties": {
            "users": {"type": "array", "items": _USER}}}, errors=(403,))},
        "/api/users/login-providers": {"get": op(
            "Login methods: {provider_type: {provider_name: description}}", auth=False,
            response={"type": "object", "additionalProperties": {"type": "object",
                                                                  "additionalProperties": {"type": "string"}}})},
        "/api/users/openid/{provider}/login": {"get": _redirect_op(
            "Start an OpenID Connect login: 302 to the provider (state, nonce, PKCE S256); on failure 302 to the"
            " frontend with ?error=<reason>", errors=(404,))},
        "/api/users/openid/{provider}/callback": {"get": _redirect_op(
            "Where the provider returns: 302 to the frontend with ?token=<JWT>, or ?error=<reason> (invalid_state,"
            " invalid_id_token, provider_unavailable, access_denied, account_disabled, …)", errors=(404,))},
        "/api/users/local/{provider}/login": {"post": op(
            "Log in with a local username and password", auth=False, params=[_PROVIDER],
            body={"type": "object", "required": ["username", "password"], "properties": {
                "username": {"type": "string"}, "password": {"type": "string"}}},
            response={"type": "object", "properties": {"token": {"type": "string"}}},
            errors=(400, 401, 404, 413, 422, 429))},
        "/api/users/logout": {"get": logout_op, "post": logout_op},
        "/api/users/logout-all": {"post": op("Revoke every token of the current user (log out everywhere)",
                                             response=_EMPTY)},
        "/api/users/me": {"get": op("The current user", response={"type": "object", "properties": {"user": _USER}})},
        "/api/users/password": {"post": op(
            "Change your local password (old_password may be omitted only when the account has none yet)",
            body={"type": "object", "required": ["new_password"], "properties": {
                "old_password": {"type": "string"}, "new_password": {"type": "string", "minLength": MIN_PASSWORD}}},
            response=_EMPTY, errors=(400, 403, 422, 429))},
        "/api/users/tokens": {
            "get": op("Your personal API tokens (never the secret)", response={"type": "object", "properties": {
                "tokens": {"type": "array", "items": {"type": "object", "properties": {
                    "id": {"type": "string"}, "name": {"type": "string"}, "created_at": {"type": "string"},
                    "expires_at": {"type": "string"}, "revoked": {"type": "boolean"},
                    "expired": {"type": "boolean"}}}}}}),
            "post": op("Create a personal API token (shown once); lifetime in seconds or like 90d",
                       body={"type": "object", "required": ["name"], "properties": {
                           "name": {"type": "string"}, "lifetime": {"type": ["string", "integer"]}}},
                       response={"type": "object", "properties": {
                           "token": {"type": "string"}, "id": {"type": "string"}, "name": {"type": "string"},
                           "expires_at": {"type": "string"}}}, errors=(400, 403, 422)),
        },
        "/api/users/tokens/{id}/revoke": {"post": op("Revoke one of your personal API tokens", params=[_TOKEN_ID],
                                                     response=_EMPTY, errors=(404,))},
        "/api/projects/{id}/share": {"post": op(
            "Share a project (owner or admin): user is a user name or e-mail address", params=[ID_PARAM],
            body={"type": "object", "required": ["user", "access"], "properties": {
                "user": {"type": "string"}, "access": {"type": "string", "enum": ["read", "write"]}}},
            response=_EMPTY, errors=(400, 403, 404, 422))},
        "/api/projects/{id}/unshare": {"post": op(
            "Stop sharing a project with a user (owner or admin)", params=[ID_PARAM],
            body={"type": "object", "required": ["user"], "properties": {"user": {"type": "string"}}},
            response=_EMPTY, errors=(400, 403, 404, 422))},
        "/api/projects/{id}/shares": {"get": op(
            "Who the project is shared with", params=[ID_PARAM], response={"type": "object", "properties": {
                "shares": {"type": "array", "items": {"type": "object", "properties": {
                    "user": {"type": "string"}, "email": {"type": ["string", "null"]},
                    "access": {"type": "string", "enum": ["read", "write"]}}}}}}, errors=(404,))},
    }


async def open_auth(config: Config, store: Store) -> Auth:
    """The Auth of a server starting up, once the database is open: the signing key, revocations, the OAuth
    registry of the configured OpenID providers."""
    tokens = Tokens(load_secret_key(config), config.token_seconds, config.max_token_seconds)
    base = urlsplit(config.base_url)
    auth = Auth(config=config, store=store, tokens=tokens, login_limiter=RateLimiter(LOGIN_ATTEMPTS, LOGIN_WINDOW),
                # The flow cookie gets its own key, so that a session-cookie signature can never pass as a token's.
                oidc_session_key=hmac.new(tokens.key, b"nfhub oidc session cookie", hashlib.sha256).hexdigest(),
                oidc_cookie_path=base.path.rstrip("/") + "/api/users/openid/", oidc_https=base.scheme == "https")
    for name, spec in (config.login_providers.get("openid") or {}).items():
        scope = str(spec.get("scope") or OIDC_DEFAULT_SCOPE)
        if "openid" not in scope.split():  # without it there is no ID token, and no nonce
            scope = "openid " + scope
        auth.oauth.register(name, client_id=spec["client_id"], client_secret=spec.get("client_secret"),
                            server_metadata_url=spec["discovery_url"],
                            client_kwargs={"scope": scope, "code_challenge_method": "S256", "timeout": 10.0})
    async with store.write() as db:  # expired tokens need no revocation record any more
        await db.execute("DELETE FROM tokens WHERE expires_at < ?", (int(time.time()) - JWT_LEEWAY,))
    await load_revocations(store, tokens)
    return auth
