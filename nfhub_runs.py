"""nfhub runs: scheduling, the run manager (dispatch, launch, supervision, recovery, cancel), weblog ingestion and
its application to the runs/tasks tables, run history endpoints and the live event stream.

Imported by nfhub.create_app (never at nfhub's import time); Nextflow itself is nfhub_worker's business."""

from __future__ import annotations

import base64
import bisect
import hashlib
import json
import mmap
import os
import re
import secrets
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import chain
from operator import itemgetter
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import anyio
import anyio.abc
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

import nfhub_catalog
import nfhub_worker
from nfhub import (
    ACTIVE_SQL,
    ACTIVE_STATES,
    MAX_SQLITE_INT,
    MAX_WEBLOG_BYTES,
    PROJECT_SELECT,
    APIError,
    Config,
    Store,
    _active_run,
    _project_id,
    check_values,
    get_project,
    log,
    now_iso,
    project_access,
    project_dir,
    read_json,
    runs_dir,
)

# ---- Runs: storage and weblog event application ------------------------------------------------------------------

TASK_COLUMNS = ("hash", "name", "process", "tag", "status", "exit", "submit", "start", "complete", "duration",
                "realtime", "cpu_percent", "peak_rss", "workdir", "native_id", "attempt", "error_action")
TASK_EVENTS = frozenset(("process_submitted", "process_started", "process_completed"))
TERMINAL_TASK_STATES = ("COMPLETED", "FAILED", "ABORTED", "CACHED")
# What a later event may not undo: a RUNNING event arriving after COMPLETED keeps COMPLETED.
_TASK_RANK = {"NEW": 0, "SUBMITTED": 1, "RUNNING": 2, "COMPLETED": 3, "FAILED": 3, "ABORTED": 3, "CACHED": 3}


try:
    from orjson import loads as _loads  # 2 us instead of 7 for a task event, on the thread that answers every request
except ImportError:  # pragma: no cover - an optional speed-up
    _loads = json.loads


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def run_json(row: dict[str, Any], brief: bool = False) -> dict[str, Any]:
    run = {
        "id": row["id"], "project_id": row["project_id"], "status": row["status"],
        "nextflow_project": row["nextflow_project"], "run_name": row["run_name"], "session_id": row["session_id"],
        "resume_of": row["resume_of"], "submitted_processes": row["submitted_processes"],
        "completed_processes": row["completed_processes"], "failed_processes": row["failed_processes"],
        "cached_processes": row["cached_processes"], "exit_code": row["exit_code"],
        "error_message": row["error_message"], "failed_task": row["failed_task"],
        "created_at": row["created_at"], "started_at": row["started_at"], "finished_at": row["finished_at"],
        "duration": _duration_ms(row["started_at"] or row["created_at"], row["finished_at"]),
        "user": row.get("user_name"),
    }
    if not brief:
        run["arguments"] = json.loads(row["arguments"])
        run["params"] = json.loads(row["params"])
        run["command"] = json.loads(row["command"])
        run["stats"] = json.loads(row["stats"]) if row["stats"] else None
    return run


def _duration_ms(start: str | None, end: str | None) -> int | None:
    if not start:
        return None
    begin = datetime.fromisoformat(start.replace("Z", "+00:00"))
    finish = datetime.fromisoformat(end.replace("Z", "+00:00")) if end else datetime.now(UTC)
    return int((finish - begin).total_seconds() * 1000)


def task_json(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in ("task_id", *TASK_COLUMNS)}


_TASK_INSERT = f"INSERT INTO tasks (run_id, task_id, {', '.join(TASK_COLUMNS)})"
_TASK_ON_CONFLICT = (f"ON CONFLICT (run_id, task_id) DO UPDATE SET"
                     f" {', '.join(f'{c} = COALESCE(excluded.{c}, {c})' for c in TASK_COLUMNS)}")
_TASK_UPSERT = f"{_TASK_INSERT} VALUES (?, ?, {', '.join('?' for _ in TASK_COLUMNS)}) {_TASK_ON_CONFLICT}"


def upsert_task(db: sqlite3.Connection, run_id: int, task: dict[str, Any]) -> tuple[str | None, bool]:
    """Insert or advance one task row; returns (previous status, whether anything changed)."""
    found = db.execute("SELECT status FROM tasks WHERE run_id = ? AND task_id = ?", (run_id, task["task_id"])).fetchone()
    previous = found["status"] if found else None
    status = task.get("status") or "NEW"
    if previous is not None and _TASK_RANK.get(status, 0) < _TASK_RANK.get(previous, 0):
        return previous, False
    native = task.get("native_id")
    values = [status if c == "status" else str(native) if c == "native_id" and native is not None else task.get(c)
              for c in TASK_COLUMNS]
    db.execute(_TASK_UPSERT, (run_id, task["task_id"], *values))
    return previous, True


_BULK_SQL: dict[tuple[str, int], str] = {}


def _bulk(db: sqlite3.Connection, head: str, tail: str, width: int, rows: list[tuple]) -> None:
    """`head VALUES (...), (...) tail` for many rows in few statements: each statement is one step of SQLite's with
    the GIL released, where executemany would hand the GIL back and forth once per row, stalling the event loop."""
    i = 0
    while i < len(rows):
        n = 1 << min(8, (len(rows) - i).bit_length() - 1)  # 256, 128, ... 1 rows: a handful of cached statements
        sql = _BULK_SQL.get((head, n))
        if sql is None:
            one = "(" + ", ".join("?" * width) + ")"
            sql = _BULK_SQL[(head, n)] = f"{head} VALUES {', '.join([one] * n)} {tail}"
        db.execute(sql, tuple(chain.from_iterable(rows[i:i + n])))
        i += n


