"""nfhub runs: scheduling, the run manager (dispatch, launch, supervision, recovery, cancel), the run history
endpoints and the live event streams. Nextflow itself is nfhub_worker's business; its weblog events reach the tables
through nfhub_weblog, which tells the manager what changed.

Floor 4: imports the leaves, floors 2 and 3. Nothing here runs at import time."""

from __future__ import annotations

import bisect
import json
import os
import re
import secrets
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from operator import itemgetter
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

import nfhub_catalog
import nfhub_files
import nfhub_worker
from nfhub_auth import PROJECT_SELECT, project_access
from nfhub_config import Config, project_dir, runs_dir, uploads_dir
from nfhub_http import (
    ID_PARAM,
    MAX_SQLITE_INT,
    APIError,
    log,
    operation,
    path_id,
    query_param,
    read_json,
)
from nfhub_store import ACTIVE_SQL, ACTIVE_STATES, Store, Tx, move_run, now_iso
from nfhub_weblog import RunRef, Weblog, secret_hash, upsert_task
from nfhub_worker import TASK_COLUMNS

# ---- Runs as JSON ---------------------------------------------------------------------------------------------------


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


# ---- Handlers: runs ----------------------------------------------------------------------------------------------


async def has_active_run(db: Tx, project_id: int) -> bool:
    """Whether the project has a queued, starting or running run (inside a write transaction, to act on it)."""
    found = await db.execute(f"SELECT 1 FROM runs WHERE project_id = ? AND {ACTIVE_SQL} LIMIT 1", (project_id,))
    return found.fetchone() is not None


def runs_of(conn: HTTPConnection) -> RunManager:
    """The RunManager of the app serving this request (set by nfhub.create_app's lifespan)."""
    return conn.app.state.runs


def check_values(manager: RunManager, project_id: int, pipeline_name: str, values: dict, *, complete: bool) -> None:
    """Validate workflow arguments against the catalog (nfhub_catalog.ArgumentsError, a 422); paths go through the
    files' one path function."""
    ctx = project_files(manager.config, project_id)
    nfhub_catalog.check_arguments(manager.catalog[pipeline_name], values, lambda rel: nfhub_files.resolve_path(ctx, rel),
                                  complete=complete)


def project_files(config: Config, project_id: int) -> nfhub_files.ProjectFiles:
    """The project's files as nfhub_files sees them: its folder, the run folders its links may reach, staging."""
    return nfhub_files.ProjectFiles(root=project_dir(config, project_id).resolve(),
                                    link_roots=(runs_dir(config, project_id).resolve(),),
                                    staging=uploads_dir(config, project_id).resolve(),
                                    max_upload_bytes=config.max_upload_bytes)


async def schedule(request: Request) -> Response:
    user, project = await project_access(request, "write")
    state = runs_of(request)
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
    run_id = await state.create(project_id, user["id"], name, values, params, session, resume_of)
    return JSONResponse({"is_scheduled": True, "run_id": run_id})


async def cancel(request: Request) -> Response:
    _, project = await project_access(request, "write")
    await runs_of(request).cancel_project(project["id"])
    _, project = await project_access(request)
    return JSONResponse({"is_scheduled": project["run_status"] in ACTIVE_STATES})


async def _get_run(request: Request, need: str = "read") -> tuple[dict[str, Any], dict[str, Any]]:
    user, project = await project_access(request, need)
    row = await runs_of(request).store.one(
        "SELECT r.*, u.name AS user_name FROM runs r LEFT JOIN users u ON u.id = r.user_id"
        " WHERE r.id = ? AND r.project_id = ?", (path_id(request, "run_id"), project["id"]))
    if row is None:
        raise APIError(404, "run not found")
    return user, row


