"""OpenID Connect login over real HTTP: nfhub under uvicorn, a real IdP process (oidc-provider-mock) and, for forged
ID tokens, a small hand-written provider on loopback. The "browser" is an httpx client that follows the redirects
itself and keeps cookies."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import jwt
import pytest
import uvicorn
from cryptography.hazmat.primitives.asymmetric import rsa

import nfhub
import nfhub_config
from conftest import open_db

FRONTEND = "http://frontend.example/app/"
CLIENT_ID = "nfhub-test"
CLIENT_SECRET = "a-client-secret-that-is-long-enough-for-hs256"
MOCK_USER = {"sub": "mock-ann", "email": "ann@lab.example", "preferred_username": "ann", "name": "Ann Example",
             "email_verified": True}
IDP_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)


# ---- The real identity provider process ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mock_idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """oidc-provider-mock as its own process (uvicorn inside), with one predefined user."""
    port = free_port()
    log = (tmp_path_factory.mktemp("idp") / "idp.log").open("wb")
    exe = Path(sys.executable).parent / "oidc-provider-mock"
    proc = subprocess.Popen([str(exe), "--port", str(port), "--require-nonce", "true",
                             "--user-claims", json.dumps(MOCK_USER)],
                            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "NO_COLOR": "1"})
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"oidc-provider-mock exited with {proc.returncode}")
        try:
            return httpx.get(base + "/.well-known/openid-configuration", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(ready, "oidc-provider-mock to listen")
        yield base
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


# ---- A hand-written provider for what a real one never does: forged and broken ID tokens -------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class FakeIdP:
    """Discovery, JWKS, an authorization endpoint that approves at once, and a token endpoint that checks the client
    secret, the code, the redirect URI and the PKCE verifier, then returns an ID token shaped by `mode`."""

    def __init__(self) -> None:
        self.mode = "good"
        self.claims: dict[str, Any] = {"sub": "fake-fay", "email": "fay@lab.example", "email_verified": True,
                                       "preferred_username": "fay"}
        self.issuer_override: str | None = None
        self.discovery_hits = 0
        self.codes: dict[str, dict[str, str]] = {}
        self.token_requests: list[dict[str, str]] = []
        self.last_id_token: str | None = None
        idp = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _json(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                if url.path == "/.well-known/openid-configuration":
                    idp.discovery_hits += 1
                    self._json(200, {"issuer": idp.issuer_override or idp.base,
                                     "authorization_endpoint": idp.base + "/authorize",
                                     "token_endpoint": idp.base + "/token", "jwks_uri": idp.base + "/jwks",
                                     "response_types_supported": ["code"],
                                     "id_token_signing_alg_values_supported": ["RS256", "HS256", "none"]})
                elif url.path == "/jwks":
                    jwk = jwt.algorithms.RSAAlgorithm.to_jwk(IDP_KEY.public_key(), as_dict=True)
                    self._json(200, {"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]})
                elif url.path == "/authorize":
                    code = secrets.token_urlsafe(16)
                    idp.codes[code] = query
                    target = query["redirect_uri"] + "?" + urlencode({"code": code, "state": query["state"]})
                    self.send_response(302)
                    self.send_header("Location", target)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                else:
                    self._json(404, {"error": "not_found"})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                idp.token_requests.append(form)
                if self.path != "/token":
                    return self._json(404, {"error": "not_found"})
                if idp.mode == "token_500":
                    self.send_response(500)
                    self.send_header("Content-Length", "5")
                    self.end_headers()
                    self.wfile.write(b"oops!")
                    return None
                expected = "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
                if self.headers.get("Authorization") != expected:
                    return self._json(401, {"error": "invalid_client"})
                flow = idp.codes.pop(form.get("code", ""), None)  # single use, like a real provider
                if flow is None or form.get("redirect_uri") != flow["redirect_uri"]:
                    return self._json(400, {"error": "invalid_grant"})
                challenge = _b64(hashlib.sha256(form.get("code_verifier", "").encode()).digest())
                if flow.get("code_challenge_method") != "S256" or challenge != flow.get("code_challenge"):
                    return self._json(400, {"error": "invalid_grant", "error_description": "PKCE check failed"})
                body: dict[str, Any] = {"access_token": secrets.token_urlsafe(16), "token_type": "Bearer",
                                        "expires_in": 300}
                if idp.mode != "no_id_token":
                    body["id_token"] = idp.last_id_token = idp.id_token(flow.get("nonce"))
                return self._json(200, body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def id_token(self, nonce: str | None) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {"iss": self.base, "aud": CLIENT_ID, "iat": now, "exp": now + 300, "nonce": nonce,
                                  **self.claims}
        mode = self.mode
        if mode == "expired":
            claims.update(iat=now - 900, exp=now - 300)  # beyond Authlib's 120 s leeway
        elif mode == "missing_exp":
            del claims["exp"]
        elif mode == "wrong_nonce":
            claims["nonce"] = "not-the-nonce"
        elif mode == "missing_nonce":
            del claims["nonce"]
        elif mode == "wrong_aud":
            claims["aud"] = "another-client"
        elif mode == "wrong_iss":
            claims["iss"] = "http://evil.example"
        elif mode == "missing_sub":
            del claims["sub"]
        if mode == "alg_none":
            header = _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": "k1"}).encode())
            return f"{header}.{_b64(json.dumps(claims).encode())}."
        if mode == "hs256_client_secret":  # the classic confusion: HMAC with a secret the client knows
            return jwt.encode(claims, CLIENT_SECRET, algorithm="HS256", headers={"kid": "k1"})
        if mode == "other_key":
            return jwt.encode(claims, OTHER_KEY, algorithm="RS256", headers={"kid": "k1"})
        if mode == "unknown_kid":
            return jwt.encode(claims, OTHER_KEY, algorithm="RS256", headers={"kid": "k2"})
        return jwt.encode(claims, IDP_KEY, algorithm="RS256", headers={"kid": "k1"})


@pytest.fixture
def fake_idp() -> Iterator[FakeIdP]:
    idp = FakeIdP()
    idp.thread.start()
    try:
        yield idp
    finally:
        idp.server.shutdown()
        idp.server.server_close()


# ---- nfhub under uvicorn ------------------------------------------------------------------------------------------


@pytest.fixture
def app_port() -> int:
    return free_port()


@pytest.fixture
def settings(settings: dict, app_port: int, mock_idp: str, fake_idp: FakeIdP) -> dict:
    def provider(description: str, base: str) -> dict:
        return {"description": description, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                "discovery_url": base + "/.well-known/openid-configuration"}

    settings.update(port=app_port, public_url=f"http://127.0.0.1:{app_port}", frontend_url=FRONTEND)
    settings["login_providers"] = {
        "openid": {"mock": provider("Institute login", mock_idp), "fake": provider("Forging IdP", fake_idp.base),
                   "down": provider("Switched off", f"http://127.0.0.1:{free_port()}")},
        "local": {"local": {"description": "Username and password"}},
    }
    return settings


@contextlib.contextmanager
def serve(app: Any, port: int) -> Iterator[str]:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()

    def started() -> bool:
        if not thread.is_alive():
            raise RuntimeError("nfhub did not start")
        return server.started

    wait_for(started, "nfhub to listen")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def live(config: nfhub_config.Config) -> Iterator[str]:
    with serve(nfhub.create_app(config), config.port) as base:
        yield base


@pytest.fixture
def browser() -> Iterator[httpx.Client]:
    with httpx.Client(follow_redirects=False, timeout=10) as client:
        yield client


def start_login(browser: httpx.Client, live: str, provider: str) -> httpx.Response:
    r = browser.get(f"{live}/api/users/openid/{provider}/login")
    assert r.status_code == 302, r.text
    assert r.headers["referrer-policy"] == "no-referrer"
    return r


def approve_at_mock(browser: httpx.Client, authorize_url: str, sub: str) -> str:
    """Fill in the mock provider's login form (field `sub`, posted back to the same URL); returns the callback URL."""
    page = browser.get(authorize_url)
    assert page.status_code == 200 and 'name="sub"' in page.text and 'method="post"' in page.text
    r = browser.post(authorize_url, data={"sub": sub})
    assert r.status_code == 302, r.text
    return r.headers["location"]