def apply_events(db: sqlite3.Connection, batch: list[Journaled],
                 statuses: dict[int, dict[int, str]] | None = None, replay: bool = True) -> dict[str, Any]:
    """Apply weblog events in one transaction, each exactly once (by journal id). Runs on the writer's thread.

    The events of one task that arrive together (submitted, started, completed) become one row write, and the
    counters one UPDATE per run. `statuses` ({run: {task: status}}, as committed) spares a lookup per task; the
    caller drops it when the transaction fails. `replay=False` says no event of the batch can have been applied
    before (journal ids of this boot, never applied): the lookup of their ids is skipped. Returns what changed, for the live views:
    {"runs": {ids}, "tasks": {run: {ids}}}."""
    changed: dict[str, Any] = {"runs": set(), "tasks": {}}
    if statuses is None:
        statuses = {}
    run_ids = tuple({item[1] for item in batch})
    known = {r["id"] for r in db.execute(f"SELECT id FROM runs WHERE id IN ({', '.join('?' * len(run_ids))})",
                                         run_ids).fetchall()}
    jids = [item[0] for item in batch] if replay else []
    seen: set[str] = set()
    for i in range(0, len(jids), 900):  # SQLite's bound-parameter limit
        part = jids[i:i + 900]
        seen.update(r["jid"] for r in db.execute(f"SELECT jid FROM events WHERE jid IN ({', '.join('?' * len(part))})",
                                                   part).fetchall())
    fresh = [item for item in batch if item[1] in known and item[0] not in seen]  # a replay finds some applied
    # Task events live on as task rows; keeping their 1-2 KB bodies too would triple the cost of each event.
    _bulk(db, "INSERT OR IGNORE INTO events (jid, run_id, event, body, received_at)", "", 5,
          [(jid, run_id, kind, "" if kind in TASK_EVENTS else body.decode("utf-8", "replace"), received)
           for jid, run_id, kind, _, body, received in fresh])
    # Statuses and counters follow every event, but a trace is converted only where it gives the row something:
    # the last event of a task in the batch carries (nearly) every field, so most earlier ones are skipped.
    tasks: dict[tuple[int, int], dict[str, Any]] = {}  # (run, task) -> {"was", "status", "traces": [raw, ...]}
    counters: dict[int, list[int]] = {}  # run id -> [submitted, completed, failed] added by this batch
    for _, run_id, kind, event, _, _ in fresh:
        if kind in TASK_EVENTS or (kind == "error" and event.get("trace")):
            trace = event.get("trace")
            if not isinstance(trace, dict):
                continue
            task_id = trace.get("task_id")
            status = trace.get("status")
            if type(task_id) is not int or not 0 <= task_id < 2**63 or not isinstance(status, str):
                try:  # unusual values: the generic conversion decides
                    converted = nfhub_worker.task_from_weblog(trace)
                except ValueError:
                    continue
                task_id, status = converted["task_id"], converted["status"]
            status = status if status and status.strip() not in nfhub_worker.MISSING_TEXT else "NEW"
            if kind == "error" or (status == "FAILED" and trace.get("error_action") in (None, "TERMINATE", "FINISH")):
                # The task that made the run fail (errorStrategy 'finish' sends its trace with the error event).
                try:
                    name = nfhub_worker.task_from_weblog(trace)["name"]
                except ValueError:
                    name = None
                db.execute("UPDATE runs SET failed_task = COALESCE(failed_task, ?) WHERE id = ?", (name, run_id))
                changed["runs"].add(run_id)
                if kind == "error":
                    continue
            key = (run_id, task_id)
            state = tasks.get(key)
            if state is None:
                known_statuses = statuses.get(run_id)
                if known_statuses is None:  # first events of this run since the start: one query for all its tasks
                    if len(statuses) >= 64:
                        statuses.clear()  # (late events of runs long over: it is only a cache)
                    cursor = db.cursor()
                    cursor.row_factory = None
                    known_statuses = statuses[run_id] = dict(cursor.execute(
                        "SELECT task_id, status FROM tasks WHERE run_id = ?", (run_id,)).fetchall())
                was = known_statuses.get(task_id)
                state = tasks[key] = {"was": was, "status": was, "traces": []}
            current = state["status"]
            if current is not None and _TASK_RANK.get(status, 0) < _TASK_RANK.get(current, 0):
                continue  # a late or repeated event never moves a task back
            counts = counters.setdefault(run_id, [0, 0, 0])
            if current is None:
                counts[0] += 1
            if kind == "process_completed" and current not in TERMINAL_TASK_STATES:
                counts[1] += 1
                counts[2] += status == "FAILED"
            state["status"] = status
            state["traces"].append(trace)
            changed["tasks"].setdefault(run_id, set()).add(task_id)
        else:
            _apply_run_event(db, run_id, kind, event, changed)
    rows = []
    for (run_id, task_id), state in tasks.items():
        if state["traces"]:
            rows.append((run_id, task_id, *_task_row(state["traces"], state["status"])))
            statuses[run_id][task_id] = state["status"]  # (a failed transaction makes the caller drop the cache)
    _bulk(db, _TASK_INSERT, _TASK_ON_CONFLICT, 2 + len(TASK_COLUMNS), rows)
    for run_id, (submitted, completed, failed) in counters.items():
        if submitted or completed or failed:
            db.execute("UPDATE runs SET submitted_processes = submitted_processes + ?, completed_processes ="
                       " completed_processes + ?, failed_processes = failed_processes + ? WHERE id = ?",
                       (submitted, completed, failed, run_id))
            changed["runs"].add(run_id)
    return changed


_STATUS = TASK_COLUMNS.index("status")
_NATIVE = TASK_COLUMNS.index("native_id")
_I64 = 1 << 63


def _fast_task_row(trace: dict[str, Any]) -> list[Any] | None:
    """The task columns of a trace that holds the plain JSON types Nextflow sends, converted as
    nfhub_worker.task_from_weblog converts them, at a fraction of the cost (the applier's thread holds the
    interpreter lock while it converts, and the event loop waits for it); None for anything else."""
    g = trace.get
    texts = (g("hash"), g("name"), g("process"), g("tag"), g("workdir"), g("error_action"))
    for v in texts:
        if v is not None and (type(v) is not str or v.strip() in nfhub_worker.MISSING_TEXT):
            return None
    exit_code, submit, start, complete = g("exit"), g("submit"), g("start"), g("complete")
    duration, realtime, peak_rss, attempt = g("duration"), g("realtime"), g("peak_rss"), g("attempt")
    for v in (exit_code, submit, start, complete, duration, realtime, peak_rss, attempt):
        if v is not None and (type(v) is not int or not -_I64 <= v < _I64):
            return None
    cpu, native = g("%cpu"), g("native_id")
    if cpu is not None and type(cpu) is not float:
        return None
    if type(native) is int:
        native = str(native)
    elif native is not None and (type(native) is not str or native.strip() in nfhub_worker.MISSING_TEXT):
        return None
    return [texts[0], texts[1], texts[2], texts[3], None, None if exit_code == nfhub_worker.INT_MAX else exit_code,
            submit if submit is None or submit > 0 else None, start if start is None or start > 0 else None,
            complete if complete is None or complete > 0 else None, duration, realtime, cpu, peak_rss, texts[4],
            native, attempt, texts[5]]


def _task_row(traces: list[dict[str, Any]], status: str) -> list[Any]:
    """The task columns that applying `traces` in order gives (each: its last non-null value), with `status`."""
    row = _fast_task_row(traces[-1])
    if row is not None and len(traces) > 1 and None in row:
        missing = [i for i, v in enumerate(row) if v is None and i != _STATUS]
        for trace in reversed(traces[:-1]):
            if not missing:
                break
            if not any(trace.get(_TRACE_KEY[TASK_COLUMNS[i]]) is not None for i in missing):
                continue  # (a null converts to null)
            older = _fast_task_row(trace)
            if older is None:
                row = None
                break
            for i in [i for i in missing if older[i] is not None]:
                row[i] = older[i]
                missing.remove(i)
    if row is None:  # unusual values somewhere: the generic conversion, column by column
        merged = _merged_row(traces)
        native = merged.get("native_id")
        row = [str(native) if c == "native_id" and native is not None else merged.get(c) for c in TASK_COLUMNS]
    row[_STATUS] = status
    return row


# The trace key each task column comes from.
_TRACE_KEY = {column: "%cpu" if column == "cpu_percent" else column for column in TASK_COLUMNS}


def _merged_row(traces: list[dict[str, Any]]) -> dict[str, Any]:
    """The task row that applying `traces` in order gives (each column: its last non-null value), converting as few
    traces as possible: newest first, an older one only if it has a key for a column still empty."""
    row: dict[str, Any] = {}
    missing = set(TASK_COLUMNS)
    for trace in reversed(traces):
        if not any(trace.get(_TRACE_KEY[column]) is not None for column in missing):
            continue  # (a null converts to null: nothing to gain from converting this trace)
        try:
            task = nfhub_worker.task_from_weblog(trace)
        except ValueError:
            continue
        for column in list(missing):
            if task.get(column) is not None:
                row[column] = task[column]
                missing.discard(column)
        if not missing:
            break
    return row


def _apply_run_event(db: sqlite3.Connection, run_id: int, kind: str, body: dict[str, Any],
                     changed: dict[str, Any]) -> None:
    if kind == "started":
        summary = nfhub_worker.workflow_summary(body.get("metadata") or {})
        db.execute("UPDATE runs SET status = CASE WHEN status IN ('queued', 'starting') THEN 'running' ELSE status END,"
                   " started_at = COALESCE(started_at, ?), session_id = COALESCE(session_id, ?) WHERE id = ?",
                   (now_iso(), summary["session_id"] or body.get("runId"), run_id))
        changed["runs"].add(run_id)
    elif kind == "completed":
        summary = nfhub_worker.workflow_summary(body.get("metadata") or {})
        stats = {**summary["stats"], "success": summary["success"], "exit_status": summary["exit_status"],
                 "error_message": summary["error_message"], "error_report": summary["error_report"],
                 "duration": summary["duration"], "nextflow_version": summary["nextflow_version"]}
        error = None if summary["success"] else summary["error_message"]
        db.execute("UPDATE runs SET stats = ?, session_id = COALESCE(session_id, ?), error_message = COALESCE(?,"
                   " error_message), cached_processes = ? WHERE id = ?",
                   (json.dumps(stats), summary["session_id"] or body.get("runId"), error, summary["stats"]["cached"],
                    run_id))
        changed["runs"].add(run_id)


# ---- Handlers: runs ----------------------------------------------------------------------------------------------