async def runs_list(request: Request) -> Response:
    _, project = await project_access(request)
    project_id = project["id"]
    rows = await runs_of(request).store.all("SELECT r.*, u.name AS user_name FROM runs r LEFT JOIN users u ON u.id = r.user_id"
                                 " WHERE r.project_id = ? ORDER BY r.id DESC", (project_id,))
    return JSONResponse({"runs": [run_json(r) for r in rows]})


async def runs_get(request: Request) -> Response:
    _, row = await _get_run(request)
    run = run_json(row)
    run["work_dir_size"] = await runs_of(request).work_size(row)
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
    state = runs_of(request)
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
    path = runs_of(request).run_dir(run) / "console.log"
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
    freed = await runs_of(request).clean(run)
    return JSONResponse({"freed_bytes": freed, "work_dir_size": await runs_of(request).work_size(run)})




async def finished(request: Request) -> Response:
    """For an external worker: the run ended (its secret authenticates; user tokens are refused with 403)."""
    runs = runs_of(request)
    ref = runs.weblog.run_for_secret(request.scope["query_string"], request.headers.get("authorization"),
                                     path_id(request))
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
    manager = runs_of(request)
    project_id = project["id"]
    last = request.headers.get("last-event-id") or request.query_params.get("last_event_id")

    streams = manager.streams
    if streams.get(user["id"], 0) >= MAX_STREAMS_PER_USER:
        raise APIError(429, f"at most {MAX_STREAMS_PER_USER} open event streams per user; close some first")

    async def guarded() -> AsyncIterator[bytes]:
        # A stream outlives the request that opened it: end it once its token is revoked or access is withdrawn.
        check_at = time.monotonic() + STREAM_RECHECK
        streams[user["id"]] = streams.get(user["id"], 0) + 1  # counted from its first byte (see finally)
        try:
            async for frame in manager.broker.stream(project_id, last, manager.snapshot):
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


