"""Shared fixtures: a fresh data dir and config per test, the real app over TestClient, users with tokens."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
import yaml
from starlette.testclient import TestClient

import nfhub
import nfhub_auth
import nfhub_config
import nfhub_store

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
def config(config_file: Path) -> nfhub_config.Config:
    return nfhub_config.load_config(config_file, environ={})


@pytest.fixture
def client(config: nfhub_config.Config) -> Iterator[TestClient]:
    with TestClient(nfhub.create_app(config)) as c:
        yield c


@pytest.fixture
def make_user(config: nfhub_config.Config) -> Callable[..., str]:
    """Create a local user directly in the database and return a token for it."""

    def make(name: str, admin: bool = False, password: str | None = None) -> str:
        conn = open_db(config)
        try:  # the one statement that creates users, as the CLI and the logins use it
            user_id = nfhub_store.insert_user(conn, name, is_admin=admin,
                                              password_hash=nfhub_auth.hash_password(password) if password else None)
        finally:
            conn.close()
        tokens = nfhub_auth.Tokens(nfhub_config.load_secret_key(config), config.token_seconds, config.max_token_seconds)
        return tokens.issue(user_id)[0]

    return make


@pytest.fixture
def alice(client: TestClient, make_user: Callable[..., str]) -> dict[str, str]:
    return {"x-access-token": make_user("alice")}


@pytest.fixture
def bob(client: TestClient, make_user: Callable[..., str]) -> dict[str, str]:
    return {"x-access-token": make_user("bob")}


def open_db(config: nfhub_config.Config) -> sqlite3.Connection:
    """A plain connection to the test server's database, as the command line opens it."""
    return nfhub_store.open_sync(nfhub_config.database_path(config))


def db_rows(config: nfhub_config.Config, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
    conn = sqlite3.connect(Path(config.data_dir) / "nfhub.sqlite")
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


@pytest.fixture
def rows(config: nfhub_config.Config) -> Callable[..., list[sqlite3.Row]]:
    return lambda sql, params=(): db_rows(config, sql, params)



# ---- live servers ----------------------------------------------------------------------------------------------------




def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], object], timeout: float = 30.0, interval: float = 0.02, what: str = "") -> object:
    """Poll until predicate() is truthy; its value, or AssertionError after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(interval)


class LiveServer:
    """nfhub under a real uvicorn in a thread, on a free loopback port (Nextflow's weblog needs real HTTP)."""

    def __init__(self, config: nfhub_config.Config):
        self.config = config
        self.app = nfhub.create_app(config)
        self.url = f"http://127.0.0.1:{config.port}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=config.port, log_level="warning",
                                                    lifespan="on", timeout_graceful_shutdown=2,
                                                    **nfhub.http_options(config)))  # as `nfhub serve` does
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.http = httpx.Client(base_url=self.url, timeout=30)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        wait_for(lambda: self.server.started, 15, what="uvicorn to start")
        return self

    def __exit__(self, *exc: object) -> None:
        hub = getattr(self.app.state, "hub", None)
        procs = list(hub.runs.procs.values()) if hub is not None else []
        self.server.should_exit = True
        self.thread.join(15)
        self.http.close()
        for proc in procs:  # no test leaves a pipeline behind
            proc.kill_group()
            if proc._popen is not None:
                proc._popen.wait(10)  # reaped, so no "subprocess is still running" at garbage collection


@pytest.fixture
def live_settings(settings: dict) -> dict:
    settings["port"] = free_port()
    return settings


@pytest.fixture
def live(live_settings: dict, config_file: Path) -> Iterator[LiveServer]:
    config_file.write_text(yaml.safe_dump(live_settings))
    with LiveServer(nfhub_config.load_config(config_file, environ={})) as server:
        yield server


