"""Applying weblog events to the database: merged per task, counted once, replay-safe."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import nfhub_runs
import nfhub_store
import nfhub_weblog
import nfhub_worker


def _db(tmp_path: Path) -> sqlite3.Connection:
    path = tmp_path / "db.sqlite"
    nfhub_store.migrate(path)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.row_factory = nfhub_store._row_dict
    conn.execute("INSERT INTO users (name, created_at) VALUES ('u', 'now')")
    conn.execute("INSERT INTO projects (owner_id, name, created_at, updated_at) VALUES (1, 'p', 'now', 'now')")
    conn.execute("INSERT INTO runs (id, project_id, status, nextflow_project, run_name, secret_hash, created_at)"
                 " VALUES (1, 1, 'running', 'hello', 'nfhub-1-x', 'x', 'now')")
    return conn


def _event(jid: str, kind: str, task_id: int, status: str, **extra: object) -> nfhub_weblog.Journaled:
    trace = {"task_id": task_id, "status": status, "name": f"T ({task_id})", "hash": "ab/cdef12",
             "exit": 2147483647, "submit": 1_700_000_000_000, "start": 0, "process": "T", **extra}
    body = {"runName": "nfhub-1-x", "runId": "u", "event": kind, "utcTime": "2026-01-01T00:00:00Z", "trace": trace}
    return (jid, 1, kind, body, json.dumps(body).encode(), 1.0)


def _apply(conn: sqlite3.Connection, batch: list) -> dict:
    conn.execute("BEGIN IMMEDIATE")
    changed = nfhub_weblog.apply_events(conn, batch)
    conn.execute("COMMIT")
    return changed


def _run(conn: sqlite3.Connection) -> dict:
    return conn.execute("SELECT submitted_processes, completed_processes, failed_processes, failed_task"
                        " FROM runs WHERE id = 1").fetchone()


def test_events_merge_per_task_and_count_once(tmp_path: Path) -> None:
    conn = _db(tmp_path)
    first = [
        _event("a1", "process_submitted", 1, "SUBMITTED"),
        _event("a2", "process_started", 1, "RUNNING", start=1_700_000_000_100),
        _event("a3", "process_completed", 1, "COMPLETED", exit=0, complete=1_700_000_001_000, duration=1000,
               realtime=900, **{"%cpu": 97.5, "peak_rss": 1024}),
        _event("a4", "process_submitted", 2, "SUBMITTED"),
    ]
    changed = _apply(conn, first)
    assert changed["tasks"] == {1: {1, 2}} and changed["runs"] == {1}
    assert _run(conn) == {"submitted_processes": 2, "completed_processes": 1, "failed_processes": 0,
                          "failed_task": None}
    task = conn.execute("SELECT * FROM tasks WHERE task_id = 1").fetchone()
    assert (task["status"], task["exit"], task["start"], task["duration"], task["cpu_percent"], task["peak_rss"]) == (
        "COMPLETED", 0, 1_700_000_000_100, 1000, 97.5, 1024)

    second = [
        _event("b1", "process_completed", 1, "COMPLETED", exit=0),  # Nextflow repeated itself
        _event("b2", "process_completed", 2, "FAILED", exit=3, error_action="TERMINATE"),
        _event("b3", "process_started", 2, "RUNNING", start=5),  # late: never moves a task back
        _event("b4", "process_completed", 3, "ABORTED"),  # aborted before it was ever reported
    ]
    _apply(conn, second)
    assert _run(conn) == {"submitted_processes": 3, "completed_processes": 3, "failed_processes": 1,
                          "failed_task": "T (2)"}
    statuses = {r["task_id"]: r["status"] for r in conn.execute("SELECT task_id, status FROM tasks")}
    assert statuses == {1: "COMPLETED", 2: "FAILED", 3: "ABORTED"}

    # A journal replay brings back events that were applied already: nothing changes.
    before = (conn.execute("SELECT count(*) AS n FROM events").fetchone(), _run(conn))
    assert _apply(conn, first + second) == {"runs": set(), "tasks": {}}
    assert (conn.execute("SELECT count(*) AS n FROM events").fetchone(), _run(conn)) == before


def test_events_of_a_deleted_run_are_dropped(tmp_path: Path) -> None:
    conn = _db(tmp_path)
    event = _event("c1", "process_submitted", 1, "SUBMITTED")
    _apply(conn, [(event[0], 99, *event[2:])])
    assert conn.execute("SELECT count(*) AS n FROM events").fetchone()["n"] == 0


def test_run_level_events_keep_their_body(tmp_path: Path) -> None:
    conn = _db(tmp_path)
    body = {"runName": "nfhub-1-x", "runId": "9b4c", "event": "started", "utcTime": "x",
            "metadata": {"parameters": {}, "workflow": {"sessionId": "9b4c", "runName": "nfhub-1-x"}}}
    _apply(conn, [("d1", 1, "started", body, json.dumps(body).encode(), 1.0),
                  _event("d2", "process_submitted", 1, "SUBMITTED")])
    rows = {r["event"]: r["body"] for r in conn.execute("SELECT event, body FROM events")}
    assert json.loads(rows["started"])["runId"] == "9b4c" and rows["process_submitted"] == ""
    run = conn.execute("SELECT status, session_id FROM runs WHERE id = 1").fetchone()
    assert run == {"status": "running", "session_id": "9b4c"}


def test_batches_give_what_applying_each_event_in_order_gives(tmp_path: Path) -> None:
    """Random streams of task events, applied in random batches, against a plain model of one event at a time."""
    import random

    import nfhub_worker

    rng = random.Random(11)
    kinds = [("process_submitted", "SUBMITTED"), ("process_started", "RUNNING"), ("process_completed", "COMPLETED"),
             ("process_completed", "FAILED"), ("process_completed", "ABORTED")]
    optional = {"start": lambda: rng.choice([0, 1_700_000_000_500]), "complete": lambda: 1_700_000_009_000,
                "duration": lambda: rng.randint(1, 9000), "%cpu": lambda: rng.choice([12.5, 99.0]),
                "peak_rss": lambda: rng.randint(1, 10**9), "workdir": lambda: f"/w/{rng.randint(0, 9)}",
                "native_id": lambda: rng.randint(1, 99999), "tag": lambda: rng.choice([None, "s1", "-"]),
                "error_action": lambda: rng.choice([None, "IGNORE", "TERMINATE"])}
    for round_ in range(20):
        conn = _db(tmp_path / str(round_))
        events = []
        for n in range(rng.randint(1, 60)):
            kind, status = rng.choice(kinds)
            trace = {"task_id": rng.randint(1, 6), "status": status, "name": f"T ({n})", "exit": rng.choice(
                [0, 1, 2147483647]), "submit": 1_700_000_000_000, "process": "T"}
            trace.update({k: make() for k, make in optional.items() if rng.random() < 0.5})
            events.append(_event(f"{round_}-{n}", kind, trace.pop("task_id"), trace.pop("status"), **trace))
        model: dict[int, dict] = {}
        counts = [0, 0, 0]
        for _, _, kind, body, _, _ in events:
            task = nfhub_worker.task_from_weblog(body["trace"])
            row = model.get(task["task_id"])
            current = row["status"] if row else None
            if current is not None and nfhub_weblog._TASK_RANK[task["status"]] < nfhub_weblog._TASK_RANK[current]:
                continue
            counts[0] += current is None
            if kind == "process_completed" and current not in nfhub_weblog.TERMINAL_TASK_STATES:
                counts[1] += 1
                counts[2] += task["status"] == "FAILED"
            row = row or {}
            row.update({k: v for k, v in task.items() if v is not None})
            model[task["task_id"]] = row
        i = 0
        while i < len(events):
            size = rng.randint(1, 15)
            _apply(conn, events[i:i + size])
            i += size
        got = {r["task_id"]: r for r in conn.execute("SELECT * FROM tasks")}
        assert set(got) == set(model)
        for task_id, row in model.items():
            for column in nfhub_worker.TASK_COLUMNS:
                expected = row.get(column)
                expected = str(expected) if column == "native_id" and expected is not None else expected
                assert got[task_id][column] == expected, (round_, task_id, column)
        run = _run(conn)
        assert [run["submitted_processes"], run["completed_processes"], run["failed_processes"]] == counts


def test_fast_task_rows_convert_exactly_as_the_generic_conversion() -> None:
    """The applier's fast conversion (plain JSON types) gives the same columns as nfhub_worker.task_from_weblog,
    and declines (None) whatever it does not handle; _task_row merges like applying the traces one by one."""
    import random

    rng = random.Random(7)
    texts = [None, "", " ", "-", "null", " - ", "x", " x ", "\tx", "FASTQC (s1)", "ab/cdef12", 5, 5.0, "日本", "\u3000"]
    ints = [None, 0, -1, 1, 2147483647, 1_700_000_000_000, 2**63 - 1, 2**63, -(2**63), "12", 3.0, True, "-"]
    floats = [None, 0.0, 98.5, 100, "98.5%", float("inf"), "x"]
    natives = [None, 4242, "job.42", "", "-", 2**70, 3.5, " 7 "]
    declined = 0
    for _ in range(4000):
        trace = {"task_id": 1}
        for key in ("hash", "name", "process", "tag", "status", "workdir", "error_action"):
            if rng.random() < 0.9:
                trace[key] = rng.choice(texts)
        for key in ("exit", "submit", "start", "complete", "duration", "realtime", "peak_rss", "attempt"):
            if rng.random() < 0.9:
                trace[key] = rng.choice(ints)
        if rng.random() < 0.8:
            trace["%cpu"] = rng.choice(floats)
        if rng.random() < 0.8:
            trace["native_id"] = rng.choice(natives)
        fast = nfhub_worker._fast_task_row(trace)
        generic = nfhub_runs.nfhub_worker.task_from_weblog(trace)
        if fast is None:
            declined += 1
            continue
        for column, value in zip(nfhub_worker.TASK_COLUMNS, fast, strict=True):
            if column != "status":
                assert value == generic[column] and type(value) is type(generic[column]), (column, trace)
    assert 0 < declined < 4000  # both ways were exercised
    # merging: each column keeps its last non-null value, whichever way the traces are converted
    for _ in range(500):
        traces = []
        for _ in range(rng.randint(1, 4)):
            trace = {"task_id": 1, "status": rng.choice(["SUBMITTED", "RUNNING", "COMPLETED"])}
            for key in ("tag", "exit", "start", "native_id", "error_action", "%cpu"):
                if rng.random() < 0.6:
                    trace[key] = rng.choice({"tag": texts, "exit": ints, "start": ints, "native_id": natives,
                                             "error_action": texts, "%cpu": floats}[key])
            traces.append(trace)
        row = nfhub_worker.task_row(traces, "RUNNING")
        merged = nfhub_worker._merged_row(traces)
        for column, value in zip(nfhub_worker.TASK_COLUMNS, row, strict=True):
            want = "RUNNING" if column == "status" else merged.get(column)
            if column == "native_id" and want is not None:
                want = str(want)
            assert value == want, (column, traces)