MAX_STREAMS_PER_USER = 16  # open event streams one user may hold


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
        self.weblog = Weblog(store, config.data_path / "weblog.journal", self._applied)
        self.procs: dict[int, nfhub_worker.RunProcess] = {}
        self.terminating: set[int] = set()
        self.run_project: dict[int, int] = {}  # run id -> project id, for the live views
        self.ended: dict[int, anyio.Event] = {}
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
        await self.weblog.start(tg)
        await tg.start(self.dispatcher.serve)
        await self._recover()

    def close(self) -> None:
        self.weblog.close()

    def _admit(self, run_id: int, project_id: int, run_name: str, hashed_secret: str) -> None:
        self.weblog.admit(hashed_secret, RunRef(run_id, project_id, run_name))
        self.run_project[run_id] = project_id
        self.ended[run_id] = anyio.Event()

    # -- scheduling
    async def create(self, project_id: int, user_id: int, pipeline_name: str, values: dict, params: dict,
                     session: str | None, resume_of: int | None) -> int:
        secret = secrets.token_urlsafe(24)
        async with self.store.write() as db:
            if await has_active_run(db, project_id):
                raise APIError(409, "the project already has a queued or running run")
            cur = await db.execute(
                "INSERT INTO runs (project_id, user_id, status, nextflow_project, arguments, params, run_name,"
                " secret_hash, session_id, resume_of, created_at) VALUES (?, ?, 'queued', ?, ?, ?, '', ?, ?, ?, ?)",
                (project_id, user_id, pipeline_name, json.dumps(values), json.dumps(params), secret_hash(secret),
                 None, resume_of, now_iso()))
            run_id = int(cur.lastrowid or 0)
            run_name = nfhub_worker.new_run_name(run_id)
            spec = self._spec(project_id, run_id, run_name, pipeline_name, params, secret, session)
            try:
                argv = await anyio.to_thread.run_sync(nfhub_worker.prepare_run, spec)
            except ValueError as exc:
                raise APIError(422, f"cannot prepare the run: {exc}") from None
            await db.execute("UPDATE runs SET run_name = ?, command = ?, session_id = ? WHERE id = ?",
                             (run_name, json.dumps(argv), session, run_id))
        self._admit(run_id, project_id, run_name, secret_hash(secret))
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
            cur = await db.execute(*move_run(run_id, "starting", where="cancel_requested = 0", started_at=now_iso()))
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
        await self.weblog.flush()  # every event acknowledged so far is applied before the verdict
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
            for task in trace:  # cached tasks send no events, and events sent while nfhub was down are lost
                upsert_task(db, run_id, task)
            db.execute(*move_run(run_id, status, exit_code=exit_code, error_message=message, finished_at=now_iso(),
                                 session_id=session))
            db.execute("UPDATE runs SET cached_processes = max(cached_processes, ?) WHERE id = ?", (cached, run_id))

        self.weblog.forget(run_id)  # its task rows are written here too; and the run is over
        await self.store.write_fn(record)
        await self._ended(run_id, status, exit_code)

    async def _ended(self, run_id: int, status: str, exit_code: int | None) -> None:
        self.weblog.forget(run_id)  # the secret dies with the run
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
            cur = await db.execute(*move_run(run_id, "cancelled", only_from=("queued",), finished_at=now_iso()))
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


    # -- recovery after a restart
    async def _recover(self) -> None:
        rows = await self.store.all(f"SELECT * FROM runs WHERE {ACTIVE_SQL} ORDER BY id")
        for run in rows:
            self._admit(run["id"], run["project_id"], run["run_name"], run["secret_hash"])
            if run["status"] == "queued" or (run["status"] == "starting" and not run["pid"]):
                if run["status"] == "starting":  # it never launched: back to the queue
                    async with self.store.write() as db:
                        await db.execute(*move_run(run["id"], "queued"))
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

    async def _applied(self, changed: dict[str, Any]) -> None:
        """The weblog applied a batch: tell the live views."""
        for run_id in changed["runs"] | set(changed["tasks"]):
            await self._publish_run(run_id, changed["tasks"].get(run_id))

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
            root = os.path.realpath(work)
            for r in rows:
                path = os.path.realpath(r["workdir"])
                if nfhub_files.inside(path, root) and os.path.isdir(path):
                    total += nfhub_files.work_dir_size(Path(path))
            return total

        return await anyio.to_thread.run_sync(size)

    async def clean(self, run: dict[str, Any]) -> int:
        rows = await self.store.all("SELECT workdir FROM tasks WHERE run_id = ? AND workdir IS NOT NULL", (run["id"],))
        work = runs_dir(self.config, run["project_id"]) / "work"
        keep = [project_dir(self.config, run["project_id"])]
        return await anyio.to_thread.run_sync(nfhub_files.clean_work_dir, work, [r["workdir"] for r in rows], keep)


def _progress(project: dict[str, Any]) -> dict[str, Any]:
    return {"id": project["id"], "submitted_processes": project["submitted_processes"],
            "completed_processes": project["completed_processes"],
            "is_scheduled": project["run_status"] in ACTIVE_STATES, "status": project["run_status"],
            "run_id": project["run_id"]}


# ---- Routes and OpenAPI -----------------------------------------------------------------------------------------------------


def routes(weblog_endpoint: Any) -> list[Route]:
    """The run routes. `weblog_endpoint` answers Nextflow's POSTs (nfhub's outermost layer takes them before routing;
    the route makes other methods a 405 and names the path)."""
    return [
        Route("/api/projects/{id:int}/nextflow-log", weblog_endpoint, methods=["POST"]),
        Route("/api/projects/{id:int}/schedule", schedule, methods=["POST"]),
        Route("/api/projects/{id:int}/cancel", cancel, methods=["POST"]),
        Route("/api/projects/{id:int}/finished", finished, methods=["POST"]),
        Route("/api/projects/{id:int}/events", project_events, methods=["GET"]),
        Route("/api/projects/{id:int}/runs", runs_list, methods=["GET"]),
        Route("/api/projects/{id:int}/runs/{run_id:int}", runs_get, methods=["GET"]),
        Route("/api/projects/{id:int}/runs/{run_id:int}/tasks", runs_tasks, methods=["GET"]),
        Route("/api/projects/{id:int}/runs/{run_id:int}/log", runs_log, methods=["GET"]),
        Route("/api/projects/{id:int}/runs/{run_id:int}/clean", runs_clean, methods=["POST"]),
    ]