async def schedule(request: Request) -> Response:
    user, project = await project_access(request, "write")
    state = request.app.state
    project_id = project["id"]
    data = await read_json(request)
    resume = data.get("resume", False)
    if set(data) - {"resume"}:
        raise APIError(422, f"unknown field '{sorted(set(data) - {'resume'})[0]}'")
    if not isinstance(resume, (bool, int)) or (not isinstance(resume, bool) and resume < 1):
        raise APIError(422, "resume must be true, false or a run id", {"resume": "true, false or a run id"})
    name = project["nextflow_project"]
    if not name:
        raise APIError(422, "choose a nextflow project first", {"nextflow_project": "required"})
    if name not in state.catalog:
        raise APIError(422, f"nextflow project {name!r} is no longer in the catalog",
                       {"nextflow_project": "not in the catalog"})
    pipeline = state.catalog[name]
    values = json.loads(project["workflow_arguments"] or "{}")
    check_values(state, project_id, name, values, complete=True)
    params = nfhub_catalog.build_params(pipeline, values, project_dir(state.config, project_id))
    session = None
    resume_of = None
    if resume is not False:
        sql = "SELECT id, session_id FROM runs WHERE project_id = ? AND session_id IS NOT NULL AND nextflow_project = ?"
        args: tuple = (project_id, name)
        if resume is not True:
            if resume > MAX_SQLITE_INT:
                raise APIError(422, "no such run to resume", {"resume": "no run to resume"})
            sql += " AND id = ?"
            args = (project_id, name, resume)
        prior = await state.store.one(sql + " ORDER BY id DESC LIMIT 1", args)
        if prior is None:
            raise APIError(422, "there is no earlier run with a Nextflow session to resume",
                           {"resume": "no run to resume"})
        session, resume_of = prior["session_id"], prior["id"]
    run_id = await state.runs.create(project_id, user["id"], name, values, params, session, resume_of)
    return JSONResponse({"is_scheduled": True, "run_id": run_id})


async def cancel(request: Request) -> Response:
    user, project = await project_access(request, "write")
    state = request.app.state
    project_id = project["id"]
    await state.runs.cancel_project(project_id)
    project = await get_project(state.store, user, project_id)
    return JSONResponse({"is_scheduled": project["run_status"] in ACTIVE_STATES})


async def _get_run(request: Request, need: str = "read") -> tuple[dict[str, Any], dict[str, Any]]:
    user, project = await project_access(request, need)
    state = request.app.state
    project_id = project["id"]
    run_id = int(request.path_params["run_id"])
    row = await state.store.one("SELECT r.*, u.name AS user_name FROM runs r LEFT JOIN users u ON u.id = r.user_id"
                                " WHERE r.id = ? AND r.project_id = ?", (min(run_id, MAX_SQLITE_INT), project_id))
    if row is None:
        raise APIError(404, "run not found")
    return user, row


async def runs_list(request: Request) -> Response:
    _, project = await project_access(request)
    state = request.app.state
    project_id = project["id"]
    rows = await state.store.all("SELECT r.*, u.name AS user_name FROM runs r LEFT JOIN users u ON u.id = r.user_id"
                                 " WHERE r.project_id = ? ORDER BY r.id DESC", (project_id,))
    return JSONResponse({"runs": [run_json(r) for r in rows]})


async def runs_get(request: Request) -> Response:
    _, row = await _get_run(request)
    run = run_json(row)
    run["work_dir_size"] = await request.app.state.runs.work_size(row)
    return JSONResponse({"run": run})


def _int_param(request: Request, name: str, default: int, lo: int = 0, hi: int = MAX_SQLITE_INT) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    if not re.fullmatch(r"\d{1,18}", raw) or not lo <= int(raw) <= hi:
        raise APIError(400, f"{name} must be an integer from {lo} to {hi}")
    return int(raw)


async def runs_tasks(request: Request) -> Response:
    _, run = await _get_run(request)
    state = request.app.state
    status = request.query_params.get("status")
    offset = _int_param(request, "offset", 0)
    limit = _int_param(request, "limit", 100, 1, 1000)
    where, args = "run_id = ?", [run["id"]]
    if status:
        wanted = [s.strip().upper() for s in status.split(",") if s.strip()]
        where += f" AND status IN ({', '.join('?' for _ in wanted)})"
        args += wanted
    total = (await state.store.one(f"SELECT count(*) AS n FROM tasks WHERE {where}", tuple(args)))["n"]
    # Failed tasks first, then in task order: what a user looks for in a failed run.
    rows = await state.store.all(f"SELECT * FROM tasks WHERE {where} ORDER BY status != 'FAILED', task_id"
                                 " LIMIT ? OFFSET ?", (*args, limit, offset))
    return JSONResponse({"tasks": [task_json(r) for r in rows], "total": total})


async def runs_log(request: Request) -> Response:
    _, run = await _get_run(request)
    offset = _int_param(request, "offset", 0)
    path = request.app.state.runs.run_dir(run) / "console.log"
    max_bytes = 1 << 20

    def read() -> tuple[bytes, int]:
        try:
            with open(path, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                fh.seek(min(offset, size))
                return fh.read(max_bytes), size
        except FileNotFoundError:
            return b"", 0

    data, size = await anyio.to_thread.run_sync(read)
    # Nextflow's weblog warnings quote the URL, run secret included; same length keeps offsets true.
    data = _SECRET_IN_URL.sub(lambda m: m.group(1) + b"*" * len(m.group(2)), data)
    return Response(data, media_type="text/plain; charset=utf-8",
                    headers={"X-Log-Size": str(size), "X-Log-Offset": str(min(offset, size) + len(data)),
                             "Cache-Control": "no-store"})


_SECRET_IN_URL = re.compile(rb"([?&]token=)([A-Za-z0-9_-]+)")


async def runs_clean(request: Request) -> Response:
    _, run = await _get_run(request, "write")
    if run["status"] in ACTIVE_STATES:
        raise APIError(409, "the run is still active")
    freed = await request.app.state.runs.clean(run)
    return JSONResponse({"freed_bytes": freed, "work_dir_size": await request.app.state.runs.work_size(run)})


async def nextflow_log(scope: Scope, receive: Receive, send: Send) -> None:
    """Nextflow's weblog endpoint: authenticated by the run's own secret, durable before it answers."""
    await scope["app"].state.runs.ingest(scope, receive, send)


# Nextflow ignores the answer's body (any 2xx is success). An empty one lets uvicorn send the whole answer in one
# write: a two-byte body costs a second send(2) on every event, a measurable part of the per-event time.
_EMPTY_200 = {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]}
_EMPTY_BODY = {"type": "http.response.body", "body": b""}


async def finished(request: Request) -> Response:
    """For an external worker: the run ended (its secret authenticates; user tokens are refused with 403)."""
    runs = request.app.state.runs
    ref = runs.run_for_secret(request.scope["query_string"], request.headers.get("authorization"),
                              _project_id(request))
    if ref is None:
        if request.headers.get("x-access-token"):
            raise APIError(403, "this endpoint is for the worker; it needs the run's secret, not a user token")
        raise APIError(401, "missing or wrong run secret")
    data = await read_json(request)
    exit_code = data.get("exit_code", data.get("exitStatus"))
    if exit_code is not None and (isinstance(exit_code, bool) or not isinstance(exit_code, int)):
        raise APIError(422, "exit_code must be an integer", {"exit_code": "must be an integer"})
    proc = runs.procs.get(ref.run_id)
    if proc is not None and proc.is_running():
        raise APIError(409, "this run's Nextflow is still running here; nfhub records its end itself")
    await runs.finish(ref.run_id, exit_code, external=True)
    return JSONResponse("")


STREAM_RECHECK = 5.0  # seconds between checks that an event stream's reader may still read it


