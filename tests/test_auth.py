"""Users over HTTP against the real app: local login, logout, personal tokens, identity, sharing, access matrix."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path

import jwt
import pytest
from starlette.testclient import TestClient

import nfhub
import nfhub_auth
import nfhub_config
import nfhub_store
from conftest import open_db

PASSWORD = "correct horse battery"


@pytest.fixture(autouse=True)
def cheap_scrypt(monkeypatch: pytest.MonkeyPatch) -> None:
    # The cost parameters travel inside each hash, so a cheaper cost changes speed, not behaviour.
    monkeypatch.setitem(nfhub_auth._SCRYPT, "n", 2**10)


def create(client: TestClient, headers: dict, name: str = "exp1") -> int:
    r = client.post("/api/projects/create", json={"name": name}, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()["project"]["id"]


def login(client: TestClient, username: str, password: str = PASSWORD, provider: str = "local"):
    return client.post(f"/api/users/local/{provider}/login", json={"username": username, "password": password})


def execute(config: nfhub_config.Config, sql: str, params: tuple = ()) -> None:
    conn = open_db(config)
    try:
        conn.execute(sql, params)
    finally:
        conn.close()


def bearer(token: str) -> dict[str, str]:
    return {"x-access-token": token}


# ---- Login providers and local login ------------------------------------------------------------------------------


def test_login_providers_lists_descriptions_never_secrets(settings: dict, config_file, tmp_path) -> None:
    settings["login_providers"] = {
        "openid": {"institute": {"description": "Institute login", "client_id": "nfhub", "client_secret": "s3cr3t",
                                 "discovery_url": "http://127.0.0.1:9/.well-known/openid-configuration"}},
        "local": {"local": {"description": "Username and password"}},
    }
    config = nfhub_config.load_config(_write(tmp_path, settings), environ={})
    with TestClient(nfhub.create_app(config)) as client:
        r = client.get("/api/users/login-providers")
    assert r.status_code == 200
    assert r.json() == {"openid": {"institute": "Institute login"}, "local": {"local": "Username and password"}}
    assert "s3cr3t" not in r.text and "nfhub" not in r.text


def _write(tmp_path, settings: dict):
    import yaml

    path = tmp_path / "custom.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def test_local_login_issues_working_recorded_token(client: TestClient, make_user, rows) -> None:
    make_user("carol", password=PASSWORD)
    r = login(client, "carol")
    assert r.status_code == 200, r.text
    token = r.json()["token"]
    me = client.get("/api/users/me", headers=bearer(token))
    assert me.status_code == 200
    assert me.json() == {"user": {"id": me.json()["user"]["id"], "name": "carol", "display_name": None,
                                  "email": None, "provider": "local", "is_admin": False, "has_password": True}}
    claims = jwt.decode(token, options={"verify_signature": False})
    recorded = rows("SELECT kind, revoked_at, expires_at FROM tokens WHERE jti = ?", (claims["jti"],))
    assert [tuple(r) for r in recorded] == [("session", None, claims["exp"])]


@pytest.mark.parametrize("username,password", [("carol", "wrong password"), ("nobody", PASSWORD),
                                               ("oidcuser", PASSWORD), ("Carol", PASSWORD)])
def test_wrong_credentials_same_401(client: TestClient, make_user, rows, username: str, password: str) -> None:
    make_user("carol", password=PASSWORD)
    execute(client.app.state.hub.config,
            "INSERT INTO users (name, provider, subject, created_at) VALUES ('oidcuser', 'openid:x', 's', 'now')")
    r = login(client, username, password)
    assert r.status_code == 401
    assert r.json() == {"error": "wrong username or password"}
    assert rows("SELECT count(*) AS n FROM tokens")[0]["n"] == 0


def test_disabled_account_cannot_log_in(client: TestClient, make_user, config: nfhub_config.Config) -> None:
    make_user("carol", password=PASSWORD)
    execute(config, "UPDATE users SET disabled = 1 WHERE name = 'carol'")
    r = login(client, "carol")
    assert r.status_code == 401 and r.json() == {"error": "wrong username or password"}


@pytest.mark.parametrize("body", [{}, {"username": "carol"}, {"password": PASSWORD}, {"username": 1, "password": "x"},
                                  {"username": "carol", "password": ["x"]}, {"username": "", "password": "x"}])
def test_local_login_bad_body_is_422(client: TestClient, body: dict) -> None:
    r = client.post("/api/users/local/local/login", json=body)
    assert r.status_code == 422 and "error" in r.json()


def test_unknown_local_provider_is_404(client: TestClient, make_user) -> None:
    make_user("carol", password=PASSWORD)
    assert login(client, "carol", provider="elsewhere").status_code == 404


def test_local_login_disabled_when_not_configured(settings: dict, tmp_path, make_user) -> None:
    settings["login_providers"] = {"openid": {"idp": {"client_id": "c",
                                                      "discovery_url": "http://127.0.0.1:9/.well-known/x"}}}
    config = nfhub_config.load_config(_write(tmp_path, settings), environ={})
    with TestClient(nfhub.create_app(config)) as client:
        assert login(client, "carol").status_code == 404


def test_failed_logins_rate_limited_per_username(client: TestClient, make_user) -> None:
    make_user("carol", password=PASSWORD)
    for _ in range(nfhub_auth.LOGIN_ATTEMPTS):
        assert login(client, "carol", "bad guess").status_code == 401
    r = login(client, "carol", "bad guess")
    assert r.status_code == 429
    assert 1 <= int(r.headers["retry-after"]) <= nfhub_auth.LOGIN_WINDOW
    # Even the right password is refused while the limit holds: guessing cannot continue.
    assert login(client, "carol").status_code == 429


def test_failed_logins_rate_limited_per_client(client: TestClient, make_user) -> None:
    make_user("carol", password=PASSWORD)
    for i in range(nfhub_auth.LOGIN_ATTEMPTS):
        assert login(client, f"user{i}", "bad guess").status_code == 401
    r = login(client, "carol")
    assert r.status_code == 429 and "retry-after" in r.headers


def test_successful_login_does_not_use_up_the_limit(client: TestClient, make_user) -> None:
    make_user("carol", password=PASSWORD)
    for _ in range(nfhub_auth.LOGIN_ATTEMPTS + 2):
        assert login(client, "carol").status_code == 200


def test_rate_limiter_window() -> None:
    limiter = nfhub_auth.RateLimiter(2, 0.2)
    limiter.hit("k")
    assert limiter.retry_after("k") == 0
    limiter.hit("k")
    assert limiter.retry_after("k") == 1
    deadline = time.monotonic() + 5
    while limiter.retry_after("k") and time.monotonic() < deadline:
        time.sleep(0.02)  # waiting for the window itself to pass is the behaviour under test
    assert limiter.retry_after("k") == 0


# ---- Password change ---------------------------------------------------------------------------------------------


def test_change_password(client: TestClient, make_user) -> None:
    token = make_user("carol", password=PASSWORD)
    r = client.post("/api/users/password", json={"old_password": "wrong one", "new_password": "new password 1"},
                    headers=bearer(token))
    assert r.status_code == 403
    assert login(client, "carol").status_code == 200
    r = client.post("/api/users/password", json={"old_password": PASSWORD, "new_password": "new password 1"},
                    headers=bearer(token))
    assert r.status_code == 200, r.text
    assert login(client, "carol").status_code == 401
    assert login(client, "carol", "new password 1").status_code == 200


@pytest.mark.parametrize("new", ["short", "", None, 12345678, "x" * 1025])
def test_change_password_rejects_weak_new_password(client: TestClient, make_user, new) -> None:
    token = make_user("carol", password=PASSWORD)
    r = client.post("/api/users/password", json={"old_password": PASSWORD, "new_password": new},
                    headers=bearer(token))
    assert r.status_code == 422 and "new_password" in r.json()["details"]
    assert login(client, "carol").status_code == 200


def test_change_password_requires_old_and_login(client: TestClient, make_user) -> None:
    token = make_user("carol", password=PASSWORD)
    assert client.post("/api/users/password", json={"new_password": "new password 1"}).status_code == 401
    r = client.post("/api/users/password", json={"new_password": "new password 1"}, headers=bearer(token))
    assert r.status_code == 422


def test_token_only_account_sets_first_password(client: TestClient, make_user) -> None:
    token = make_user("root", admin=True)
    r = client.post("/api/users/password", json={"new_password": "first password"}, headers=bearer(token))
    assert r.status_code == 200
    assert login(client, "root", "first password").status_code == 200


def test_wrong_old_password_is_rate_limited(client: TestClient, make_user) -> None:
    token = make_user("carol", password=PASSWORD)
    for _ in range(nfhub_auth.LOGIN_ATTEMPTS):
        r = client.post("/api/users/password", json={"old_password": "guess", "new_password": "new password 1"},
                        headers=bearer(token))
        assert r.status_code == 403
    r = client.post("/api/users/password", json={"old_password": PASSWORD, "new_password": "new password 1"},
                    headers=bearer(token))
    assert r.status_code == 429


# ---- Logout ------------------------------------------------------------------------------------------------------


def test_logout_revokes_token_for_api_clients(client: TestClient, alice: dict, rows) -> None:
    assert client.get("/api/users/me", headers=alice).status_code == 200
    r = client.get("/api/users/logout", headers=alice)
    assert r.status_code == 200 and r.content == b""
    for path in ("/api/users/me", "/api/projects", "/api/users/tokens"):
        assert client.get(path, headers=alice).status_code == 401
    assert client.get("/api/users/logout", headers=alice).status_code == 401
    jti = jwt.decode(alice["x-access-token"], options={"verify_signature": False})["jti"]
    assert rows("SELECT revoked_at FROM tokens WHERE jti = ?", (jti,))[0]["revoked_at"] is not None


def test_logout_redirects_browsers(client: TestClient, alice: dict, config: nfhub_config.Config) -> None:
    r = client.get("/api/users/logout", headers={**alice, "accept": "text/html,application/xhtml+xml"},
                   follow_redirects=False)
    assert r.status_code == 302
    assert r.headers["location"] == config.base_url + "/"
    assert "token" not in r.headers["location"]
    assert client.get("/api/users/me", headers=alice).status_code == 401


@pytest.mark.parametrize("headers", [{}, {"x-access-token": "garbage"}, {"accept": "text/html"}])
def test_logout_without_valid_token_is_401(client: TestClient, headers: dict) -> None:
    r = client.get("/api/users/logout", headers=headers, follow_redirects=False)
    assert r.status_code == 401 and r.json()["error"]


def test_revocation_survives_restart(config: nfhub_config.Config, make_user) -> None:
    with TestClient(nfhub.create_app(config)) as client:
        token = make_user("carol")
        assert client.get("/api/users/logout", headers=bearer(token)).status_code == 200
    with TestClient(nfhub.create_app(config)) as client:
        assert client.get("/api/users/me", headers=bearer(token)).status_code == 401


def signed(config: nfhub_config.Config, **claims) -> str:
    """A token signed with the app's real key, with chosen claims (e.g. issued earlier than now)."""
    now = int(time.time())
    base = {"sub": "1", "iat": now, "exp": now + 3600, "jti": uuid.uuid4().hex, "iss": nfhub_auth.JWT_ISSUER,
            "kind": "session"}
    return jwt.encode({**base, **claims}, nfhub_config.load_secret_key(config), algorithm="HS256")