def outcome(r: httpx.Response) -> dict[str, str]:
    """The query of the final redirect to the frontend."""
    assert r.status_code == 302, r.text
    location = r.headers["location"]
    assert location.startswith(FRONTEND), location
    assert r.headers["referrer-policy"] == "no-referrer"
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def login_at_mock(browser: httpx.Client, live: str, sub: str) -> dict[str, str]:
    authorize = start_login(browser, live, "mock").headers["location"]
    return outcome(browser.get(approve_at_mock(browser, authorize, sub)))


def login_at_fake(browser: httpx.Client, live: str) -> dict[str, str]:
    authorize = start_login(browser, live, "fake").headers["location"]
    callback = browser.get(authorize)
    assert callback.status_code == 302
    return outcome(browser.get(callback.headers["location"]))


def me(live: str, token: str) -> httpx.Response:
    return httpx.get(f"{live}/api/users/me", headers={"x-access-token": token}, timeout=10)


def user_rows(config: nfhub_config.Config, provider: str) -> list[dict]:
    conn = open_db(config)
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM users WHERE provider = ? ORDER BY id", (provider,))]
    finally:
        conn.close()


# ---- The authorization-code flow against the real provider -------------------------------------------------------


def test_full_login_flow_then_logout(live: str, browser: httpx.Client, config: nfhub_config.Config, mock_idp: str) -> None:
    r = start_login(browser, live, "mock")
    authorize = r.headers["location"]
    assert authorize.startswith(mock_idp + "/oauth2/authorize?")
    query = {k: v[0] for k, v in parse_qs(urlsplit(authorize).query).items()}
    assert query["client_id"] == CLIENT_ID and query["response_type"] == "code"
    assert query["redirect_uri"] == f"{live}/api/users/openid/mock/callback"
    assert "openid" in query["scope"].split()
    assert query["state"] and query["nonce"]
    assert query["code_challenge_method"] == "S256" and 43 <= len(query["code_challenge"]) <= 128
    cookie = r.headers["set-cookie"].lower()
    for attribute in ("httponly", "samesite=lax", "path=/api/users/openid/", "max-age=600"):
        assert attribute in cookie

    callback = browser.get(approve_at_mock(browser, authorize, MOCK_USER["sub"]))
    assert callback.headers["cache-control"] == "no-store"
    result = outcome(callback)
    assert set(result) == {"token"}
    token = result["token"]

    user = me(live, token).json()["user"]
    assert user == {"id": user["id"], "name": "ann", "display_name": "Ann Example", "email": "ann@lab.example",
                    "provider": "openid:mock", "is_admin": False, "has_password": False}
    assert [r["subject"] for r in user_rows(config, "openid:mock")] == [MOCK_USER["sub"]]

    r = httpx.get(f"{live}/api/users/logout", headers={"x-access-token": token})
    assert r.status_code == 200 and r.content == b""
    assert me(live, token).status_code == 401