def openapi_paths() -> dict[str, Any]:
    """OpenAPI path items for the run routes."""
    run_id = {"name": "run_id", "in": "path", "required": True, "schema": {"type": "integer"}}
    run = {"type": "object", "properties": {"run": {"type": "object"}}}
    secret = [ID_PARAM, query_param("token", description="the run's secret (or HTTP Basic weblog.basicToken)")]
    weblog = operation("Nextflow's weblog events (only Nextflow posts here; authenticated by the run's secret)", auth=False,
                 params=secret, body={"type": "object", "required": ["event"]}, errors=(400, 401, 413, 507))
    finished_op = operation("An external worker reports the end of a run (the run's secret; user tokens get 403)",
                      auth=False, params=secret, body={"type": "object", "properties": {"exit_code": {
                          "type": ["integer", "null"]}}}, response={"type": "string"}, errors=(401, 403, 422))
    log_op = operation("The run's console output from a byte offset (X-Log-Size, X-Log-Offset headers)",
                 params=[ID_PARAM, run_id, query_param("offset", "integer"), query_param("token")], errors=(400, 404),
                 response={"type": "string"}, content_type="text/plain")
    events_op = operation("Live project progress as text/event-stream (snapshot, run and task events; Last-Event-ID)",
                    params=[ID_PARAM, query_param("token")], errors=(404,), response={"type": "string"},
                    content_type="text/event-stream")
    return {
        "/api/projects/{id}/schedule": {"post": operation(
            "Schedule the project's pipeline; optional {\"resume\": true | run_id}", params=[ID_PARAM],
            body={"type": "object", "properties": {"resume": {"type": ["boolean", "integer"]}}},
            response={"type": "object", "properties": {"is_scheduled": {"type": "boolean"},
                                                       "run_id": {"type": "integer"}}},
            errors=(400, 403, 404, 409, 422))},
        "/api/projects/{id}/cancel": {"post": operation(
            "Cancel the queued or running run (answers once it has stopped)", params=[ID_PARAM],
            response={"type": "object", "properties": {"is_scheduled": {"type": "boolean"}}}, errors=(403, 404))},
        "/api/projects/{id}/nextflow-log": {"post": weblog},
        "/api/projects/{id}/finished": {"post": finished_op},
        "/api/projects/{id}/events": {"get": events_op},
        "/api/projects/{id}/runs": {"get": operation("Run history, newest first", params=[ID_PARAM], response={
            "type": "object", "properties": {"runs": {"type": "array", "items": {"type": "object"}}}},
            errors=(404,))},
        "/api/projects/{id}/runs/{run_id}": {"get": operation("One run", params=[ID_PARAM, run_id], response=run,
                                                        errors=(404,))},
        "/api/projects/{id}/runs/{run_id}/tasks": {"get": operation(
            "The run's tasks, failed first", params=[ID_PARAM, run_id, query_param("status"), query_param("offset", "integer"),
                                                     query_param("limit", "integer")],
            response={"type": "object", "properties": {"tasks": {"type": "array", "items": {"type": "object"}},
                                                       "total": {"type": "integer"}}}, errors=(400, 404))},
        "/api/projects/{id}/runs/{run_id}/log": {"get": log_op},
        "/api/projects/{id}/runs/{run_id}/clean": {"post": operation(
            "Remove a finished run's task work directories", params=[ID_PARAM, run_id], response={
                "type": "object", "properties": {"freed_bytes": {"type": "integer"},
                                                 "work_dir_size": {"type": "integer"}}}, errors=(403, 404, 409))},
    }