def test_logout_all_revokes_every_token(client: TestClient, make_user, config: nfhub_config.Config, rows) -> None:
    make_user("carol", password=PASSWORD)
    carol_id = str(rows("SELECT id FROM users WHERE name = 'carol'")[0]["id"])
    # Issued a minute ago and not recorded in the tokens table (like `nfhub token`): caught by tokens_valid_after.
    first = signed(config, sub=carol_id, iat=int(time.time()) - 60)
    second = login(client, "carol").json()["token"]
    personal = client.post("/api/users/tokens", json={"name": "ci"}, headers=bearer(second)).json()["token"]
    other = make_user("dave")
    assert client.post("/api/users/logout-all", headers=bearer(second)).status_code == 200
    for token in (first, second, personal):
        assert client.get("/api/users/me", headers=bearer(token)).status_code == 401
    assert client.get("/api/users/me", headers=bearer(other)).status_code == 200
    fresh = login(client, "carol").json()["token"]
    assert client.get("/api/users/me", headers=bearer(fresh)).status_code == 200


# ---- Identity ----------------------------------------------------------------------------------------------------


def test_me_says_when_there_is_no_password_yet(client: TestClient, make_user) -> None:
    me = client.get("/api/users/me", headers=bearer(make_user("fresh"))).json()["user"]
    assert me["has_password"] is False