def test_second_login_updates_the_same_user(live: str, browser: httpx.Client, config: nfhub_config.Config,
                                            mock_idp: str) -> None:
    sub = "mock-" + secrets.token_hex(4)
    httpx.put(f"{mock_idp}/users/{sub}", json={"email": "old@lab.example", "preferred_username": "bea"})
    first = me(live, login_at_mock(browser, live, sub)["token"]).json()["user"]
    httpx.put(f"{mock_idp}/users/{sub}", json={"email": "new@lab.example", "email_verified": True,
                                                "preferred_username": "renamed"})
    second = me(live, login_at_mock(browser, live, sub)["token"]).json()["user"]
    assert second["id"] == first["id"] and second["name"] == "bea"
    assert second["email"] == "new@lab.example"
    assert len(user_rows(config, "openid:mock")) == 1


def test_user_name_taken_gets_a_suffix(live: str, browser: httpx.Client, mock_idp: str, make_user) -> None:
    make_user("dora")
    subs = ["mock-" + secrets.token_hex(4) for _ in range(2)]
    names = []
    for sub in subs:
        httpx.put(f"{mock_idp}/users/{sub}", json={"email": f"{sub}@lab.example", "preferred_username": "dora"})
        names.append(me(live, login_at_mock(browser, live, sub)["token"]).json()["user"]["name"])
    assert names == ["dora-2", "dora-3"]


def test_wrong_state_gives_no_token(live: str, browser: httpx.Client, config: nfhub_config.Config) -> None:
    authorize = start_login(browser, live, "mock").headers["location"]
    callback = approve_at_mock(browser, authorize, MOCK_USER["sub"])
    parts = urlsplit(callback)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    for bad in ({**query, "state": "forged"}, {"code": query["code"]}):
        r = browser.get(f"{live}{parts.path}?{urlencode(bad)}")
        assert outcome(r) == {"error": "invalid_state"}
    assert user_rows(config, "openid:mock") == []


