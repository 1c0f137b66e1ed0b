"""Shared fixtures: a fresh data dir and config per test, the real app over TestClient, users with tokens."""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from starlette.testclient import TestClient

import nfhub

ROOT = Path(__file__).resolve().parent.parent
FAKE_NEXTFLOW = ROOT / "tests" / "fake_nextflow.py"


@pytest.fixture
def settings(tmp_path: Path) -> dict:
    """Settings for a test; change them before the app is built."""
    return {
        "data_dir": str(tmp_path / "data"),
        "pipelines": str(ROOT / "nextflow_projects.yaml"),
        "nextflow": str(FAKE_NEXTFLOW),
        "secret_key": "test-secret-key-that-is-at-least-32-bytes-long",
    }


@pytest.fixture
def config_file(tmp_path: Path, settings: dict) -> Path:
    path = tmp_path / "nfhub.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


@pytest.fixture
def config(config_file: Path) -> nfhub.Config:
    return nfhub.load_config(config_file, environ={})


@pytest.fixture
def client(config: nfhub.Config) -> Iterator[TestClient]:
    with TestClient(nfhub.create_app(config)) as c:
        yield c


@pytest.fixture
def make_user(config: nfhub.Config) -> Callable[..., str]:
    """Create a local user directly in the database and return a token for it."""

    def make(name: str, admin: bool = False, password: str | None = None) -> str:
        conn = nfhub._open_sync(config)
        try:
            conn.execute("INSERT INTO users (name, password_hash, is_admin, created_at) VALUES (?, ?, ?, ?)",
                         (name, nfhub.hash_password(password) if password else None, int(admin), nfhub.now_iso()))
            user_id = conn.execute("SELECT id FROM users WHERE name = ?", (name,)).fetchone()["id"]
        finally:
            conn.close()
        tokens = nfhub.Tokens(nfhub.load_secret_key(config), config.token_seconds, config.max_token_seconds)
        return tokens.issue(user_id)[0]

    return make


@pytest.fixture
def alice(client: TestClient, make_user: Callable[..., str]) -> dict[str, str]:
    return {"x-access-token": make_user("alice")}


@pytest.fixture
def bob(client: TestClient, make_user: Callable[..., str]) -> dict[str, str]:
    return {"x-access-token": make_user("bob")}


def db_rows(config: nfhub.Config, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
    conn = sqlite3.connect(Path(config.data_dir) / "nfhub.sqlite")
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


@pytest.fixture
def rows(config: nfhub.Config) -> Callable[..., list[sqlite3.Row]]:
    return lambda sql, params=(): db_rows(config, sql, params)


sys.path.insert(0, str(ROOT))
