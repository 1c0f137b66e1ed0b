"""Running pipelines end to end: schedule over HTTP, the test double as Nextflow, weblog progress, history, logs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import nfhub_config
import nfhub_runs
from conftest import LiveServer, new_project, wait_done, wait_for


def test_demo_pipeline_runs_to_success(server: LiveServer, token: dict) -> None:
    http = server.http
    pid = new_project(http, token, "hello", {"input": "names.txt", "greeting": "Hi"},
                      {"names.txt": b"Ada\nGrace\nMarie\n"})
    r = http.post(f"/api/projects/{pid}/schedule", headers=token)
    assert r.status_code == 200 and r.json()["is_scheduled"] is True
    seen = {http.get(f"/api/projects/{pid}/runs", headers=token).json()["runs"][0]["status"]}
    project = http.get(f"/api/projects/{pid}", headers=token).json()["project"]
    assert project["is_scheduled"] is True

    def running() -> bool:
        seen.add(http.get(f"/api/projects/{pid}/runs", headers=token).json()["runs"][0]["status"])
        return "running" in seen or "succeeded" in seen

    wait_for(running, 30, 0.01, "the run to start")
    run = wait_done(http, token, pid)
    assert run["status"] == "succeeded", run
    assert "running" in seen
    assert run["exit_code"] == 0 and run["error_message"] is None
    assert run["submitted_processes"] == 6 and run["completed_processes"] == 6 and run["failed_processes"] == 0
    assert run["session_id"] and run["run_name"].startswith(f"nfhub-{run['id']}-")
    assert run["params"]["greeting"] == "Hi"
    assert run["params"]["input"] == str(nfhub_config.project_dir(server.config, pid) / "names.txt")
    assert run["params"]["outdir"] == str(nfhub_config.project_dir(server.config, pid) / "results")
    assert "-params-file" in run["command"] and "-resume" not in run["command"]
    assert run["stats"]["succeeded"] == 6
    project = http.get(f"/api/projects/{pid}", headers=token).json()["project"]
    assert (project["submitted_processes"], project["completed_processes"], project["status"]) == (6, 6, "succeeded")
    tasks = http.get(f"/api/projects/{pid}/runs/{run['id']}/tasks", headers=token).json()
    assert tasks["total"] == 6
    names = sorted(t["name"] for t in tasks["tasks"])
    assert names[0] == "SAY_HELLO (Ada)" and all(t["status"] == "COMPLETED" for t in tasks["tasks"])
    assert all(t["duration"] is not None and t["workdir"] for t in tasks["tasks"])
    listing = http.get(f"/api/projects/{pid}/files", params={"dir": "results/upper"}, headers=token).json()
    assert "Ada.upper.txt" in listing["files"]
    content = http.get(f"/api/projects/{pid}/download", params={"path": "results/hello/Grace.txt"}, headers=token)
    assert content.text == "Hi, Grace!\n"
    log = http.get(f"/api/projects/{pid}/runs/{run['id']}/log", headers=token)
    assert "Submitted process > SAY_HELLO" in log.text and int(log.headers["x-log-size"]) >= len(log.content)
    tail = http.get(f"/api/projects/{pid}/runs/{run['id']}/log", params={"offset": len(log.content) - 10},
                    headers=token)
    assert tail.content == log.content[-10:]
    assert "token=" not in log.text or "token=***" in log.text


def test_failing_pipeline_ends_failed_with_its_error(server: LiveServer, token: dict) -> None:
    http = server.http
    pid = new_project(http, token, "fails", {})
    assert http.post(f"/api/projects/{pid}/schedule", headers=token).status_code == 200
    run = wait_done(http, token, pid)
    assert run["status"] == "failed"
    assert run["exit_code"] == 1
    assert "samtools: truncated file" in run["error_message"]
    assert run["failed_task"] == "BAD (a)"
    assert run["failed_processes"] == 1
    failed = http.get(f"/api/projects/{pid}/runs/{run['id']}/tasks", params={"status": "failed"},
                      headers=token).json()
    assert failed["total"] == 1 and failed["tasks"][0]["exit"] == 3
    first = http.get(f"/api/projects/{pid}/runs/{run['id']}/tasks", headers=token).json()["tasks"][0]
    assert first["status"] == "FAILED"  # failed tasks come first


def test_failure_before_nextflow_starts(server: LiveServer, token: dict, tmp_path: Path) -> None:
    http = server.http
    pid = new_project(http, token, "fails", {})
    (tmp_path / "pipelines" / "fails" / "main.nf").unlink()  # gone after the catalog was checked
    http.post(f"/api/projects/{pid}/schedule", headers=token)
    run = wait_done(http, token, pid)
    assert run["status"] == "failed" and run["submitted_processes"] == 0
    assert "main.nf" in run["error_message"]


def test_missing_executable_fails_the_run(server: LiveServer, token: dict, monkeypatch) -> None:
    http = server.http
    server.app.state.runs.config = dataclasses.replace(server.config, nextflow="/nonexistent/nextflow")
    pid = new_project(http, token, "hello", {"input": "n.txt"}, {"n.txt": b"x\n"})
    http.post(f"/api/projects/{pid}/schedule", headers=token)
    run = wait_done(http, token, pid)
    assert run["status"] == "failed" and "nextflow" in run["error_message"].lower()


def test_schedule_checks_completeness(server: LiveServer, token: dict, rows) -> None:
    http = server.http
    pid = new_project(http, token, "hello", {})
    r = http.post(f"/api/projects/{pid}/schedule", headers=token)
    assert r.status_code == 422 and "input" in r.json()["details"]
    r = http.post(f"/api/projects/{pid}/update", json={"workflow_arguments": {"input": "missing.txt"}}, headers=token)
    assert r.status_code == 200
    r = http.post(f"/api/projects/{pid}/schedule", headers=token)
    assert r.status_code == 422 and "input" in r.json()["details"]
    assert rows("SELECT count(*) FROM runs")[0][0] == 0
    empty = new_project(http, token, "hello", {})
    http.post(f"/api/projects/{empty}/update", json={"nextflow_project": None}, headers=token)
    r = http.post(f"/api/projects/{empty}/schedule", headers=token)
    assert r.status_code == 422 and r.json()["details"] == {"nextflow_project": "required"}


def test_schedule_twice_is_409(server: LiveServer, token: dict) -> None:
    http = server.http
    pid = new_project(http, token, "slow", {})
    assert http.post(f"/api/projects/{pid}/schedule", headers=token).status_code == 200
    r = http.post(f"/api/projects/{pid}/schedule", headers=token)
    assert r.status_code == 409
    assert len(http.get(f"/api/projects/{pid}/runs", headers=token).json()["runs"]) == 1
    assert http.post(f"/api/projects/{pid}/cancel", headers=token).json() == {"is_scheduled": False}


def test_weblog_needs_the_run_secret(server: LiveServer, token: dict, rows) -> None:
    http = server.http
    pid = new_project(http, token, "slow", {})
    http.post(f"/api/projects/{pid}/schedule", headers=token)
    event = {"runName": "x", "runId": "y", "event": "started", "utcTime": "2026-01-01T00:00:00Z"}
    for params, headers in [({}, {}), ({"token": "wrong"}, {}), ({}, token),
                            ({}, {"authorization": "Basic bnhmOndyb25n"})]:
        r = http.post(f"/api/projects/{pid}/nextflow-log", params=params, json=event, headers=headers)
        assert r.status_code == 401
    r = http.post(f"/api/projects/{pid}/finished", json={}, headers=token)
    assert r.status_code == 403
    wait_for(lambda: rows("SELECT count(*) FROM events")[0][0] > 0, 30, what="the run's own events")
    assert not rows("SELECT * FROM events WHERE body LIKE '%\"runName\":\"x\"%'")
    http.post(f"/api/projects/{pid}/cancel", headers=token)


def test_weblog_bad_bodies(server: LiveServer, token: dict, rows) -> None:
    http = server.http
    pid = new_project(http, token, "slow", {})
    http.post(f"/api/projects/{pid}/schedule", headers=token)
    run = http.get(f"/api/projects/{pid}/runs", headers=token).json()["runs"][0]
    config = (nfhub_config.runs_dir(server.config, pid) / str(run["id"]) / "nfhub.config").read_text()
    secret = config.split("token=")[1].split("'")[0]
    url = f"/api/projects/{pid}/nextflow-log?token={secret}"
    assert http.post(url, content=b"{not json").status_code == 400
    assert http.post(url, content=b"[" * 100000).status_code == 400
    assert http.post(url, content=b"1" * 5000).status_code == 400
    assert http.post(url, json={"no": "event"}).status_code == 400
    assert http.post(url, content=b'{"event": "x", "p": "' + b"a" * (5 << 20) + b'"}').status_code == 413
    assert http.post(f"/api/projects/{pid + 1000}/nextflow-log?token={secret}", json={"event": "x"}).status_code == 401
    r = http.post(url, json={"event": "something_new", "runName": run["run_name"]})
    assert r.status_code == 200  # unknown events are stored and ignored
    wait_for(lambda: rows("SELECT count(*) FROM events WHERE event = 'something_new'")[0][0] == 1, 10)
    http.post(f"/api/projects/{pid}/cancel", headers=token)


def test_repeated_events_are_not_counted_twice(server: LiveServer, token: dict) -> None:
    http = server.http
    pid = new_project(http, token, "slow", {})
    http.post(f"/api/projects/{pid}/schedule", headers=token)
    run = http.get(f"/api/projects/{pid}/runs", headers=token).json()["runs"][0]
    config = (nfhub_config.runs_dir(server.config, pid) / str(run["id"]) / "nfhub.config").read_text()
    url = "/api/projects/{}/nextflow-log?token={}".format(pid, config.split("token=")[1].split("'")[0])
    wait_for(lambda: http.get(f"/api/projects/{pid}", headers=token).json()["project"]["submitted_processes"] == 2,
             30, what="both SLEEPY tasks to be submitted")
    trace = {"task_id": 99, "status": "SUBMITTED", "hash": "ab/cdef12", "name": "EXTRA (1)", "exit": 2147483647,
             "submit": 1, "start": 0, "process": "EXTRA", "tag": None}
    base = {"runName": run["run_name"], "runId": "u", "utcTime": "2026-01-01T00:00:00Z"}
    for _ in range(2):
        assert http.post(url, json={**base, "event": "process_submitted", "trace": trace}).status_code == 200
    done = {**trace, "status": "COMPLETED", "exit": 0, "complete": 5, "duration": 4, "realtime": 3}
    for _ in range(2):
        assert http.post(url, json={**base, "event": "process_completed", "trace": done}).status_code == 200

    def counted() -> dict | None:
        task = http.get(f"/api/projects/{pid}/runs/{run['id']}/tasks", params={"status": "completed"},
                        headers=token).json()
        return task if task["total"] == 1 else None

    wait_for(counted, 10)
    http.post(f"/api/projects/{pid}/cancel", headers=token)
    final = wait_done(http, token, pid)
    # EXTRA once, plus the two SLEEPY tasks aborted by the cancel: nothing counted twice.
    assert (final["submitted_processes"], final["completed_processes"]) == (3, 3)
    extra = [t for t in http.get(f"/api/projects/{pid}/runs/{run['id']}/tasks", headers=token).json()["tasks"]
             if t["task_id"] == 99]
    assert extra[0]["status"] == "COMPLETED"


def test_unknown_run_is_404(server: LiveServer, token: dict) -> None:
    http = server.http
    pid = new_project(http, token, "hello", {})
    for path in ("runs/5", "runs/5/tasks", "runs/5/log"):
        assert http.get(f"/api/projects/{pid}/{path}", headers=token).status_code == 404
    assert http.get(f"/api/projects/{pid}/runs", headers=token).json() == {"runs": []}


def test_bad_task_paging(server: LiveServer, token: dict) -> None:
    http = server.http
    pid = new_project(http, token, "hello", {"input": "n.txt"}, {"n.txt": b"x\n"})
    http.post(f"/api/projects/{pid}/schedule", headers=token)
    run = wait_done(http, token, pid)
    for params in ({"offset": "-1"}, {"limit": "abc"}, {"limit": "0"}, {"limit": "100000"}):
        r = http.get(f"/api/projects/{pid}/runs/{run['id']}/tasks", params=params, headers=token)
        assert r.status_code == 400, params
    page = http.get(f"/api/projects/{pid}/runs/{run['id']}/tasks", params={"limit": 1, "offset": 1},
                    headers=token).json()
    assert page["total"] == 2 and len(page["tasks"]) == 1


@pytest.mark.parametrize("host,setting,expected", [
    ("127.0.0.1", "", "http://127.0.0.1:8123"), ("0.0.0.0", "", "http://127.0.0.1:8123"),
    ("10.1.2.3", "", "http://10.1.2.3:8123"), ("::", "", "http://[::1]:8123"), ("::1", "", "http://[::1]:8123"),
    ("0.0.0.0", "https://hub.example.org/", "https://hub.example.org"),
])
def test_weblog_url_reaches_the_listening_address(host: str, setting: str, expected: str) -> None:

    config = nfhub_config.Config(host=host, port=8123, weblog_url=setting)
    assert nfhub_runs.RunManager(config, None, {}).weblog_base() == expected  # type: ignore[arg-type]