class ServerProcess:
    """`nfhub serve` as its own process, for restart and kill -9 scenarios."""

    def __init__(self, config_file: Path, port: int, log: Path):
        self.config_file, self.port, self.log = config_file, port, log
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> ServerProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("NFHUB_")}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, str(ROOT / "nfhub.py"), "--config", str(self.config_file),
                                          "serve"], stdout=out, stderr=subprocess.STDOUT, env=env)

        def up() -> bool:
            try:
                return httpx.get(f"{self.url}/api/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                assert self.proc is not None and self.proc.poll() is None, self.log.read_text()
                return False

        wait_for(up, 30, 0.05, "nfhub serve to answer")
        return self

    def stop(self, sig: int = 15) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(30)




# ---- pipelines and runs ----------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def fast_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Nextflow double's task times are scaled down for tests."""
    monkeypatch.setenv("FAKE_NEXTFLOW_TIME_SCALE", "0.3")


def make_pipeline(root: Path, name: str, spec: dict, schema: dict | None = None) -> Path:
    folder = root / "pipelines" / name
    folder.mkdir(parents=True)
    procs = "\n".join(f"process {t['process']} {{\n  script: 'true'\n}}" for t in spec["tasks"])
    (folder / "main.nf").write_text(f"{procs}\nworkflow {{ }}\n")
    (folder / "fake_nextflow.json").write_text(json.dumps(spec))
    return folder


@pytest.fixture
def catalog(tmp_path: Path, live_settings: dict) -> Path:
    """A catalog with the demo pipeline plus scripted ones for failures and cancellation."""
    make_pipeline(tmp_path, "fails", {"tasks": [
        {"process": "GOOD", "each": ["a", "b"], "seconds": 0.1},
        {"process": "BAD", "after": "GOOD", "each": ["a"], "seconds": 0.1, "exit": 3,
         "stderr": "samtools: truncated file\n"},
    ]})
    make_pipeline(tmp_path, "slow", {"tasks": [
        {"process": "SLEEPY", "each": ["x", "y"], "seconds": 60, "ignore_sigterm": True},
    ]})
    entries = {
        "hello": {"description": "demo", "source": str(ROOT / "pipelines" / "hello"),
                  "static_arguments": {"outdir": "results"}},
        "fails": {"description": "fails", "source": "./pipelines/fails", "static_arguments": {"outdir": "results"}},
        "slow": {"description": "slow", "source": "./pipelines/slow"},
    }
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(entries))
    live_settings["pipelines"] = str(path)
    live_settings["cancel_grace"] = 2
    return path


@pytest.fixture
def server(catalog: Path, live_settings: dict, config_file: Path):
    config_file.write_text(yaml.safe_dump(live_settings))
    with LiveServer(nfhub_config.load_config(config_file, environ={})) as s:
        yield s


@pytest.fixture
def token(server: LiveServer, make_user) -> dict:
    return {"x-access-token": make_user("alice")}


def new_project(http: httpx.Client, headers: dict, pipeline: str, args: dict, files: dict | None = None) -> int:
    pid = http.post("/api/projects/create", json={"name": f"p-{pipeline}"}, headers=headers).json()["project"]["id"]
    for name, content in (files or {}).items():
        r = http.post(f"/api/projects/{pid}/upload-file", headers=headers, data={"directory": ""},
                      files={"file": (name, content)})
        assert r.status_code == 200, r.text
    r = http.post(f"/api/projects/{pid}/update", json={"nextflow_project": pipeline, "workflow_arguments": args},
                  headers=headers)
    assert r.status_code == 200, r.text
    return pid


def wait_done(http: httpx.Client, headers: dict, pid: int, timeout: float = 60) -> dict:
    def done() -> dict | None:
        project = http.get(f"/api/projects/{pid}", headers=headers).json()["project"]
        return project if not project["is_scheduled"] else None

    wait_for(done, timeout, 0.05, f"project {pid} to finish")
    runs = http.get(f"/api/projects/{pid}/runs", headers=headers).json()["runs"]
    return http.get(f"/api/projects/{pid}/runs/{runs[0]['id']}", headers=headers).json()["run"]




# ---- markers ---------------------------------------------------------------------------------------------------------

# Fixtures that start a real server, process or browser: tests using them are marked `live`, so that
# `pytest -m "not live"` is a loop of seconds. (`make test` runs everything.)
LIVE_FIXTURES = frozenset(("live_settings", "live", "server", "mock_idp", "fake_idp", "page", "browser_page"))
LIVE_MODULES = frozenset(("test_fake_nextflow.py",))  # every test there runs the Nextflow double as a process


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if (LIVE_FIXTURES & set(getattr(item, "fixturenames", ())) or item.get_closest_marker("browser")
                or item.path.name in LIVE_MODULES):
            item.add_marker(pytest.mark.live)
