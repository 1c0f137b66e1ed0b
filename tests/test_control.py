"""Run control against live servers: cancel, resume with cached tasks, restart recovery, live events, cleanup."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import httpx
import pytest
import yaml

import nfhub
import nfhub_config
from conftest import ServerProcess, make_pipeline, new_project, open_db, wait_done, wait_for


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group or session is pgid."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if fields[0] != "Z" and pgid in (int(fields[2]), int(fields[3])):
                found.append(int(entry))
    return found


def secret_of(config: nfhub_config.Config, pid: int, run_id: int) -> str:
    text = (nfhub_config.runs_dir(config, pid) / str(run_id) / "nfhub.config").read_text()
    return text.split("token=")[1].split("'")[0]


def latest_run(http: httpx.Client, headers: dict, pid: int) -> dict:
    return http.get(f"/api/projects/{pid}/runs", headers=headers).json()["runs"][0]


def test_cancel_running_kills_everything(server, token: dict, rows) -> None:
    http = server.http
    pid = new_project(http, token, "slow", {})
    http.post(f"/api/projects/{pid}/schedule", headers=token)
    wait_for(lambda: http.get(f"/api/projects/{pid}", headers=token).json()["project"]["submitted_processes"] == 2,
             30, what="tasks to run")
    run = latest_run(http, token, pid)
    leader = rows("SELECT pid FROM runs WHERE id = ?", (run["id"],))[0][0]
    assert len(group_members(leader)) >= 3  # nextflow + two tasks that ignore SIGTERM
    r = http.post(f"/api/projects/{pid}/cancel", headers=token)
    assert r.status_code == 200 and r.json() == {"is_scheduled": False}
    run = latest_run(http, token, pid)
    assert run["status"] == "cancelled"
    assert group_members(leader) == []
    tasks = http.get(f"/api/projects/{pid}/runs/{run['id']}/tasks", headers=token).json()["tasks"]
    assert {t["status"] for t in tasks} == {"ABORTED"}
    assert http.post(f"/api/projects/{pid}/cancel", headers=token).json() == {"is_scheduled": False}


def test_cancel_queued_run(catalog, live_settings: dict, config_file: Path, make_user) -> None:
    from conftest import LiveServer

    live_settings["max_concurrent_runs"] = 1
    config_file.write_text(yaml.safe_dump(live_settings))
    with LiveServer(nfhub_config.load_config(config_file, environ={})) as server:
        token = {"x-access-token": make_user("alice")}
        http = server.http
        first = new_project(http, token, "slow", {})
        second = new_project(http, token, "slow", {})
        http.post(f"/api/projects/{first}/schedule", headers=token)
        http.post(f"/api/projects/{second}/schedule", headers=token)
        assert latest_run(http, token, second)["status"] == "queued"
        assert http.post(f"/api/projects/{second}/cancel", headers=token).json() == {"is_scheduled": False}
        run = latest_run(http, token, second)
        assert run["status"] == "cancelled" and run["started_at"] is None
        assert not (nfhub_config.runs_dir(server.config, second) / str(run["id"]) / "console.log").exists()
        http.post(f"/api/projects/{first}/cancel", headers=token)


def test_resume_reuses_cached_tasks(server, token: dict, tmp_path: Path) -> None:
    http = server.http
    pid = new_project(http, token, "fails", {})
    http.post(f"/api/projects/{pid}/schedule", headers=token)
    first = wait_done(http, token, pid)
    assert first["status"] == "failed" and first["session_id"]
    # Fix the failing step (its hash does not depend on the exit code), then resume.
    spec_file = tmp_path / "pipelines" / "fails" / "fake_nextflow.json"
    spec = json.loads(spec_file.read_text())
    spec["tasks"][1]["exit"] = 0
    spec_file.write_text(json.dumps(spec))
    r = http.post(f"/api/projects/{pid}/schedule", json={"resume": True}, headers=token)
    assert r.status_code == 200, r.text
    second = wait_done(http, token, pid)
    assert second["status"] == "succeeded", second
    assert second["resume_of"] == first["id"]
    assert second["command"][second["command"].index("-resume") + 1] == first["session_id"]
    assert second["cached_processes"] == 2 and second["stats"]["cached"] == 2
    tasks = http.get(f"/api/projects/{pid}/runs/{second['id']}/tasks", headers=token).json()
    statuses = sorted(t["status"] for t in tasks["tasks"])
    assert statuses == ["CACHED", "CACHED", "COMPLETED"]
    # The first run keeps its own history.
    assert http.get(f"/api/projects/{pid}/runs/{first['id']}", headers=token).json()["run"]["status"] == "failed"


def test_resume_specific_run_and_bad_values(server, token: dict) -> None:
    http = server.http
    pid = new_project(http, token, "hello", {"input": "n.txt"}, {"n.txt": b"a\n"})
    r = http.post(f"/api/projects/{pid}/schedule", json={"resume": True}, headers=token)
    assert r.status_code == 422 and "resume" in r.json()["details"]
    http.post(f"/api/projects/{pid}/schedule", headers=token)
    first = wait_done(http, token, pid)
    for bad in ("yes", -1, 0, 9999, 1.5):
        r = http.post(f"/api/projects/{pid}/schedule", json={"resume": bad}, headers=token)
        assert r.status_code == 422, bad
    r = http.post(f"/api/projects/{pid}/schedule", json={"resume": first["id"]}, headers=token)
    assert r.status_code == 200
    second = wait_done(http, token, pid)
    assert second["status"] == "succeeded" and second["cached_processes"] == 2


def test_relaunch_with_edited_arguments_keeps_snapshots(server, token: dict) -> None:
    http = server.http
    pid = new_project(http, token, "hello", {"input": "n.txt", "greeting": "Hi"}, {"n.txt": b"a\n"})
    http.post(f"/api/projects/{pid}/schedule", headers=token)
    first = wait_done(http, token, pid)
    http.post(f"/api/projects/{pid}/update", json={"workflow_arguments": {"input": "n.txt", "greeting": "Yo"}},
              headers=token)
    http.post(f"/api/projects/{pid}/schedule", headers=token)
    second = wait_done(http, token, pid)
    assert first["arguments"]["greeting"] == "Hi" and second["arguments"]["greeting"] == "Yo"
    again = http.get(f"/api/projects/{pid}/runs/{first['id']}", headers=token).json()["run"]
    assert again["params"]["greeting"] == "Hi"


def read_events(url: str, headers: dict, stop: callable, out: list, ready: threading.Event) -> None:
    with httpx.stream("GET", url, headers=headers, timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        ready.set()
        block: dict = {}
        for line in r.iter_lines():
            if line == "":
                if "event" in block:  # skips the retry: hint
                    out.append(block)
                    if stop(block):
                        return
                block = {}
            elif not line.startswith(":"):
                key, _, value = line.partition(": ")
                block[key] = value


def test_live_events_show_progress_and_resume_after_reconnect(server, token: dict) -> None:
    http = server.http
    pid = new_project(http, token, "hello", {"input": "n.txt"}, {"n.txt": b"a\nb\nc\n"})
    events: list[dict] = []
    ready = threading.Event()
    url = f"{server.url}/api/projects/{pid}/events?token={token['x-access-token']}"

    def finished(block: dict) -> bool:
        return block.get("event") == "run" and json.loads(block["data"])["status"] == "succeeded"

    reader = threading.Thread(target=read_events, args=(url, {}, finished, events, ready), daemon=True)
    reader.start()
    assert ready.wait(10)
    http.post(f"/api/projects/{pid}/schedule", headers=token)
    reader.join(60)
    assert not reader.is_alive()
    assert events[0]["event"] == "snapshot" and json.loads(events[0]["data"])["project"]["is_scheduled"] is False
    runs = [json.loads(e["data"]) for e in events if e["event"] == "run"]
    assert [r["status"] for r in runs][0] == "queued" and runs[-1]["status"] == "succeeded"
    assert "running" in {r["status"] for r in runs}
    assert runs[-1]["completed_processes"] == runs[-1]["submitted_processes"] == 6
    tasks = [json.loads(e["data"]) for e in events if e["event"] == "task"]
    assert {t["status"] for t in tasks} >= {"SUBMITTED", "COMPLETED"}
    ids = [e["id"] for e in events]
    assert len(set(ids)) == len(ids)
    # Reconnect from the middle: everything after that id, nothing before it, no snapshot.
    middle = len(events) // 2
    replay: list[dict] = []
    ready2 = threading.Event()
    last_id = events[-1]["id"]
    reader = threading.Thread(target=read_events, args=(
        f"{server.url}/api/projects/{pid}/events", {**token, "Last-Event-ID": events[middle]["id"]},
        lambda b: b.get("id") == last_id, replay, ready2), daemon=True)
    reader.start()
    reader.join(20)
    assert [e["id"] for e in replay] == ids[middle + 1:]


def test_events_need_access(server, token: dict, make_user) -> None:
    http = server.http
    pid = new_project(http, token, "hello", {})
    assert http.get(f"/api/projects/{pid}/events").status_code == 401
    other = make_user("mallory")
    assert http.get(f"/api/projects/{pid}/events", params={"token": other}).status_code == 404


def test_clean_work_dir(server, token: dict) -> None:
    http = server.http
    pid = new_project(http, token, "hello", {"input": "n.txt"}, {"n.txt": b"a\nb\n"})
    http.post(f"/api/projects/{pid}/schedule", headers=token)
    run = wait_done(http, token, pid)
    assert run["work_dir_size"] > 0
    r = http.post(f"/api/projects/{pid}/runs/{run['id']}/clean", headers=token)
    assert r.status_code == 200 and r.json()["freed_bytes"] > 0 and r.json()["work_dir_size"] == 0
    assert http.get(f"/api/projects/{pid}/download", params={"path": "results/hello/a.txt"},
                    headers=token).text == "Hello, a!\n"
    assert "Submitted process" in http.get(f"/api/projects/{pid}/runs/{run['id']}/log", headers=token).text
    assert http.get(f"/api/projects/{pid}/runs/{run['id']}/tasks", headers=token).json()["total"] == 4


def test_clean_refused_while_active(server, token: dict) -> None:
    http = server.http
    pid = new_project(http, token, "slow", {})
    http.post(f"/api/projects/{pid}/schedule", headers=token)
    run = latest_run(http, token, pid)
    assert http.post(f"/api/projects/{pid}/runs/{run['id']}/clean", headers=token).status_code == 409
    assert http.post(f"/api/projects/{pid}/delete", headers=token).status_code == 409
    http.post(f"/api/projects/{pid}/cancel", headers=token)


# ---- restart recovery with real `nfhub serve` processes ------------------------------------------------------------


@pytest.fixture
def restartable(catalog: Path, live_settings: dict, config_file: Path, tmp_path: Path, make_user):
    make_pipeline(tmp_path, "medium", {"tasks": [{"process": "STEP", "each": ["a", "b", "c"], "seconds": 4,
                                                  "outputs": {"{item}.txt": "{item}\n"},
                                                  "publish_dir": "{params.outdir}", "publish_mode": "copy"}],
                                       "max_parallel": 1})
    entries = yaml.safe_load(catalog.read_text())
    entries["medium"] = {"source": "./pipelines/medium", "static_arguments": {"outdir": "results"}}
    catalog.write_text(yaml.safe_dump(entries))
    config_file.write_text(yaml.safe_dump(live_settings))
    config = nfhub_config.load_config(config_file, environ={})
    server = ServerProcess(config_file, live_settings["port"], tmp_path / "server.log")
    server.start()
    token = {"x-access-token": make_user("alice")}
    client = httpx.Client(base_url=server.url, headers=token, timeout=30)
    yield server, config, token, client
    server.stop(signal.SIGKILL)
    client.close()
    conn = open_db(config)
    for (leader,) in conn.execute("SELECT pid FROM runs WHERE pid IS NOT NULL").fetchall():
        for p in group_members(leader):
            os.kill(p, signal.SIGKILL)
    conn.close()


def start_running(http: httpx.Client, token: dict, config: nfhub_config.Config, pipeline: str) -> tuple[int, int]:
    """A new project whose run is running; (project id, pid of its Nextflow)."""
    pid = new_project(http, token, pipeline, {})
    http.post(f"/api/projects/{pid}/schedule")
    wait_for(lambda: latest_run(http, token, pid)["status"] == "running", 30, what="running")
    conn = open_db(config)
    leader = conn.execute("SELECT pid FROM runs WHERE id = ?", (latest_run(http, token, pid)["id"],)).fetchone()[0]
    conn.close()
    return pid, leader


def test_sigkill_restart_adopts_a_live_run(restartable) -> None:
    server, config, token, http = restartable
    pid = new_project(http, token, "medium", {})
    http.post(f"/api/projects/{pid}/schedule")
    wait_for(lambda: latest_run(http, token, pid)["status"] == "running", 30, what="running")
    server.stop(signal.SIGKILL)
    server.start()
    run = wait_done(http, token, pid, 60)
    assert run["status"] == "succeeded", run
    assert run["submitted_processes"] >= 1
    tasks = http.get(f"/api/projects/{pid}/runs/{run['id']}/tasks").json()
    assert tasks["total"] == 3 and {t["status"] for t in tasks["tasks"]} == {"COMPLETED"}  # trace fills the gap
    listing = http.get(f"/api/projects/{pid}/files", params={"dir": "results"}).json()
    assert listing["files"] == ["a.txt", "b.txt", "c.txt"]
    assert "adopted" in server.log.read_text()


def test_sigkill_restart_with_the_run_gone(restartable) -> None:
    server, config, token, http = restartable
    pid, leader = start_running(http, token, config, "medium")
    server.stop(signal.SIGKILL)
    for p in group_members(leader):
        os.kill(p, signal.SIGKILL)  # Nextflow dies with nfhub: no history status, no completed event
    wait_for(lambda: not group_members(leader), 10)
    server.start()
    run = wait_done(http, token, pid, 30)
    assert run["status"] == "lost" and "lost track" in run["error_message"]


def test_run_that_finished_while_down_is_judged_from_history(restartable) -> None:
    server, config, token, http = restartable
    pid, leader = start_running(http, token, config, "medium")
    server.stop(signal.SIGKILL)
    wait_for(lambda: not group_members(leader), 60, 0.1, "the run to finish while nfhub is down")
    server.start()
    run = wait_done(http, token, pid, 30)
    assert run["status"] == "succeeded"
    tasks = http.get(f"/api/projects/{pid}/runs/{run['id']}/tasks").json()
    assert tasks["total"] == 3 and {t["status"] for t in tasks["tasks"]} == {"COMPLETED"}


def test_clean_shutdown_leaves_the_run_running(restartable) -> None:
    server, config, token, http = restartable
    pid, leader = start_running(http, token, config, "medium")
    server.stop(signal.SIGTERM)
    assert group_members(leader), "the pipeline must survive a clean nfhub shutdown"
    server.start()
    run = wait_done(http, token, pid, 60)
    assert run["status"] == "succeeded"


def test_queued_runs_start_after_restart(restartable, live_settings: dict, config_file: Path) -> None:
    server, config, token, http = restartable
    server.stop(signal.SIGTERM)
    live_settings["max_concurrent_runs"] = 1
    config_file.write_text(yaml.safe_dump(live_settings))
    server.start()
    first = new_project(http, token, "medium", {})
    second = new_project(http, token, "hello", {"input": "n.txt"}, {"n.txt": b"a\n"})
    http.post(f"/api/projects/{first}/schedule")
    http.post(f"/api/projects/{second}/schedule")
    assert latest_run(http, token, second)["status"] == "queued"
    server.stop(signal.SIGKILL)
    server.start()
    http.post(f"/api/projects/{first}/cancel")
    run = wait_done(http, token, second, 60)
    assert run["status"] == "succeeded"


def test_acknowledged_events_survive_kill_9(restartable, rows) -> None:
    server, config, token, http = restartable
    pid = new_project(http, token, "slow", {})
    http.post(f"/api/projects/{pid}/schedule")
    wait_for(lambda: latest_run(http, token, pid)["status"] == "running", 30, what="running")
    run = latest_run(http, token, pid)
    url = f"/api/projects/{pid}/nextflow-log?token={secret_of(config, pid, run['id'])}"
    base = {"runName": run["run_name"], "runId": "u", "utcTime": "2026-01-01T00:00:00Z"}
    acknowledged = 0
    with httpx.Client(base_url=server.url, timeout=10) as sender:
        for i in range(1000, 1400):
            trace = {"task_id": i, "status": "SUBMITTED", "hash": "ab/cdef12", "name": f"BURST ({i})",
                     "exit": 2147483647, "submit": 1, "start": 0, "process": "BURST", "tag": str(i)}
            if sender.post(url, json={**base, "event": "process_submitted", "trace": trace}).status_code == 200:
                acknowledged += 1
    server.stop(signal.SIGKILL)  # right after the last 2xx
    assert acknowledged == 400
    server.start()
    events = rows("SELECT count(*) FROM events WHERE run_id = ? AND event = 'process_submitted'", (run["id"],))[0][0]
    assert events >= 400  # the burst, plus the pipeline's own two tasks
    assert rows("SELECT count(*) FROM tasks WHERE run_id = ? AND process = 'BURST'", (run["id"],))[0][0] == 400
    assert rows("PRAGMA integrity_check")[0][0] == "ok"
    http.post(f"/api/projects/{pid}/cancel")


def _finished_run(config: nfhub_config.Config, make_user, run_id: int) -> None:
    """A project with a finished run `run_id` named nfhub-<run_id>-abcde, written straight into the database."""
    from starlette.testclient import TestClient

    with TestClient(nfhub.create_app(config)) as client:
        token = {"x-access-token": make_user("alice")}
        pid = client.post("/api/projects/create", json={"name": "p"}, headers=token).json()["project"]["id"]
    conn = open_db(config)
    conn.execute("INSERT INTO runs (id, project_id, status, nextflow_project, run_name, secret_hash, created_at)"
                 " VALUES (?, ?, 'failed', 'hello', ?, 'x', 'now')", (run_id, pid, f"nfhub-{run_id}-abcde"))
    conn.close()


def test_journal_is_replayed_at_start(config: nfhub_config.Config, make_user, rows) -> None:
    """Events acknowledged but not yet applied when nfhub died are applied on the next start, exactly once."""
    from starlette.testclient import TestClient

    _finished_run(config, make_user, 7)
    journal = config.data_path / "weblog.journal"
    entries = b""
    for i in range(3):
        body = json.dumps({"event": "process_submitted", "runName": "nfhub-7-abcde", "trace": {
            "task_id": i + 1, "status": "SUBMITTED", "name": f"T ({i})", "exit": 2147483647}}).encode()
        entries += f"old-{i}\t7\t1.0\t{len(body)}\n".encode() + body + b"\n"
    journal.write_bytes(entries + entries[:-40])  # the same events again, and a torn last write
    with TestClient(nfhub.create_app(config)):
        pass
    assert rows("SELECT count(*) FROM events WHERE run_id = 7")[0][0] == 3
    assert rows("SELECT submitted_processes FROM runs WHERE id = 7")[0][0] == 3
    assert not journal.exists() or journal.stat().st_size == 0


# ---- found in review ---------------------------------------------------------------------------------------------


def test_cancel_right_after_schedule_leaves_nothing_running(server, token: dict, rows) -> None:
    http = server.http
    pid = new_project(http, token, "slow", {})
    for attempt in range(8):
        http.post(f"/api/projects/{pid}/schedule", headers=token)
        if attempt % 2:
            wait_for(lambda: latest_run(http, token, pid)["status"] != "queued", 10, 0.001)
        assert http.post(f"/api/projects/{pid}/cancel", headers=token).json() == {"is_scheduled": False}
        run = latest_run(http, token, pid)
        assert run["status"] == "cancelled"
        leader = rows("SELECT pid FROM runs WHERE id = ?", (run["id"],))[0][0]
        if leader:
            assert group_members(leader) == [], f"attempt {attempt}: Nextflow left running"


def test_finished_is_refused_while_nextflow_runs_here(server, token: dict) -> None:
    http = server.http
    pid = new_project(http, token, "slow", {})
    http.post(f"/api/projects/{pid}/schedule", headers=token)
    wait_for(lambda: latest_run(http, token, pid)["status"] == "running", 30)
    run = latest_run(http, token, pid)
    r = http.post(f"/api/projects/{pid}/finished", params={"token": secret_of(server.config, pid, run["id"])},
                  json={"exit_code": 0})
    assert r.status_code == 409
    assert latest_run(http, token, pid)["status"] == "running"
    http.post(f"/api/projects/{pid}/cancel", headers=token)


def test_tasks_die_with_a_killed_nextflow(server, token: dict, rows) -> None:
    http = server.http
    pid = new_project(http, token, "slow", {})
    http.post(f"/api/projects/{pid}/schedule", headers=token)
    wait_for(lambda: http.get(f"/api/projects/{pid}", headers=token).json()["project"]["submitted_processes"] == 2,
             30, what="tasks to run")
    leader = rows("SELECT pid FROM runs WHERE id = ?", (latest_run(http, token, pid)["id"],))[0][0]
    assert len(group_members(leader)) >= 3
    os.kill(leader, signal.SIGKILL)
    run = wait_done(http, token, pid, 30)
    assert run["status"] == "failed" and run["exit_code"] == 137
    wait_for(lambda: group_members(leader) == [], 10, what="the orphaned tasks to be killed")


def test_malformed_events_are_dropped_without_harm(server, token: dict, rows) -> None:
    http = server.http
    pid = new_project(http, token, "slow", {})
    http.post(f"/api/projects/{pid}/schedule", headers=token)
    run = latest_run(http, token, pid)
    url = f"/api/projects/{pid}/nextflow-log?token={secret_of(server.config, pid, run['id'])}"
    base = {"runName": run["run_name"], "runId": "u", "utcTime": "2026-01-01T00:00:00Z"}
    poison = [{**base, "event": "process_submitted", "trace": {"task_id": 10**30, "status": "SUBMITTED"}},
              {**base, "event": "process_submitted", "trace": {"task_id": 7, "status": "SUBMITTED", "exit": 10**30}},
              {**base, "event": "completed", "metadata": {"workflow": {"stats": {"processes": 5}}}},
              {**base, "event": "process_started", "trace": "not an object"}]
    for event in poison:
        assert http.post(url, json=event).status_code == 200
    good = {"task_id": 8, "status": "SUBMITTED", "name": "GOOD (1)", "exit": 2147483647, "submit": 1, "start": 0}
    assert http.post(url, json={**base, "event": "process_submitted", "trace": good}).status_code == 200
    wait_for(lambda: rows("SELECT count(*) FROM tasks WHERE run_id = ? AND task_id IN (7, 8)", (run["id"],))[0][0]
             == 2, 10, what="the good events to be applied")
    http.post(f"/api/projects/{pid}/cancel", headers=token)


def test_a_journal_with_bad_entries_does_not_stop_the_start(config: nfhub_config.Config, make_user, rows) -> None:
    from starlette.testclient import TestClient

    _finished_run(config, make_user, 9)
    entries = b""
    for i, trace in enumerate([{"task_id": 10**30, "status": "SUBMITTED"}, {"task_id": 1, "status": "SUBMITTED"}]):
        body = json.dumps({"event": "process_submitted", "runName": "nfhub-9-abcde", "trace": trace}).encode()
        entries += f"bad-{i}\t9\t1.0\t{len(body)}\n".encode() + body + b"\n"
    entries += b"garbage without tabs\n" + entries  # a damaged entry in the middle
    (config.data_path / "weblog.journal").write_bytes(entries)
    with TestClient(nfhub.create_app(config)) as client:
        assert client.get("/api/health").status_code == 200
    assert rows("SELECT count(*) FROM tasks WHERE run_id = 9")[0][0] == 1
    assert list(config.data_path.glob("weblog.journal.damaged-*")), "the damaged journal is kept for a look"


def test_event_stream_ends_when_access_is_withdrawn(server, token: dict, make_user, monkeypatch) -> None:
    import nfhub_runs

    monkeypatch.setattr(nfhub_runs, "STREAM_RECHECK", 0.2)
    http = server.http
    pid = new_project(http, token, "hello", {"input": "n.txt"}, {"n.txt": b"a\n"})
    bob = make_user("bob")
    assert http.post(f"/api/projects/{pid}/share", json={"user": "bob", "access": "read"},
                     headers=token).status_code == 200
    events: list[dict] = []
    ready = threading.Event()
    reader = threading.Thread(target=read_events, args=(
        f"{server.url}/api/projects/{pid}/events?token={bob}", {}, lambda b: False, events, ready), daemon=True)
    reader.start()
    assert ready.wait(10)
    http.post(f"/api/projects/{pid}/unshare", json={"user": "bob"}, headers=token)
    http.post(f"/api/projects/{pid}/schedule", headers=token)  # activity after the unshare
    reader.join(20)
    assert not reader.is_alive(), "the stream must end once bob lost access"
    assert all(e["event"] == "snapshot" for e in events[:1])


def test_event_streams_per_user_are_limited(server, token: dict, monkeypatch) -> None:
    import nfhub_runs

    monkeypatch.setattr(nfhub_runs, "MAX_STREAMS_PER_USER", 2)
    http = server.http
    pid = new_project(http, token, "hello", {})
    url = f"{server.url}/api/projects/{pid}/events"
    with httpx.stream("GET", url, headers=token, timeout=10) as first, \
            httpx.stream("GET", url, headers=token, timeout=10) as second:
        assert first.status_code == second.status_code == 200
        lines = [first.iter_lines(), second.iter_lines()]  # kept: dropping an iterator closes its connection
        assert [next(it) for it in lines] == ["retry: 2000", "retry: 2000"]  # both are streaming
        third = http.get(f"/api/projects/{pid}/events", headers=token, timeout=5)
        assert third.status_code == 429 and "error" in third.json()
    wait_for(lambda: server.app.state.hub.runs.streams.get(1, 0) + server.app.state.hub.runs.streams.get(2, 0) == 0, 10,
             what="closed streams to be counted out")
    with httpx.stream("GET", url, headers=token, timeout=10) as again:
        assert again.status_code == 200
