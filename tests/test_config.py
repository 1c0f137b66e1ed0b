"""Settings precedence and validation, JWT rules, and the command line (`nfhub ...` as a user runs it)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import jwt
import pytest
import yaml
from starlette.testclient import TestClient

import nfhub
import nfhub_auth
import nfhub_config
import nfhub_http
import nfhub_store
from conftest import open_db

ROOT = Path(__file__).resolve().parent.parent


def test_precedence(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"port": 9000, "host": "0.0.0.0", "max_concurrent_runs": 3}))
    config = nfhub_config.load_config(cfg, {"port": 9100}, environ={"NFHUB_HOST": "127.0.0.2", "NFHUB_ADMINS": "a, b"})
    assert (config.port, config.host, config.max_concurrent_runs, config.admins) == (9100, "127.0.0.2", 3, ["a", "b"])
    assert nfhub_config.load_config(None, environ={"NFHUB_CONFIG": str(cfg)}).port == 9000
    assert nfhub_config.load_config(None, environ={}).port == 8000


@pytest.mark.parametrize("content,message", [
    ({"prot": 1}, "unknown setting 'prot'"),
    ({"port": "80"}, "setting 'port'"),
    ({"max_concurrent_runs": True}, "max_concurrent_runs"),
    ({"admins": "alice"}, "setting 'admins'"),
    ({"token_lifetime": "forever"}, "token_lifetime"),
    ({"secret_key": "short"}, "secret_key"),
    ({"login_providers": {"saml": {}}}, "saml"),
    ({"login_providers": {"openid": {"x": {"client_id": "a"}}}}, "discovery_url"),
    ([1, 2], "mapping"),
])
def test_bad_settings_name_the_key(tmp_path: Path, content, message: str) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(content))
    with pytest.raises(nfhub_config.StartupError, match=message):
        nfhub_config.load_config(cfg, environ={})


def test_unknown_env_setting(tmp_path: Path) -> None:
    with pytest.raises(nfhub_config.StartupError, match="NFHUB_PROT"):
        nfhub_config.load_config(None, environ={"NFHUB_PROT": "1"})


def test_redacted() -> None:
    config = nfhub_config.Config(secret_key="s" * 40, login_providers={
        "openid": {"x": {"client_id": "id", "client_secret": "hush", "discovery_url": "http://x"}}})
    shown = nfhub_config.redacted(config)
    assert shown["secret_key"] == "***"
    assert shown["login_providers"]["openid"]["x"]["client_secret"] == "***"
    assert shown["login_providers"]["openid"]["x"]["client_id"] == "id"


def test_secret_key_generated_once_mode_0600(tmp_path: Path) -> None:
    config = nfhub_config.Config(data_dir=str(tmp_path / "d"))
    key = nfhub_config.load_secret_key(config)
    path = tmp_path / "d" / "secret_key"
    assert len(key) >= 32 and path.stat().st_mode & 0o777 == 0o600
    assert nfhub_config.load_secret_key(config) == key


# ---- tokens ---------------------------------------------------------------------------------------------------------

def _sign(claims: dict, key: str = "test-secret-key-that-is-at-least-32-bytes-long", alg: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=alg)


def _claims(**over) -> dict:
    now = int(time.time())
    claims = {"sub": "1", "iat": now, "exp": now + 600, "jti": "j1", "iss": "nfhub"}
    claims.update(over)
    return {k: v for k, v in claims.items() if v is not None}


@pytest.mark.parametrize("token", [
    "", "garbage", "a.b", "a.b.c",
    _sign(_claims(exp=int(time.time()) - 100)),
    _sign(_claims(exp=None)), _sign(_claims(iat=None)), _sign(_claims(jti=None)), _sign(_claims(sub=None)),
    _sign(_claims(iss="someone-else")),
    _sign(_claims(), key="another-key-that-is-also-long-enough-1234"),
    _sign(_claims(), key="k" * 64, alg="HS512"),
    _sign(_claims(iat=int(time.time()) + 600, exp=int(time.time()) + 1200)),
    _sign(_claims(exp=int(time.time()) + 10 * 365 * 86400)),
    jwt.encode(_claims(), None, algorithm="none"),
    "x" * 100_000,
], ids=["empty", "garbage", "two-parts", "bad-b64", "expired", "no-exp", "no-iat", "no-jti", "no-sub", "wrong-iss",
        "wrong-key", "hs512", "future-iat", "too-long-lifetime", "alg-none", "huge"])
def test_bad_tokens_are_401(client: TestClient, make_user, token: str) -> None:
    make_user("alice")  # user id 1 exists, so only the token itself is wrong
    r = client.get("/api/projects", headers={"x-access-token": token})
    assert r.status_code == 401 and r.json()["error"]


def test_tampered_token_is_401(client: TestClient, make_user) -> None:
    token = make_user("alice")
    make_user("bob")
    header, payload, sig = token.split(".")
    import base64
    import json

    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["sub"] = "2"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    assert client.get("/api/projects", headers={"x-access-token": token}).status_code == 200
    assert client.get("/api/projects", headers={"x-access-token": f"{header}.{forged}.{sig}"}).status_code == 401


def test_token_in_query_string_is_not_accepted(client: TestClient, make_user) -> None:
    token = make_user("alice")
    assert client.get(f"/api/projects?token={token}").status_code == 401
    assert client.get("/api/projects").status_code == 401


def test_token_of_deleted_user_is_401(client: TestClient, make_user, rows, config) -> None:
    token = make_user("alice")
    import sqlite3

    conn = sqlite3.connect(config.data_path / "nfhub.sqlite")
    conn.execute("UPDATE users SET disabled = 1")
    conn.commit()
    conn.close()
    assert client.get("/api/projects", headers={"x-access-token": token}).status_code == 401


# ---- CLI -------------------------------------------------------------------------------------------------------------

def nfhub_cli(*args: str, config_file: Path, stdin: str = "") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NFHUB_")}
    return subprocess.run([sys.executable, str(ROOT / "nfhub.py"), "--config", str(config_file), *args],
                          input=stdin, capture_output=True, text=True, env=env, timeout=60)


def test_cli_user_add_and_token(config_file: Path, config: nfhub_config.Config) -> None:
    r = nfhub_cli("user", "add", "dora", "--admin", "--password-stdin", config_file=config_file,
                  stdin="correct horse battery\n")
    assert r.returncode == 0, r.stderr
    assert "correct horse" not in r.stdout + r.stderr
    r = nfhub_cli("user", "add", "dora", "--password-stdin", config_file=config_file, stdin="whatever123\n")
    assert r.returncode == 1 and "already exists" in r.stderr
    r = nfhub_cli("token", "dora", "--lifetime", "1h", config_file=config_file)
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip()
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 3600
    assert nfhub_cli("token", "nobody", config_file=config_file).returncode == 1
    db = open_db(config)
    stored = db.execute("SELECT password_hash, is_admin FROM users WHERE name = 'dora'").fetchone()
    db.close()
    assert stored["is_admin"] == 1 and "correct horse" not in stored["password_hash"]
    assert nfhub_auth.verify_password("correct horse battery", stored["password_hash"])
    assert not nfhub_auth.verify_password("wrong", stored["password_hash"])
    with TestClient(nfhub.create_app(config)) as c:
        assert c.get("/api/projects", headers={"x-access-token": token}).status_code == 200


def test_cli_check(config_file: Path, settings: dict, tmp_path: Path) -> None:
    stub = tmp_path / "nextflow"
    stub.write_text("#!/bin/sh\necho 'nextflow version 25.10.2.10555'\n")
    stub.chmod(0o755)
    settings["nextflow"] = str(stub)
    config_file.write_text(yaml.safe_dump(settings))
    r = nfhub_cli("check", config_file=config_file)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "hello" in r.stdout and "nextflow version 25.10.2" in r.stdout
    assert settings["secret_key"] not in r.stdout
    settings["nextflow"] = str(tmp_path / "no-such-nextflow")
    config_file.write_text(yaml.safe_dump(settings))
    r = nfhub_cli("check", config_file=config_file)
    assert r.returncode == 1 and "not found" in r.stdout


def test_cli_bad_config_names_key(config_file: Path, settings: dict) -> None:
    settings["colour"] = "blue"
    config_file.write_text(yaml.safe_dump(settings))
    r = nfhub_cli("check", config_file=config_file)
    assert r.returncode == 2 and "unknown setting 'colour'" in r.stderr


def test_cli_help_lists_commands() -> None:
    r = subprocess.run([sys.executable, str(ROOT / "nfhub.py"), "--help"], capture_output=True, text=True)
    for word in ("serve", "user", "token", "check", "max_upload_bytes"):
        assert word in r.stdout


def test_verified_token_cache_still_checks_expiry_and_revocation(monkeypatch) -> None:
    tokens = nfhub_auth.Tokens(b"k" * 40, 600, 3600)
    token, claims = tokens.issue(1, lifetime=60)
    assert tokens.decode(token)["jti"] == claims["jti"]
    assert tokens.decode(token) is tokens.decode(token)  # served from the cache
    real = time.time
    monkeypatch.setattr(nfhub_auth.time, "time", lambda: real() + 60 + nfhub_auth.JWT_LEEWAY + 1)
    with pytest.raises(nfhub_http.APIError, match="expired"):
        tokens.decode(token)
    monkeypatch.setattr(nfhub_auth.time, "time", real)
    token, claims = tokens.issue(1, lifetime=60)
    tokens.decode(token)
    tokens.revoked[claims["jti"]] = claims["exp"]
    with pytest.raises(nfhub_http.APIError, match="revoked"):
        tokens.decode(token)


def test_revocation_outlives_expiry_by_the_leeway(monkeypatch) -> None:
    """A token is accepted until exp + leeway, so its revocation must be kept that long too."""
    tokens = nfhub_auth.Tokens(b"k" * 40, 600, 3600)
    token, claims = tokens.issue(1, lifetime=60)
    tokens.revoked[claims["jti"]] = claims["exp"]
    real = time.time
    monkeypatch.setattr(nfhub_auth.time, "time", lambda: real() + 60 + nfhub_auth.JWT_LEEWAY / 2)
    tokens.prune()
    with pytest.raises(nfhub_http.APIError, match="revoked"):
        tokens.decode(token)


def test_a_user_disabled_by_hand_is_refused_within_seconds(client: TestClient, make_user, config) -> None:
    import sqlite3

    from conftest import wait_for

    token = {"x-access-token": make_user("alice")}
    assert client.get("/api/projects", headers=token).status_code == 200  # now cached
    conn = sqlite3.connect(config.data_path / "nfhub.sqlite")
    conn.execute("UPDATE users SET disabled = 1 WHERE name = 'alice'")
    conn.commit()
    conn.close()
    wait_for(lambda: client.get("/api/projects", headers=token).status_code == 401,
             nfhub_store.USER_CACHE_SECONDS + 3, 0.1, "the change made outside nfhub to be seen")


@pytest.mark.parametrize(("host", "http", "parser"), [
    pytest.param("127.0.0.1", "auto", "httptools", id="loopback-auto"),
    pytest.param("::1", "auto", "httptools", id="ipv6-loopback-auto"),
    pytest.param("0.0.0.0", "auto", "h11", id="all-addresses-auto"),
    pytest.param("10.1.2.3", "auto", "h11", id="lan-auto"),
    pytest.param("0.0.0.0", "httptools", "httptools", id="forced-httptools"),
    pytest.param("127.0.0.1", "h11", "h11", id="forced-h11"),
])
def test_http_parser_follows_where_nfhub_listens(host: str, http: str, parser: str) -> None:
    options = nfhub.http_options(nfhub_config.Config(host=host, http=http))
    assert options["http"] == parser
    assert (options.get("h11_max_incomplete_event_size") == nfhub.MAX_HEADER_BYTES) == (parser == "h11")


def test_bad_http_setting_is_refused(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("http: fast\n")
    with pytest.raises(nfhub_config.StartupError, match="'http' must be one of auto, httptools, h11"):
        nfhub_config.load_config(tmp_path / "c.yaml", environ={})


def test_h11_refuses_a_huge_header_block_without_buffering_it(live_settings: dict, config_file: Path) -> None:
    """Where nfhub faces clients (h11), a header block over 64 KiB is answered 400 and the connection closed; the
    rest of a 64 MiB header is never read."""
    import socket

    from conftest import LiveServer

    live_settings["http"] = "h11"
    config_file.write_text(yaml.safe_dump(live_settings))
    with LiveServer(nfhub_config.load_config(config_file, environ={})) as server:
        assert server.http.get("/api/health").status_code == 200
        with socket.create_connection(("127.0.0.1", server.config.port), timeout=10) as sock:
            sock.sendall(b"GET /api/health HTTP/1.1\r\nhost: x\r\nx-big: ")
            sent = 0
            try:
                while sent < 64 << 20:
                    sock.sendall(b"a" * (1 << 20))
                    sent += 1 << 20
                answer = sock.recv(65536)
            except OSError:  # the server closed the connection while we were still sending
                answer = b"reset"
        assert answer.startswith(b"HTTP/1.1 400") or answer in (b"", b"reset"), answer[:100]
        assert sent < 16 << 20  # refused long before the end: nothing like 64 MiB was taken in
        assert server.http.get("/api/health").status_code == 200