def test_me_requires_token(client: TestClient) -> None:
    assert client.get("/api/users/me").status_code == 401


def test_users_list_admins_only(client: TestClient, alice: dict, make_user) -> None:
    root = bearer(make_user("root", admin=True))
    assert client.get("/api/users", headers=alice).status_code == 403
    r = client.get("/api/users", headers=root)
    assert r.status_code == 200
    users = {u["name"]: u for u in r.json()["users"]}
    assert {"alice", "root"} <= set(users)
    assert users["root"]["is_admin"] and not users["alice"]["is_admin"]
    assert "password_hash" not in r.text


def test_admins_setting_makes_admin(settings: dict, tmp_path, make_user) -> None:
    settings["admins"] = ["alice"]
    config = nfhub_config.load_config(_write(tmp_path, settings), environ={})
    with TestClient(nfhub.create_app(config)) as client:
        token = make_user("alice")
        assert client.get("/api/users/me", headers=bearer(token)).json()["user"]["is_admin"] is True
        assert client.get("/api/users", headers=bearer(token)).status_code == 200


# ---- Personal tokens ---------------------------------------------------------------------------------------------


def test_personal_token_lifecycle(client: TestClient, alice: dict, rows) -> None:
    r = client.post("/api/users/tokens", json={"name": "laptop script", "lifetime": "7d"}, headers=alice)
    assert r.status_code == 200, r.text
    created = r.json()
    token = created["token"]
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["kind"] == "personal" and claims["exp"] - claims["iat"] == 7 * 86400
    assert created["id"] == claims["jti"]
    assert client.get("/api/projects", headers=bearer(token)).status_code == 200

    listed = client.get("/api/users/tokens", headers=alice).json()["tokens"]
    assert [(t["id"], t["name"], t["revoked"], t["expired"]) for t in listed] == [
        (created["id"], "laptop script", False, False)]
    assert token not in client.get("/api/users/tokens", headers=alice).text

    r = client.post(f"/api/users/tokens/{created['id']}/revoke", headers=alice)
    assert r.status_code == 200
    for path in ("/api/projects", "/api/users/me", "/api/users/tokens"):
        assert client.get(path, headers=bearer(token)).status_code == 401
    assert client.get("/api/users/tokens", headers=alice).json()["tokens"][0]["revoked"] is True
    assert rows("SELECT kind, name FROM tokens WHERE jti = ?", (created["id"],))[0]["kind"] == "personal"