def test_replayed_callback_is_refused(live: str, browser: httpx.Client) -> None:
    authorize = start_login(browser, live, "mock").headers["location"]
    callback = approve_at_mock(browser, authorize, MOCK_USER["sub"])
    flow_cookie = dict(browser.cookies)  # the signed flow cookie as it was before the callback
    assert "token" in outcome(browser.get(callback))
    assert outcome(browser.get(callback)) == {"error": "invalid_state"}
    # An attacker holding a copy of the old cookie cannot replay it either (the cookie itself cannot be revoked).
    with httpx.Client(cookies=flow_cookie, follow_redirects=False) as other:
        assert outcome(other.get(callback)) == {"error": "invalid_state"}


def test_callback_in_another_browser_is_refused(live: str, browser: httpx.Client, config: nfhub_config.Config) -> None:
    # Login CSRF: the attacker's own callback URL, opened in the victim's browser, must not log the victim in.
    authorize = start_login(browser, live, "mock").headers["location"]
    callback = approve_at_mock(browser, authorize, MOCK_USER["sub"])
    with httpx.Client(follow_redirects=False) as victim:
        assert outcome(victim.get(callback)) == {"error": "invalid_state"}
    assert user_rows(config, "openid:mock") == []


def test_newer_login_in_another_tab_wins(live: str, browser: httpx.Client) -> None:
    tab_a = start_login(browser, live, "mock").headers["location"]
    tab_b = start_login(browser, live, "mock").headers["location"]
    callback_a = approve_at_mock(browser, tab_a, MOCK_USER["sub"])
    callback_b = approve_at_mock(browser, tab_b, MOCK_USER["sub"])
    assert outcome(browser.get(callback_a)) == {"error": "invalid_state"}
    assert "token" in outcome(browser.get(callback_b))


def test_denied_at_provider(live: str, browser: httpx.Client, config: nfhub_config.Config) -> None:
    authorize = start_login(browser, live, "mock").headers["location"]
    r = browser.post(authorize, data={"action": "deny"})
    assert r.status_code == 302
    assert outcome(browser.get(r.headers["location"])) == {"error": "access_denied"}
    assert user_rows(config, "openid:mock") == []


def test_provider_error_text_is_not_echoed(live: str, browser: httpx.Client) -> None:
    r = browser.get(f"{live}/api/users/openid/mock/callback",
                    params={"error": "<script>alert(1)</script>", "error_description": "<script>x</script>"})
    assert outcome(r) == {"error": "login_failed"}
    assert "script" not in r.headers["location"]


def test_unknown_provider_is_404(live: str, browser: httpx.Client) -> None:
    for step in ("login", "callback"):
        r = browser.get(f"{live}/api/users/openid/nowhere/{step}")
        assert r.status_code == 404 and r.json() == {"error": "unknown login provider"}


def test_provider_down_is_a_clear_error(live: str, browser: httpx.Client) -> None:
    r = browser.get(f"{live}/api/users/openid/down/login")
    assert outcome(r) == {"error": "provider_unavailable"}
    assert browser.get(f"{live}/api/health").status_code == 200
    # Still works for the providers that are up.
    assert start_login(browser, live, "mock").status_code == 302


def test_login_providers_from_config(live: str) -> None:
    assert httpx.get(f"{live}/api/users/login-providers").json() == {
        "openid": {"mock": "Institute login", "fake": "Forging IdP", "down": "Switched off"},
        "local": {"local": "Username and password"}}


# ---- Forged and broken ID tokens ---------------------------------------------------------------------------------


def test_fake_provider_happy_path_checks_pkce_and_caches_discovery(live: str, browser: httpx.Client,
                                                                   fake_idp: FakeIdP) -> None:
    first = login_at_fake(browser, live)
    second = login_at_fake(browser, live)
    assert me(live, first["token"]).json()["user"]["name"] == "fay"
    assert me(live, second["token"]).status_code == 200
    assert fake_idp.discovery_hits == 1  # fetched once, not per request
    assert all(len(t["code_verifier"]) >= 43 for t in fake_idp.token_requests)


def test_id_token_is_not_an_api_token(live: str, browser: httpx.Client, fake_idp: FakeIdP) -> None:
    login_at_fake(browser, live)
    assert fake_idp.last_id_token
    assert me(live, fake_idp.last_id_token).status_code == 401