async def project_events(request: Request) -> Response:
    user, project = await project_access(request)
    state = request.app.state
    project_id = project["id"]
    last = request.headers.get("last-event-id") or request.query_params.get("last_event_id")

    streams = state.runs.streams
    if streams.get(user["id"], 0) >= MAX_STREAMS_PER_USER:
        raise APIError(429, f"at most {MAX_STREAMS_PER_USER} open event streams per user; close some first")

    async def guarded() -> AsyncIterator[bytes]:
        # A stream outlives the request that opened it: end it once its token is revoked or access is withdrawn.
        check_at = time.monotonic() + STREAM_RECHECK
        streams[user["id"]] = streams.get(user["id"], 0) + 1  # counted from its first byte (see finally)
        try:
            async for frame in state.runs.broker.stream(project_id, last, state.runs.snapshot):
                if time.monotonic() >= check_at:
                    try:
                        await project_access(request)
                    except APIError:
                        return
                    check_at = time.monotonic() + STREAM_RECHECK
                yield frame
        finally:
            streams[user["id"]] -= 1

    return StreamingResponse(guarded(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


# ---- Background: the run manager ---------------------------------------------------------------------------------


APPLY_BATCH = 2000  # events per transaction at most
APPLY_GATHER = 0.005  # seconds without a new event that count as a lull, when the applier runs
APPLY_MAX_DELAY = 0.25  # seconds an acknowledged event may wait for the applier at most (live views lag this much)
MAX_QUEUED_EVENTS = 50_000  # acknowledged but not yet applied; beyond it senders wait
MAX_QUEUED_BYTES = 64 << 20  # the same limit in bytes of event bodies (events may be up to 4 MiB each)
MAX_STREAMS_PER_USER = 16  # open event streams one user may hold
JOURNAL_TRUNCATE = 8 << 20  # the journal is emptied once it is this large and fully applied

# One acknowledged weblog event: (journal id, run id, event name, parsed body, raw body, time received).
Journaled = tuple[str, int, str, dict[str, Any], bytes, float]


class Journal:
    """The append-only file of acknowledged weblog events, written through a shared memory map.

    An append is a memory copy into the page cache: like write(2) it survives a kill -9 of nfhub (the kernel owns
    those pages), and like write(2) without fsync it does not survive a power cut. Unlike write(2) it costs no system
    call, and it never lets go of the interpreter lock in the middle of answering a request (each release hands the
    lock to the database thread, and the event loop waits to get it back). Space is reserved with posix_fallocate
    before it is mapped, so a full disk is an OSError at append time, never a SIGBUS. The file reads as zeros past
    the last record; a record's first byte is copied last, so a record cut short by a kill reads as the end."""

    CHUNK = 8 << 20

    def __init__(self, path: Path):
        self.path = path
        self.fd = -1
        self.map: mmap.mmap | None = None
        self.pos = 0  # where the next record goes
        self.size = 0  # bytes reserved and mapped

    def append(self, record: bytes) -> None:
        end = self.pos + len(record)
        if end > self.size:
            self._grow(end)
        m = self.map
        m[self.pos + 1:end] = memoryview(record)[1:]  # type: ignore[index]
        m[self.pos] = record[0]  # type: ignore[index]
        self.pos = end

    def _grow(self, need: int) -> None:
        if self.fd < 0:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        size = max(self.size * 2, -(-need // self.CHUNK) * self.CHUNK)
        os.posix_fallocate(self.fd, 0, size)  # OSError (ENOSPC) here: nothing was written
        # (if this fails, the old map still serves); populated now rather than a page fault at a time while answering
        mapped = mmap.mmap(self.fd, size, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0))
        if self.map is not None:
            self.map.close()
        self.map, self.size = mapped, size

    def reset(self) -> None:
        """Start over at the beginning: everything in the journal is applied. A file that a backlog made large
        shrinks back to one chunk (a restart reads it whole)."""
        if self.map is not None and self.pos:
            if self.size > self.CHUNK:
                self.map.close()
                self.map, self.size = None, 0
                os.ftruncate(self.fd, 0)
            else:
                self.map[:self.pos] = bytes(self.pos)
        self.pos = 0

    def close(self, applied: bool) -> None:
        if self.map is not None:
            self.map.close()
            self.map = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
            if applied:
                self.path.unlink(missing_ok=True)


@dataclass
class RunRef:
    run_id: int
    project_id: int
    run_name: str


class Broker:
    """Server-sent events per project: numbered messages, a replay buffer for Last-Event-ID, heartbeats."""

    def __init__(self, heartbeat: float = 15.0, keep: int = 2000):
        self.boot = uuid.uuid4().hex[:8]
        self.seq = 0
        self.heartbeat = heartbeat
        self.keep = keep
        self.buffers: dict[int, list[tuple[int, str, str]]] = {}
        self.waiters: dict[int, set[anyio.Event]] = {}

    def publish(self, project_id: int, kind: str, data: dict[str, Any]) -> None:
        self.seq += 1
        buf = self.buffers.setdefault(project_id, [])
        buf.append((self.seq, kind, json.dumps(data)))
        if len(buf) > self.keep:
            del buf[: len(buf) - self.keep]
        for event in self.waiters.pop(project_id, set()):
            event.set()

    def _frame(self, seq: int, kind: str, data: str) -> bytes:
        return f"id: {self.boot}-{seq}\nevent: {kind}\ndata: {data}\n\n".encode()

    async def stream(self, project_id: int, last: str | None,
                     snapshot: Callable[[int], Any]) -> AsyncIterator[bytes]:
        after = None
        if last and last.startswith(self.boot + "-") and last[len(self.boot) + 1:].isdigit():
            after = int(last[len(self.boot) + 1:])
        buf = self.buffers.get(project_id, [])
        if after is None or (buf and buf[0][0] > after + 1 and after < self.seq):
            # New client, or too far behind for the buffer: start from a full picture.
            yield b"retry: 2000\n\n"
            yield self._frame(self.seq, "snapshot", json.dumps(await snapshot(project_id)))
            after = self.seq
        while True:
            buf = self.buffers.get(project_id, [])
            # seq numbers only grow: start at the first one not sent yet (a slice: the buffer may change meanwhile)
            for seq, kind, data in buf[bisect.bisect_right(buf, after, key=itemgetter(0)):]:
                yield self._frame(seq, kind, data)
                after = seq
            event = anyio.Event()
            self.waiters.setdefault(project_id, set()).add(event)
            with anyio.move_on_after(self.heartbeat) as scope:
                await event.wait()
            if scope.cancelled_caught:
                self.waiters.get(project_id, set()).discard(event)
                yield b": heartbeat\n\n"


class RunManager:
    """Owns runs from scheduling to their end: the dispatcher, launching, weblog ingestion, recovery, cancel."""

    def __init__(self, config: Config, store: Store, catalog: dict[str, Any]):
        self.config = config
        self.store = store
        self.catalog = catalog
        self.dispatcher = nfhub_worker.Dispatcher(config.max_concurrent_runs, self._run)
        self.broker = Broker()
        self.procs: dict[int, nfhub_worker.RunProcess] = {}
        self.terminating: set[int] = set()
        self.secrets: dict[str, RunRef] = {}  # sha256(secret) -> run, for weblog and finished
        self.run_project: dict[int, int] = {}  # run id -> project id, for the live views
        self.known: dict[str, RunRef] = {}  # secrets seen in requests already -> run (same lifetime as above)
        self.ended: dict[int, anyio.Event] = {}
        self.boot = uuid.uuid4().hex[:12]
        self.seq = 0
        self.queue: list[Journaled] = []
        self.task_status: dict[int, dict[int, str]] = {}  # run -> task -> committed status, for the applier only
        self.wake = anyio.Event()
        self.woken = False  # whether `wake` is set (anyio's Event.is_set is a Python call: this is on every event)
        self.applied = 0  # journal sequence numbers applied so far (this boot)
        self.applied_event = anyio.Event()
        self.journal_path = config.data_path / "weblog.journal"
        self.journal = Journal(self.journal_path)
        self.journal_keep = False
        self.hurry = 0  # coroutines waiting in flush(): apply now, do not wait for a lull
        self.queued_bytes = 0
        self.streams: dict[int, int] = {}  # user id -> open event streams
        self.task_group: anyio.abc.TaskGroup | None = None

    # -- paths
    def run_dir(self, run: dict[str, Any]) -> Path:
        return runs_dir(self.config, run["project_id"]) / str(run["id"])

    def weblog_base(self) -> str:
        """Where Nextflow reaches nfhub: the weblog_url setting, else the address nfhub listens on (loopback when it
        listens on all addresses)."""
        if self.config.weblog_url:
            return self.config.weblog_url.rstrip("/")
        host = self.config.host
        host = "127.0.0.1" if host in ("", "0.0.0.0") else "[::1]" if host == "::" else host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"http://{host}:{self.config.port}"

    # -- lifecycle
    async def start(self, tg: anyio.abc.TaskGroup) -> None:
        self.task_group = tg
        await self._replay_journal()
        await tg.start(self.dispatcher.serve)
        tg.start_soon(self._applier)
        await self._recover()

    def close(self) -> None:
        self.journal.close(applied=self.applied >= self.seq and not self.journal_keep)

    # -- scheduling
    async def create(self, project_id: int, user_id: int, pipeline_name: str, values: dict, params: dict,
                     session: str | None, resume_of: int | None) -> int:
        secret = secrets.token_urlsafe(24)
        async with self.store.write() as db:
            if await _active_run(db, project_id):
                raise APIError(409, "the project already has a queued or running run")
            cur = await db.execute(
                "INSERT INTO runs (project_id, user_id, status, nextflow_project, arguments, params, run_name,"
                " secret_hash, session_id, resume_of, created_at) VALUES (?, ?, 'queued', ?, ?, ?, '', ?, ?, ?, ?)",
                (project_id, user_id, pipeline_name, json.dumps(values), json.dumps(params), secret_hash(secret),
                 None, resume_of, now_iso()))
            run_id = int(cur.lastrowid or 0)
            self.task_status.pop(run_id, None)  # a deleted project's run id may come back
            run_name = nfhub_worker.new_run_name(run_id)
            spec = self._spec(project_id, run_id, run_name, pipeline_name, params, secret, session)
            try:
                argv = await anyio.to_thread.run_sync(nfhub_worker.prepare_run, spec)
            except ValueError as exc:
                raise APIError(422, f"cannot prepare the run: {exc}") from None
            await db.execute("UPDATE runs SET run_name = ?, command = ?, session_id = ? WHERE id = ?",
                             (run_name, json.dumps(argv), session, run_id))
        self.secrets[secret_hash(secret)] = RunRef(run_id, project_id, run_name)
        self.run_project[run_id] = project_id
        self.ended[run_id] = anyio.Event()
        self.dispatcher.submit(run_id)
        await self._publish_run(run_id)
        return run_id

    def _spec(self, project_id: int, run_id: int, run_name: str, pipeline_name: str, params: dict, secret: str,
              session: str | None) -> nfhub_worker.LaunchSpec:
        pipeline = self.catalog[pipeline_name]
        launch = runs_dir(self.config, project_id)
        return nfhub_worker.LaunchSpec(
            run_id=run_id, nextflow=self.config.nextflow, source=pipeline.source, local=pipeline.local,
            revision=pipeline.revision, profiles=tuple(pipeline.profiles), config_files=tuple(pipeline.config),
            params=params, run_dir=launch / str(run_id), launch_dir=launch, work_dir=launch / "work",
            run_name=run_name,
            weblog_url=f"{self.weblog_base()}/api/projects/{project_id}/nextflow-log?token={secret}",
            resume_session=session, env={"NXF_ANSI_LOG": "false"})

    async def _run(self, run_id: int) -> None:
        """Dispatcher callback: launch a queued run and supervise it to its end."""
        run = await self.store.one("SELECT * FROM runs WHERE id = ?", (run_id,))
        if run is None or run["status"] != "queued":
            return
        async with self.store.write() as db:
            cur = await db.execute("UPDATE runs SET status = 'starting', started_at = ? WHERE id = ?"
                                   " AND status = 'queued' AND cancel_requested = 0", (now_iso(), run_id))
            if not cur.rowcount:
                return  # cancelled between the queue and here: never launch it
        await self._publish_run(run_id)
        # The run's files and argv were written when it was scheduled; launching needs only its folders.
        argv = json.loads(run["command"])
        launch = runs_dir(self.config, run["project_id"])
        spec = nfhub_worker.LaunchSpec(
            run_id=run_id, nextflow=argv[0], source="", local=True, revision=None, profiles=(), config_files=(),
            params={}, run_dir=self.run_dir(run), launch_dir=launch, work_dir=launch / "work",
            run_name=run["run_name"], weblog_url="", env={"NXF_ANSI_LOG": "false"})
        try:
            proc = await nfhub_worker.launch(spec, argv)
        except nfhub_worker.LaunchError as exc:
            await self.finish(run_id, None, error=str(exc))
            return
        self.procs[run_id] = proc
        async with self.store.write() as db:
            await db.execute("UPDATE runs SET pid = ?, pid_start = ? WHERE id = ?", (proc.pid, proc.start_time, run_id))
        cancelled = await self.store.one("SELECT cancel_requested FROM runs WHERE id = ?", (run_id,))
        if cancelled and cancelled["cancel_requested"]:
            self._terminate(run_id, proc)  # cancelled while it was being launched
        await self._supervise(run_id, proc)

    async def _supervise(self, run_id: int, proc: nfhub_worker.RunProcess) -> None:
        code = await proc.wait()
        # Nextflow gone (a crash, SIGKILL): its tasks must not live on as orphans in its process group.
        with anyio.move_on_after(5):
            while await anyio.to_thread.run_sync(nfhub_worker.kill_group_leftovers, proc.pid, proc.start_time):
                await anyio.sleep(0.05)
        await self.finish(run_id, code)

    # -- the end of a run
    async def finish(self, run_id: int, exit_code: int | None, *, error: str | None = None,
                     external: bool = False) -> None:
        """Set the final state from the exit code, the events and the files Nextflow left."""
        run = await self.store.one("SELECT * FROM runs WHERE id = ?", (run_id,))
        if run is None or run["status"] not in ACTIVE_STATES:
            return
        self.procs.pop(run_id, None)
        await self.flush()  # every event acknowledged so far is applied before the verdict
        run = await self.store.one("SELECT * FROM runs WHERE id = ?", (run_id,))
        if run is None:
            return
        run_dir = self.run_dir(run)
        launch = runs_dir(self.config, run["project_id"])
        trace = await anyio.to_thread.run_sync(nfhub_worker.parse_trace, run_dir / "trace.txt")
        history = await anyio.to_thread.run_sync(nfhub_worker.find_history, launch, run["run_name"])
        stats = json.loads(run["stats"]) if run["stats"] else {}
        if run["cancel_requested"]:
            status = "cancelled"
        elif exit_code is None and not external:
            # Not our child (adopted after a restart): judge from Nextflow's own records.
            if history and history["status"] in ("OK", "ERR"):
                status = "succeeded" if history["status"] == "OK" else "failed"
            elif stats.get("success") is not None:
                status = "succeeded" if stats["success"] else "failed"
            else:
                status = "lost" if error is None else "failed"
        elif exit_code == 0 or (external and exit_code is None and stats.get("success")):
            status = "succeeded"
        else:
            status = "failed"
        message = run["error_message"]
        if status == "failed" and not message:
            message = error or await anyio.to_thread.run_sync(nfhub_worker.console_tail, run_dir / "console.log")
            message = message or f"Nextflow exited with code {exit_code}"
        elif status == "lost":
            message = message or "nfhub lost track of this run (its process ended while nfhub was down)"
        session = run["session_id"] or (history or {}).get("session_id")
        cached = sum(1 for t in trace if t["status"] == "CACHED")

        def record(db: sqlite3.Connection) -> None:
            self.task_status.pop(run_id, None)  # rows written here too; and the run is over
            for task in trace:  # cached tasks send no events, and events sent while nfhub was down are lost
                upsert_task(db, run_id, task)
            db.execute("UPDATE runs SET status = ?, exit_code = ?, error_message = ?, finished_at = ?, session_id = ?,"
                       f" cached_processes = max(cached_processes, ?) WHERE id = ? AND {ACTIVE_SQL}",
                       (status, exit_code, message, now_iso(), session, cached, run_id))

        await self.store.write_fn(record)
        await self._ended(run_id, status, exit_code)

    async def _ended(self, run_id: int, status: str, exit_code: int | None) -> None:
        for table in (self.secrets, self.known):
            for key, ref in list(table.items()):
                if ref.run_id == run_id:
                    del table[key]  # the secret dies with the run
        self.terminating.discard(run_id)
        log.info("run %d ended %s (exit code %s)", run_id, status, exit_code)
        self.ended.setdefault(run_id, anyio.Event()).set()
        await self._publish_run(run_id)

    # -- cancel
    async def cancel_project(self, project_id: int) -> None:
        run = await self.store.one(f"SELECT * FROM runs WHERE project_id = ? AND {ACTIVE_SQL} ORDER BY id DESC LIMIT 1",
                                   (project_id,))
        if run is None:
            return
        run_id = run["id"]
        async with self.store.write() as db:
            await db.execute("UPDATE runs SET cancel_requested = 1 WHERE id = ?", (run_id,))
            # Atomic against _run's queued -> starting: exactly one of the two wins.
            cur = await db.execute("UPDATE runs SET status = 'cancelled', finished_at = ? WHERE id = ?"
                                   " AND status = 'queued'", (now_iso(), run_id))
        if cur.rowcount:
            self.dispatcher.drop(run_id)
            await self._ended(run_id, "cancelled", None)
            return
        ended = self.ended.setdefault(run_id, anyio.Event())
        # Starting: the launch may be a moment away; _run sees cancel_requested once the process exists.
        with anyio.move_on_after(float(self.config.cancel_grace) + 15):
            while run_id not in self.procs and not ended.is_set():
                await anyio.sleep(0.02)
            proc = self.procs.get(run_id)
            if proc is not None:
                self._terminate(run_id, proc)
            await ended.wait()

    def _terminate(self, run_id: int, proc: nfhub_worker.RunProcess) -> None:
        if run_id not in self.terminating:
            self.terminating.add(run_id)
            assert self.task_group is not None
            self.task_group.start_soon(nfhub_worker.terminate, proc, float(self.config.cancel_grace))

    # -- weblog ingestion
    def run_for_secret(self, query_string: bytes, authorization: str | None, project_id: int) -> RunRef | None:
        """The run whose secret the request carries (?token= or HTTP Basic weblog.basicToken), else None."""
        token = None
        for pair in query_string.split(b"&"):
            if pair.startswith(b"token="):
                token = pair[6:].decode("latin-1")
                if "%" in token:
                    token = unquote(token)
                break
        if not token and authorization and authorization[:6].lower() == "basic ":
            try:
                token = base64.b64decode(authorization[6:], validate=True).decode().partition(":")[2]
            except ValueError:
                token = None
        if not token or len(token) > 256:
            return None
        ref = self.known.get(token)
        if ref is None:
            ref = self.secrets.get(secret_hash(token))  # a hash lookup: no timing leak on the secret itself
            if ref is None:
                return None
            self.known[token] = ref  # Nextflow sends the same secret with every event: skip the hash next time
        if ref.project_id != project_id:
            return None
        return ref

    def authorize(self, project_id: int, query_string: bytes, authorization: str | None) -> RunRef:
        """The run a weblog request is for, by its secret; 401 otherwise. Checked before the body is read."""
        ref = self.run_for_secret(query_string, authorization, project_id)
        if ref is None:
            raise APIError(401, "missing or wrong run secret")
        return ref

    def backlogged(self) -> bool:
        """Whether the applier is so far behind that a sender must wait for it (memory stays bounded)."""
        return len(self.queue) > MAX_QUEUED_EVENTS or self.queued_bytes > MAX_QUEUED_BYTES

    def accept(self, ref: RunRef, body: bytes) -> None:
        """Check one weblog event, make it durable and queue it for the applier; raises APIError (nothing recorded).
        Synchronous: both the ASGI route and the HTTP-level fast lane (WeblogProtocol) answer 2xx once it returns."""
        try:
            event = _loads(body)
        except ValueError:
            try:  # what the stricter parser refuses and Python's takes (NaN, a lone surrogate, a BOM, ...)
                event = json.loads(body)
            except (ValueError, RecursionError):
                raise APIError(400, "event is not valid JSON") from None
        if type(event) is not dict or type(kind := event.get("event")) is not str:
            raise APIError(400, "event must be a JSON object with an 'event' name")
        if event.get("runName") not in (None, ref.run_name):
            raise APIError(401, "event belongs to another run")
        self.seq += 1
        jid = f"{self.boot}-{self.seq}"
        now = time.time()
        try:
            self.journal.append(b"%s\t%d\t%r\t%d\n%s\n" % (jid.encode(), ref.run_id, now, len(body), body))
        except OSError as exc:
            self.seq -= 1
            log.error("weblog journal: %s", exc)
            raise APIError(507, "no space left to record the event") from None
        self.queue.append((jid, ref.run_id, kind[:64], event, body, now))
        self.queued_bytes += len(body)
        if not self.woken:
            self.woken = True
            self.wake.set()

    async def ingest(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The weblog endpoint as a bare ASGI app (served by uvicorn through WeblogProtocol's fast lane instead,
        except for requests that lane leaves to ASGI). Errors are raised as APIError, answered like everywhere else."""
        authorization = None
        length = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
            elif name == b"content-length":
                length = value
        ref = self.authorize(int(scope["path_params"]["id"]), scope["query_string"], authorization)
        if length is not None and length.isdigit() and int(length) > MAX_WEBLOG_BYTES:
            raise APIError(413, f"event larger than {MAX_WEBLOG_BYTES} bytes")
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if len(body) > MAX_WEBLOG_BYTES:
                raise APIError(413, f"event larger than {MAX_WEBLOG_BYTES} bytes")
            if not message.get("more_body"):
                break
        if self.backlogged():
            await self.flush()  # back-pressure: a sender far ahead of the database waits
        self.accept(ref, body)
        await send(_EMPTY_200)
        await send(_EMPTY_BODY)

    async def flush(self) -> None:
        """Wait until every event acknowledged so far is applied."""
        target = self.seq
        self.hurry += 1
        self.woken = True
        self.wake.set()
        try:
            while self.applied < target:
                await self.applied_event.wait()
        finally:
            self.hurry -= 1

    async def _applier(self) -> None:
        while True:
            await self.wake.wait()
            # Apply in a lull, or at the latest APPLY_MAX_DELAY after the first waiting event: while Nextflow sends
            # back to back, its answers are not slowed down by database work (durability is the journal's job).
            first = time.monotonic()
            while not self.hurry and len(self.queue) < APPLY_BATCH and time.monotonic() - first < APPLY_MAX_DELAY:
                seen = self.seq
                await anyio.sleep(APPLY_GATHER)
                if self.seq == seen:
                    break
            self.wake = anyio.Event()
            self.woken = False
            while self.queue:
                batch, self.queue = self.queue[:APPLY_BATCH], self.queue[APPLY_BATCH:]
                self.queued_bytes -= sum(len(item[4]) for item in batch)
                try:
                    await self._apply_batch(batch, replay=False)
                except Exception:
                    # The database itself failed (disk full?): keep the journal, the next start replays it.
                    log.exception("could not apply %d weblog event(s); they stay in the journal", len(batch))
                    self.journal_keep = True
                self.applied = max(self.applied, int(batch[-1][0].rsplit("-", 1)[1]))
                event, self.applied_event = self.applied_event, anyio.Event()
                event.set()
            if self.applied >= self.seq and not self.journal_keep and self.journal.pos > JOURNAL_TRUNCATE:
                self.journal.reset()  # everything in it is committed; no await since the check

    async def _apply_batch(self, batch: list[Journaled], replay: bool = True) -> None:
        try:
            changed = await self.store.write_fn(apply_events, batch, self.task_status, replay)
        except Exception:
            self.task_status.clear()  # statuses of a transaction that did not commit
            # One malformed event must not take the others (or the next start) down with it: apply them one by one
            # and drop the ones that cannot be applied.
            changed = {"runs": set(), "tasks": {}}
            failed: Exception | None = None
            for item in batch:
                try:
                    one = await self.store.write_fn(apply_events, [item], self.task_status, replay)
                except Exception as exc:
                    self.task_status.clear()
                    log.warning("run %s: dropped a weblog event that cannot be applied (%s: %s)", item[1],
                                type(exc).__name__, exc)
                    failed = exc
                    continue
                changed["runs"] |= one["runs"]
                for run_id, tasks in one["tasks"].items():
                    changed["tasks"].setdefault(run_id, set()).update(tasks)
            if failed is not None and len(batch) > 1 and not changed["runs"] and not changed["tasks"]:
                raise failed from None  # nothing at all went in: the database is the problem, not the events
        for run_id in changed["runs"] | set(changed["tasks"]):
            await self._publish_run(run_id, changed["tasks"].get(run_id))

    async def _replay_journal(self) -> None:
        """Events acknowledged before a crash but not yet applied are applied now (idempotent by jid)."""
        try:
            data = self.journal_path.read_bytes()
        except FileNotFoundError:
            return
        batch = []
        pos = 0
        damaged = None
        while pos < len(data):
            if data[pos] == 0:
                break  # the zeros past the last record (or a record cut short, never acknowledged)
            end = data.find(b"\n", pos)
            if end < 0:
                break
            try:
                jid, run_id, received, length = data[pos:end].decode().split("\t")
                body = data[end + 1:end + 1 + int(length)]
                if len(body) < int(length):
                    break  # torn write at the very end: never acknowledged
                event = json.loads(body)
                batch.append((jid, int(run_id), str(event.get("event"))[:64], event, body, float(received)))
            except (ValueError, AttributeError):
                damaged = self.journal_path.with_name(f"weblog.journal.damaged-{int(time.time())}")
                log.warning("weblog journal: damaged entry at byte %d; replaying what comes before it and keeping"
                            " the file as %s", pos, damaged.name)
                break
            pos = end + 1 + int(length) + 1
        if batch:
            log.info("replaying %d weblog event(s) from the journal", len(batch))
            for i in range(0, len(batch), 1000):
                await self._apply_batch(batch[i:i + 1000])
        if damaged is not None:
            os.replace(self.journal_path, damaged)
        else:
            self.journal_path.unlink()

    # -- recovery after a restart
    async def _recover(self) -> None:
        rows = await self.store.all(f"SELECT * FROM runs WHERE {ACTIVE_SQL} ORDER BY id")
        for run in rows:
            self.secrets[run["secret_hash"]] = RunRef(run["id"], run["project_id"], run["run_name"])
            self.run_project[run["id"]] = run["project_id"]
            self.ended[run["id"]] = anyio.Event()
            if run["status"] == "queued" or (run["status"] == "starting" and not run["pid"]):
                async with self.store.write() as db:
                    await db.execute("UPDATE runs SET status = 'queued' WHERE id = ?", (run["id"],))
                self.dispatcher.submit(run["id"])
                continue
            proc = nfhub_worker.adopt(run["pid"], run["pid_start"], run["run_name"]) if run["pid"] else None
            if proc is not None:
                log.info("run %d: adopted its running Nextflow (pid %d)", run["id"], proc.pid)
                self.procs[run["id"]] = proc
                assert self.task_group is not None
                self.task_group.start_soon(self._supervise, run["id"], proc)
            else:
                log.info("run %d: its Nextflow ended while nfhub was down; judging from its files", run["id"])
                await self.finish(run["id"], None)

    # -- publishing to event streams
    async def snapshot(self, project_id: int) -> dict[str, Any]:
        project = await self.store.one(PROJECT_SELECT.format(access="NULL") + " WHERE p.id = ?", (project_id,))
        run = None
        if project and project["run_id"]:
            row = await self.store.one("SELECT * FROM runs WHERE id = ?", (project["run_id"],))
            run = run_json(row, brief=True) if row else None
        return {"project": _progress(project) if project else None, "run": run}

    async def _publish_run(self, run_id: int, task_ids: set[int] | None = None) -> None:
        if not self.broker.waiters and not self.broker.buffers:
            return  # no event stream was ever opened: skip the query (it ran after every weblog batch)
        known = self.run_project.get(run_id)
        if known is not None and not self.broker.waiters.get(known) and known not in self.broker.buffers:
            return  # nobody has ever listened to this run's project
        row = await self.store.one("SELECT r.*, u.name AS user_name FROM runs r LEFT JOIN users u ON u.id = r.user_id"
                                   " WHERE r.id = ?", (run_id,))
        if row is None:
            return
        project_id = row["project_id"]
        if not self.broker.waiters.get(project_id) and project_id not in self.broker.buffers:
            return  # nobody has ever listened to this project: skip the work
        self.broker.publish(project_id, "run", run_json(row, brief=True))
        if task_ids:
            marks = ", ".join("?" for _ in task_ids)
            tasks = await self.store.all(f"SELECT * FROM tasks WHERE run_id = ? AND task_id IN ({marks})",
                                         (run_id, *task_ids))
            for task in tasks:
                self.broker.publish(project_id, "task", {"run_id": run_id, **task_json(task)})

    # -- hygiene
    async def work_size(self, run: dict[str, Any]) -> int:
        rows = await self.store.all("SELECT workdir FROM tasks WHERE run_id = ? AND workdir IS NOT NULL", (run["id"],))
        work = runs_dir(self.config, run["project_id"]) / "work"

        def size() -> int:
            total = 0
            for r in rows:
                path = Path(r["workdir"])
                if path.is_dir() and _inside(path, work):
                    total += nfhub_worker.work_dir_size(path)
            return total

        return await anyio.to_thread.run_sync(size)

    async def clean(self, run: dict[str, Any]) -> int:
        rows = await self.store.all("SELECT workdir FROM tasks WHERE run_id = ? AND workdir IS NOT NULL", (run["id"],))
        work = runs_dir(self.config, run["project_id"]) / "work"
        keep = [project_dir(self.config, run["project_id"])]
        return await anyio.to_thread.run_sync(nfhub_worker.clean_work_dir, work, [r["workdir"] for r in rows], keep)


# ---- Weblog: the HTTP-level fast lane ------------------------------------------------------------------------------

_WEBLOG_URL = re.compile(rb"/api/projects/(\d{1,18})/nextflow-log(?:\?([^#]*))?(?:#.*)?", re.DOTALL)


def weblog_protocol(state: Any, extra_headers: tuple = ()) -> type:
    """uvicorn's httptools protocol with a fast lane for Nextflow's weblog POSTs.

    Nextflow sends one small event at a time and waits for each answer, so the per-request cost of the ASGI machinery
    (a task, the receive/send coroutines, the middleware stack) is most of an event's cost. A POST to
    /api/projects/<id>/nextflow-log is answered here, synchronously, inside the parser callbacks: the run's secret is
    checked when the headers are complete, the body is collected, `RunManager.accept` journals and queues the event,
    and the answer is written at the end of the event loop's pass. The answers are the ones the ASGI route gives
    (same statuses, JSON error bodies and headers). Requests the lane does not take (any other path or method, a
    pipelined request behind one still being answered, `Expect: 100-continue`, an upgrade, a backlogged applier) go
    the ordinary ASGI way. `state` is the app's state, whose `runs` the lifespan sets. ImportError without httptools."""
    from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

    # Answers given during one pass of the event loop are written together at its end, as the ASGI route's tasks
    # write theirs: on these 2 cores that cut the cost of each write by two thirds, because the sender it wakes up
    # is woken once per pass, not once per answer. By then the rest of what the connection sent is parsed too, so
    # uvicorn's keep-alive timer is armed only if no request is under way (as uvicorn itself does).
    pending: list[tuple[Any, bytes]] = []

    def flush() -> None:
        answers = pending[:]
        pending.clear()
        for protocol, data in answers:
            protocol._weblog_due -= 1
            transport = protocol.transport
            if transport.is_closing():
                continue
            try:
                transport.write(data)
                if protocol._weblog_closing and not protocol._weblog_due:
                    transport.close()  # a graceful shutdown was waiting for this answer
                elif protocol._weblog is None and (protocol.cycle is None or protocol.cycle.response_complete):
                    protocol.on_response_complete()  # counts the request, arms the keep-alive timer
                else:
                    protocol.server_state.total_requests += 1
            except Exception:  # one connection's trouble is not the others'
                log.exception("weblog answer to %s", protocol.client)
                transport.abort()

    extra = b"".join(name + b": " + value + b"\r\n" for name, value in extra_headers)
    ok_tail = extra + b"content-length: 0\r\n"
    cache: list = [None, b""]  # uvicorn's default headers (server, date: a new list every second) and their bytes

    class WeblogProtocol(HttpToolsProtocol):
        _weblog: list | None = None  # this request, when the lane takes it: [run or APIError, body chunks, size]
        _weblog_due = 0  # answers of this connection waiting for the end of the loop's pass
        _weblog_closing = False  # a graceful shutdown asked this connection to close after its answers
        _runs: RunManager | None = None

        def on_headers_complete(self) -> None:
            match = _WEBLOG_URL.fullmatch(self.url)
            runs = self._runs
            if runs is None:  # the app's lifespan makes it, before the first connection is accepted
                runs = self._runs = state.runs
            if (match is None or self.parser.get_method() != b"POST" or self.expect_100_continue
                    or self.parser.should_upgrade() or not (self.cycle is None or self.cycle.response_complete)
                    or runs.backlogged()):
                self._weblog = None
                super().on_headers_complete()
                return
            authorization = length = None
            for name, value in self.headers:
                if name == b"authorization":
                    authorization = value.decode("latin-1")
                elif name == b"content-length":
                    length = value
            try:
                ref: RunRef | APIError = runs.authorize(int(match[1]), match[2] or b"", authorization)
            except APIError as exc:
                ref = exc  # answered once the body is in (and dropped), so the connection stays usable
            self._weblog = [ref, [], 0]
            if length is not None and length.isdigit() and int(length) > MAX_WEBLOG_BYTES:
                self._weblog_too_large()

        def _weblog_too_large(self) -> None:
            # answered at once and the connection closed, as the ASGI route does: nobody reads megabytes to refuse them
            ref = self._weblog[0]  # type: ignore[index]
            error = ref if type(ref) is APIError else APIError(413, f"event larger than {MAX_WEBLOG_BYTES} bytes")
            self._weblog_answer(error, close=True)

        def on_body(self, body: bytes) -> None:
            weblog = self._weblog
            if weblog is None:
                super().on_body(body)
                return
            if weblog[0] is None:
                return  # already answered, the connection is closing
            weblog[2] += len(body)
            if weblog[2] > MAX_WEBLOG_BYTES:
                self._weblog_too_large()
            elif type(weblog[0]) is RunRef:
                weblog[1].append(body)  # (a refused request's body is dropped)

        def on_message_complete(self) -> None:
            weblog = self._weblog
            if weblog is None:
                super().on_message_complete()
                return
            self._weblog = None
            ref, chunks, _ = weblog
            if ref is None:
                return  # answered early (413), the connection is closing
            if type(ref) is RunRef:
                try:
                    self._runs.accept(ref, chunks[0] if len(chunks) == 1 else b"".join(chunks))
                    ref = None
                except APIError as exc:
                    ref = exc
                except Exception:  # a bug: answered like the ASGI app's 500, never a broken connection
                    log.exception("weblog event for run %s", ref.run_id)
                    self._weblog_answer(APIError(500, "internal error"), close=True)
                    return
            self._weblog_answer(ref, close=self._weblog_closing)

        def shutdown(self) -> None:
            # uvicorn's graceful shutdown: a connection in the middle of a lane request, or with an answer not yet
            # written, is closed once that answer is out, like one in the middle of an ASGI request
            if self._weblog is not None or self._weblog_due:
                self._weblog_closing = True
                return
            super().shutdown()

        def _weblog_answer(self, error: APIError | None, close: bool) -> None:
            if self._weblog is not None:
                self._weblog[0] = None
            keep = not close and self.parser is not None and self.parser.should_keep_alive() \
                and self.parser.get_http_version() != "1.0"
            defaults = self.server_state.default_headers
            if cache[0] is not defaults:
                cache[0], cache[1] = defaults, b"".join(n + b": " + v + b"\r\n" for n, v in defaults)
            if error is None:
                head = [STATUS_LINE[200], cache[1], ok_tail]
            else:  # the body Starlette's JSONResponse renders for error_response
                payload = json.dumps({"error": error.message}, ensure_ascii=False, separators=(",", ":")).encode()
                head = [STATUS_LINE[error.status], cache[1], extra,
                        b"content-length: %d\r\ncontent-type: application/json\r\n" % len(payload)]
            if not keep:
                head.append(b"connection: close\r\n")
            head.append(b"\r\n")
            if error is not None:
                head.append(payload)
            data = b"".join(head)
            if keep:
                if not pending:
                    self.loop.call_soon(flush)
                pending.append((self, data))
                self._weblog_due += 1
            else:
                if pending:
                    flush()  # what this connection was answered before goes first
                self.transport.write(data)
                self.server_state.total_requests += 1
                self.transport.close()

    return WeblogProtocol


def _inside(path: Path, root: Path) -> bool:
    try:
        return os.path.commonpath([os.path.realpath(path), os.path.realpath(root)]) == os.path.realpath(root)
    except ValueError:
        return False


def _progress(project: dict[str, Any]) -> dict[str, Any]:
    return {"id": project["id"], "submitted_processes": project["submitted_processes"],
            "completed_processes": project["completed_processes"],
            "is_scheduled": project["run_status"] in ACTIVE_STATES, "status": project["run_status"],
            "run_id": project["run_id"]}


# ---- OpenAPI -----------------------------------------------------------------------------------------------------


def openapi_paths() -> dict[str, Any]:
    """OpenAPI path items for the run routes."""
    from nfhub import _ID, _op, _query

    run_id = {"name": "run_id", "in": "path", "required": True, "schema": {"type": "integer"}}
    run = {"type": "object", "properties": {"run": {"type": "object"}}}
    secret = [_ID, _query("token", description="the run's secret (or HTTP Basic weblog.basicToken)")]
    weblog = _op("Nextflow's weblog events (only Nextflow posts here; authenticated by the run's secret)", auth=False,
                 params=secret, body={"type": "object", "required": ["event"]}, errors=(400, 401, 413, 507))
    finished_op = _op("An external worker reports the end of a run (the run's secret; user tokens get 403)",
                      auth=False, params=secret, body={"type": "object", "properties": {"exit_code": {
                          "type": ["integer", "null"]}}}, response={"type": "string"}, errors=(401, 403, 422))
    log_op = _op("The run's console output from a byte offset (X-Log-Size, X-Log-Offset headers)",
                 params=[_ID, run_id, _query("offset", "integer"), _query("token")], errors=(400, 404),
                 response={"type": "string"}, content_type="text/plain")
    events_op = _op("Live project progress as text/event-stream (snapshot, run and task events; Last-Event-ID)",
                    params=[_ID, _query("token")], errors=(404,), response={"type": "string"},
                    content_type="text/event-stream")
    return {
        "/api/projects/{id}/schedule": {"post": _op(
            "Schedule the project's pipeline; optional {\"resume\": true | run_id}", params=[_ID],
            body={"type": "object", "properties": {"resume": {"type": ["boolean", "integer"]}}},
            response={"type": "object", "properties": {"is_scheduled": {"type": "boolean"},
                                                       "run_id": {"type": "integer"}}},
            errors=(400, 403, 404, 409, 422))},
        "/api/projects/{id}/cancel": {"post": _op(
            "Cancel the queued or running run (answers once it has stopped)", params=[_ID],
            response={"type": "object", "properties": {"is_scheduled": {"type": "boolean"}}}, errors=(403, 404))},
        "/api/projects/{id}/nextflow-log": {"post": weblog},
        "/api/projects/{id}/finished": {"post": finished_op},
        "/api/projects/{id}/events": {"get": events_op},
        "/api/projects/{id}/runs": {"get": _op("Run history, newest first", params=[_ID], response={
            "type": "object", "properties": {"runs": {"type": "array", "items": {"type": "object"}}}},
            errors=(404,))},
        "/api/projects/{id}/runs/{run_id}": {"get": _op("One run", params=[_ID, run_id], response=run,
                                                        errors=(404,))},
        "/api/projects/{id}/runs/{run_id}/tasks": {"get": _op(
            "The run's tasks, failed first", params=[_ID, run_id, _query("status"), _query("offset", "integer"),
                                                     _query("limit", "integer")],
            response={"type": "object", "properties": {"tasks": {"type": "array", "items": {"type": "object"}},
                                                       "total": {"type": "integer"}}}, errors=(400, 404))},
        "/api/projects/{id}/runs/{run_id}/log": {"get": log_op},
        "/api/projects/{id}/runs/{run_id}/clean": {"post": _op(
            "Remove a finished run's task work directories", params=[_ID, run_id], response={
                "type": "object", "properties": {"freed_bytes": {"type": "integer"},
                                                 "work_dir_size": {"type": "integer"}}}, errors=(403, 404, 409))},
    }