def test_personal_token_default_and_integer_lifetime(client: TestClient, alice: dict) -> None:
    default = client.post("/api/users/tokens", json={"name": "a"}, headers=alice).json()["token"]
    claims = jwt.decode(default, options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == nfhub_auth.DEFAULT_TOKEN_LIFETIME
    seconds = client.post("/api/users/tokens", json={"name": "b", "lifetime": 120}, headers=alice).json()["token"]
    claims = jwt.decode(seconds, options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 120


@pytest.mark.parametrize("body", [{"name": "x", "lifetime": "366d"}, {"name": "x", "lifetime": 10**12},
                                  {"name": "x", "lifetime": "soon"}, {"name": "x", "lifetime": -5},
                                  {"name": "x", "lifetime": True}, {"name": "x", "lifetime": [1]},
                                  {"lifetime": "1d"}, {"name": ""}, {"name": "x", "scope": "admin"}])
def test_personal_token_bad_request_is_422(client: TestClient, alice: dict, rows, body: dict) -> None:
    r = client.post("/api/users/tokens", json=body, headers=alice)
    assert r.status_code == 422, r.text
    assert rows("SELECT count(*) AS n FROM tokens")[0]["n"] == 0


def test_expired_personal_token_is_401(client: TestClient, alice: dict, config: nfhub_config.Config, rows) -> None:
    now = int(time.time())
    alice_id = str(rows("SELECT id FROM users WHERE name = 'alice'")[0]["id"])
    live = signed(config, sub=alice_id, kind="personal", iat=now - 3600)
    assert client.get("/api/projects", headers=bearer(live)).status_code == 200
    expired = signed(config, sub=alice_id, kind="personal", iat=now - 3600, exp=now - nfhub_auth.JWT_LEEWAY - 5)
    assert client.get("/api/projects", headers=bearer(expired)).status_code == 401


def test_personal_token_cannot_mint_tokens(client: TestClient, alice: dict) -> None:
    token = client.post("/api/users/tokens", json={"name": "ci"}, headers=alice).json()["token"]
    r = client.post("/api/users/tokens", json={"name": "more", "lifetime": "365d"}, headers=bearer(token))
    assert r.status_code == 403


def test_cannot_revoke_someone_elses_token(client: TestClient, alice: dict, bob: dict) -> None:
    created = client.post("/api/users/tokens", json={"name": "ci"}, headers=alice).json()
    assert client.post(f"/api/users/tokens/{created['id']}/revoke", headers=bob).status_code == 404
    assert client.get("/api/users/tokens", headers=bob).json() == {"tokens": []}
    assert client.get("/api/projects", headers=bearer(created["token"])).status_code == 200
    assert client.post("/api/users/tokens/nonexistent/revoke", headers=alice).status_code == 404


def test_personal_token_limit(client: TestClient, alice: dict, monkeypatch) -> None:
    monkeypatch.setattr(nfhub_auth, "MAX_PERSONAL_TOKENS", 2)
    for name in ("a", "b"):
        assert client.post("/api/users/tokens", json={"name": name}, headers=alice).status_code == 200
    assert client.post("/api/users/tokens", json={"name": "c"}, headers=alice).status_code == 422


# ---- Sharing -----------------------------------------------------------------------------------------------------


def test_share_read_then_write_then_unshare(client: TestClient, alice: dict, bob: dict) -> None:
    pid = create(client, alice)
    assert client.get(f"/api/projects/{pid}", headers=bob).status_code == 404
    r = client.post(f"/api/projects/{pid}/share", json={"user": "bob", "access": "read"}, headers=alice)
    assert r.status_code == 200, r.text
    listed = client.get("/api/projects", headers=bob).json()["projects"]
    assert [(p["id"], p["access"], p["owner"]) for p in listed] == [(pid, "read", "alice")]
    assert client.post(f"/api/projects/{pid}/update", json={"name": "x"}, headers=bob).status_code == 403

    client.post(f"/api/projects/{pid}/share", json={"user": "bob", "access": "write"}, headers=alice)
    assert client.get(f"/api/projects/{pid}", headers=bob).json()["project"]["access"] == "write"
    assert client.post(f"/api/projects/{pid}/update", json={"name": "x"}, headers=bob).status_code == 200
    assert client.get(f"/api/projects/{pid}/shares", headers=alice).json() == {
        "shares": [{"user": "bob", "email": None, "access": "write"}]}

    assert client.post(f"/api/projects/{pid}/unshare", json={"user": "bob"}, headers=alice).status_code == 200
    assert client.get(f"/api/projects/{pid}", headers=bob).status_code == 404
    assert client.get(f"/api/projects/{pid}/shares", headers=alice).json() == {"shares": []}


def test_share_by_email(client: TestClient, alice: dict, config: nfhub_config.Config) -> None:
    execute(config, "INSERT INTO users (name, email, provider, subject, created_at)"
                    " VALUES ('ann', 'Ann@Lab.example', 'openid:idp', 'sub-1', 'now')")
    pid = create(client, alice)
    r = client.post(f"/api/projects/{pid}/share", json={"user": "ann@lab.example", "access": "read"}, headers=alice)
    assert r.status_code == 200
    assert client.get(f"/api/projects/{pid}/shares", headers=alice).json()["shares"][0]["user"] == "ann"


@pytest.mark.parametrize("body,field", [({"user": "nobody", "access": "read"}, "user"),
                                        ({"user": "alice", "access": "read"}, "user"),
                                        ({"user": "bob", "access": "admin"}, "access"),
                                        ({"user": "bob"}, "access"), ({"access": "read"}, "user"),
                                        ({"user": 5, "access": "read"}, "user")])
def test_share_bad_request_is_422(client: TestClient, alice: dict, bob: dict, rows, body: dict, field: str) -> None:
    pid = create(client, alice)
    r = client.post(f"/api/projects/{pid}/share", json=body, headers=alice)
    assert r.status_code == 422, r.text
    assert field in r.json()["details"]
    assert rows("SELECT count(*) AS n FROM shares")[0]["n"] == 0


def test_share_ambiguous_email_is_422(client: TestClient, alice: dict, config: nfhub_config.Config) -> None:
    for name in ("x1", "x2"):
        execute(config, "INSERT INTO users (name, email, created_at) VALUES (?, 'same@lab.example', 'now')", (name,))
    pid = create(client, alice)
    r = client.post(f"/api/projects/{pid}/share", json={"user": "same@lab.example", "access": "read"}, headers=alice)
    assert r.status_code == 422


def test_shares_removed_with_project(client: TestClient, alice: dict, bob: dict, rows) -> None:
    pid = create(client, alice)
    client.post(f"/api/projects/{pid}/share", json={"user": "bob", "access": "write"}, headers=alice)
    assert client.post(f"/api/projects/{pid}/delete", headers=alice).status_code == 200
    assert rows("SELECT count(*) AS n FROM shares")[0]["n"] == 0


# ---- The access matrix -------------------------------------------------------------------------------------------
# Every project endpoint × every relation to the project. Add a row to ENDPOINTS and EXPECTED for each new endpoint;
# test_matrix_covers_every_project_route fails until you do.

ROLES = ("owner", "write", "read", "stranger", "admin")
# name: (method, path, keyword arguments for the request)
ENDPOINTS: dict[str, tuple[str, str, dict]] = {
    "get": ("GET", "/api/projects/{id}", {}),
    "update": ("POST", "/api/projects/{id}/update", {"json": {"name": "renamed"}}),
    "delete": ("POST", "/api/projects/{id}/delete", {}),
    "share": ("POST", "/api/projects/{id}/share", {"json": {"user": "extra", "access": "read"}}),
    "unshare": ("POST", "/api/projects/{id}/unshare", {"json": {"user": "reader"}}),
    "shares": ("GET", "/api/projects/{id}/shares", {}),
    "files": ("GET", "/api/projects/{id}/files", {"params": {"dir": ""}}),
    "download": ("GET", "/api/projects/{id}/download", {"params": {"path": "data.txt"}}),
    "upload-file": ("POST", "/api/projects/{id}/upload-file", {"files": {"file": ("new.txt", b"hello")}}),
    "upload-status": ("GET", "/api/projects/{id}/upload-status", {"params": {"path": "new.txt"}}),
    "delete-path": ("POST", "/api/projects/{id}/delete-path", {"json": {"path": "data.txt"}}),
    "create-folder": ("POST", "/api/projects/{id}/create-folder", {"json": {"path": "new folder"}}),
    "view-link": ("POST", "/api/projects/{id}/view-link", {"json": {"path": "data.txt"}}),
    # No pipeline is chosen, so an allowed caller gets 422 from the step after the access check (no run starts).
    "schedule": ("POST", "/api/projects/{id}/schedule", {"json": {}}),
    "cancel": ("POST", "/api/projects/{id}/cancel", {}),
    "events": ("GET", "/api/projects/{id}/events", {}),
    "runs": ("GET", "/api/projects/{id}/runs", {}),
    "run": ("GET", "/api/projects/{id}/runs/{run_id}", {}),
    "run-tasks": ("GET", "/api/projects/{id}/runs/{run_id}/tasks", {}),
    "run-log": ("GET", "/api/projects/{id}/runs/{run_id}/log", {}),
    "run-clean": ("POST", "/api/projects/{id}/runs/{run_id}/clean", {}),
    # Nextflow's and the worker's endpoints take the run's secret; a user token, whoever's, gets nowhere.
    "nextflow-log": ("POST", "/api/projects/{id}/nextflow-log", {"json": {"event": "started"}}),
    "finished": ("POST", "/api/projects/{id}/finished", {"json": {"exit_code": 0}}),
}


def _row(owner: int | None, write: int | None, read: int | None, stranger: int | None, admin: int | None) -> dict:
    return dict(zip(ROLES, (owner, write, read, stranger, admin), strict=True))


_READ = _row(200, 200, 200, 404, 200)
_WRITE = _row(200, 200, 403, 404, 200)
_OWNER = _row(200, 403, 403, 404, 200)
# None: the request is not made for that role (an event stream never ends); refusals are still checked.
EXPECTED: dict[str, dict[str, int | None]] = {
    "get": _READ, "update": _WRITE, "delete": _OWNER, "share": _OWNER, "unshare": _OWNER, "shares": _READ,
    "files": _READ, "download": _READ, "upload-file": _WRITE, "upload-status": _WRITE, "delete-path": _WRITE,
    "create-folder": _WRITE, "view-link": _READ, "schedule": _row(422, 422, 403, 404, 422), "cancel": _WRITE,
    "events": _row(None, None, None, 404, None), "runs": _READ, "run": _READ, "run-tasks": _READ,
    "run-log": _READ, "run-clean": _WRITE,
    "nextflow-log": _row(401, 401, 401, 401, 401), "finished": _row(403, 403, 403, 403, 403),
}


@pytest.fixture
def matrix(client: TestClient, make_user: Callable[..., str], config: nfhub_config.Config) -> dict:
    """Users for every role, and `new()`: a fresh project owned by 'owner' with a file and a finished run, shared
    read with 'reader' and write with 'writer' (fresh per request, so that deleting one leaves the next intact)."""
    tokens = {"owner": make_user("owner"), "write": make_user("writer"), "read": make_user("reader"),
              "stranger": make_user("stranger"), "admin": make_user("root", admin=True)}
    make_user("extra")
    headers = {role: bearer(token) for role, token in tokens.items()}

    def new() -> dict:
        pid = create(client, headers["owner"])
        for user, access in (("writer", "write"), ("reader", "read")):
            r = client.post(f"/api/projects/{pid}/share", json={"user": user, "access": access},
                            headers=headers["owner"])
            assert r.status_code == 200
        (nfhub_config.project_dir(config, pid) / "data.txt").write_text("some data\n")
        conn = open_db(config)
        try:
            cur = conn.execute("INSERT INTO runs (project_id, status, nextflow_project, run_name, secret_hash,"
                               " created_at) VALUES (?, 'succeeded', 'hello', 'nfhub-matrix', 'x', ?)",
                               (pid, nfhub_store.now_iso()))
            run_id = cur.lastrowid
        finally:
            conn.close()
        return {"id": pid, "run_id": run_id, "folder": nfhub_config.project_dir(config, pid)}

    return {"headers": headers, "new": new}


def _snapshot(rows, folder: Path) -> list:
    tables = [tuple(r) for table in ("projects", "shares", "runs") for r in rows(f"SELECT * FROM {table}")]
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else None
    return [tables, files]


def test_matrix_covers_every_project_route() -> None:
    config = nfhub_config.Config(pipelines=str(Path(__file__).resolve().parent.parent / "nextflow_projects.yaml"))
    app = nfhub.create_app(config)
    project_routes = {r.path.replace(":int}", "}") for r in app.routes
                      if getattr(r, "path", "").startswith("/api/projects/{id")}
    # A view link's ticket is its credential (checked against the project's access when used): tested in
    # test_projects.py::test_view_links_show_reports_inline_and_sandboxed.
    ticket_routes = {"/api/projects/{id}/view/{ticket}/{path:path}"}
    assert project_routes - {path for _, path, _ in ENDPOINTS.values()} - ticket_routes == set()


@pytest.mark.parametrize("endpoint", sorted(ENDPOINTS))
def test_access_matrix(client: TestClient, matrix: dict, rows, endpoint: str) -> None:
    method, path, kwargs = ENDPOINTS[endpoint]
    got: dict[str, int | None] = {}
    for role in ROLES:
        if EXPECTED[endpoint][role] is None:
            got[role] = None
            continue
        project = matrix["new"]()
        before = _snapshot(rows, project["folder"])
        url = path.format(id=project["id"], run_id=project["run_id"])
        r = client.request(method, url, headers=matrix["headers"][role], **kwargs)
        got[role] = r.status_code
        if r.status_code >= 400:  # a refusal changes nothing and says why
            assert _snapshot(rows, project["folder"]) == before, (endpoint, role)
            assert r.json()["error"], (endpoint, role)
    assert got == EXPECTED[endpoint]


@pytest.mark.parametrize("role", ROLES)
def test_access_matrix_listing(client: TestClient, matrix: dict, role: str) -> None:
    project = matrix["new"]()
    headers = matrix["headers"][role]
    listed = client.get("/api/projects", headers=headers).json()["projects"]
    count = client.get("/api/projects/count", headers=headers).json()["count"]
    expected = {"owner": "owner", "write": "write", "read": "read", "stranger": None, "admin": "admin"}[role]
    assert [p["access"] for p in listed if p["id"] == project["id"]] == ([expected] if expected else [])
    assert count == len(listed)


def test_access_matrix_without_token(client: TestClient, matrix: dict, rows) -> None:
    project = matrix["new"]()
    before = _snapshot(rows, project["folder"])
    for method, path, kwargs in ENDPOINTS.values():
        r = client.request(method, path.format(id=project["id"], run_id=project["run_id"]), **kwargs)
        assert r.status_code == 401, (path, r.text)
    assert _snapshot(rows, project["folder"]) == before


# ---- OpenAPI -----------------------------------------------------------------------------------------------------


def test_openapi_documents_every_route(client: TestClient) -> None:
    doc = client.get("/api/openapi.json").json()
    for route in nfhub_auth.routes():
        path = route.path.replace("{id:int}", "{id}")
        assert path in doc["paths"], path
        for method in route.methods - {"HEAD"}:
            assert method.lower() in doc["paths"][path], (method, path)