BAD_ID_TOKENS = ["other_key", "unknown_kid", "alg_none", "hs256_client_secret", "expired", "missing_exp",
                 "wrong_nonce", "missing_nonce", "wrong_aud", "wrong_iss", "missing_sub", "no_id_token"]


def test_bad_id_tokens_are_refused(live: str, browser: httpx.Client, fake_idp: FakeIdP, config: nfhub_config.Config) -> None:
    # One server for all cases (each case is a full login; a server per case would triple the time).
    results = {}
    for mode in BAD_ID_TOKENS:
        fake_idp.mode = mode
        results[mode] = login_at_fake(browser, live)
    assert results == {mode: {"error": "invalid_id_token"} for mode in BAD_ID_TOKENS}
    assert user_rows(config, "openid:fake") == []
    fake_idp.mode = "good"  # the same server still logs in a valid token afterwards
    assert "token" in login_at_fake(browser, live)


def test_token_endpoint_failure_is_provider_unavailable(live: str, browser: httpx.Client, fake_idp: FakeIdP) -> None:
    fake_idp.mode = "token_500"
    assert login_at_fake(browser, live) == {"error": "provider_unavailable"}


def test_issuer_must_match_discovery_url(live: str, browser: httpx.Client, fake_idp: FakeIdP) -> None:
    fake_idp.issuer_override = "http://evil.example"
    assert outcome(browser.get(f"{live}/api/users/openid/fake/login")) == {"error": "provider_misconfigured"}
    fake_idp.issuer_override = None  # fixed at the provider: the next login fetches the document again
    assert "token" in login_at_fake(browser, live)


def test_unverified_email_is_not_stored_nor_named_after(live: str, browser: httpx.Client, fake_idp: FakeIdP) -> None:
    fake_idp.claims = {"sub": "fake-eve", "email": "boss@lab.example", "email_verified": False}
    user = me(live, login_at_fake(browser, live)["token"]).json()["user"]
    assert user["email"] is None and user["name"] == "user"


def test_disabled_user_cannot_log_in(live: str, browser: httpx.Client, config: nfhub_config.Config) -> None:
    token = login_at_fake(browser, live)["token"]
    conn = open_db(config)
    conn.execute("UPDATE users SET disabled = 1 WHERE provider = 'openid:fake'")
    conn.close()
    assert me(live, token).status_code == 401
    assert login_at_fake(browser, live) == {"error": "account_disabled"}


def test_admin_by_email_setting(settings: dict, config_file: Path, browser: httpx.Client, tmp_path: Path) -> None:
    import yaml

    settings["admins"] = ["fay@lab.example"]
    path = tmp_path / "admins.yaml"
    path.write_text(yaml.safe_dump(settings))
    config = nfhub_config.load_config(path, environ={})
    with serve(nfhub.create_app(config), config.port) as live:
        token = login_at_fake(browser, live)["token"]
        assert me(live, token).json()["user"]["is_admin"] is True


def test_admin_names_are_never_given_to_provider_users(settings: dict, browser: httpx.Client, tmp_path: Path,
                                                       fake_idp: FakeIdP) -> None:
    import yaml

    # preferred_username is often chosen by the user at the provider: it must not match an admin by name.
    settings["admins"] = ["boss"]
    path = tmp_path / "admins.yaml"
    path.write_text(yaml.safe_dump(settings))
    config = nfhub_config.load_config(path, environ={})
    fake_idp.claims = {"sub": "fake-boss", "preferred_username": "boss"}
    with serve(nfhub.create_app(config), config.port) as live:
        user = me(live, login_at_fake(browser, live)["token"]).json()["user"]
    assert user["name"] == "boss-2" and user["is_admin"] is False


def test_unverified_email_grants_nothing(settings: dict, browser: httpx.Client, tmp_path: Path,
                                         fake_idp: FakeIdP) -> None:
    """A provider that does not vouch for the address (no email_verified) cannot make someone an admin by it."""
    import yaml

    settings["admins"] = ["fay@lab.example"]
    path = tmp_path / "admins.yaml"
    path.write_text(yaml.safe_dump(settings))
    fake_idp.claims = {"sub": "fake-mallory", "email": "fay@lab.example", "preferred_username": "mallory"}
    config = nfhub_config.load_config(path, environ={})
    with serve(nfhub.create_app(config), config.port) as live:
        user = me(live, login_at_fake(browser, live)["token"]).json()["user"]
        assert user["is_admin"] is False and user["email"] is None
