"""nfhub's weblog: Nextflow's progress events from the socket to the tables. Nextflow's nf-weblog plugin posts one
JSON event at a time and waits for each answer (docs/nextflow.md §2), so an event is answered as soon as it is
durable: its run's secret is checked, the JSON parsed, the event appended to a journal that survives kill -9, and
queued. The applier then writes queued events to the runs and tasks tables in batches, each exactly once, and
reports what changed through a callback (the live views); it never imports nfhub_runs.

The entrance is `Weblog.endpoint`, a plain ASGI callable: nfhub's outermost layer hands it POSTs to
/api/projects/<id>/nextflow-log before Starlette's routing and middleware. Public interfaces only: ASGI messages in,
ASGI messages out, and the store's one write path.

Floor 3: imports the leaves and floor 2 (nfhub_config, nfhub_http). Nothing here runs at import time."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import mmap
import os
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import anyio
import anyio.abc
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

import nfhub_worker
from nfhub_http import SECURITY_HEADERS, APIError, error_response, read_body
from nfhub_store import Store, move_run, now_iso
from nfhub_worker import TASK_COLUMNS

log = logging.getLogger("nfhub.weblog")

MAX_WEBLOG_BYTES = 4 << 20  # a `started` event carries all params: tens of KB, rarely more

# ---- Events and task rows ------------------------------------------------------------------------------------------

TASK_EVENTS = frozenset(("process_submitted", "process_started", "process_completed"))
TERMINAL_TASK_STATES = ("COMPLETED", "FAILED", "ABORTED", "CACHED")
# What a later event may not undo: a RUNNING event arriving after COMPLETED keeps COMPLETED.
_TASK_RANK = {"NEW": 0, "SUBMITTED": 1, "RUNNING": 2, "COMPLETED": 3, "FAILED": 3, "ABORTED": 3, "CACHED": 3}


try:
    from orjson import loads as _loads  # 2 us instead of 7 for a task event, on the thread that answers every request
except ImportError:  # pragma: no cover - an optional speed-up
    _loads = json.loads


# One acknowledged weblog event: (journal id, run id, event name, parsed body, raw body, time received).
Journaled = tuple[str, int, str, dict[str, Any], bytes, float]


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
            rows.append((run_id, task_id, *nfhub_worker.task_row(state["traces"], state["status"])))
            statuses[run_id][task_id] = state["status"]  # (a failed transaction makes the caller drop the cache)
    _bulk(db, _TASK_INSERT, _TASK_ON_CONFLICT, 2 + len(TASK_COLUMNS), rows)
    for run_id, (submitted, completed, failed) in counters.items():
        if submitted or completed or failed:
            db.execute("UPDATE runs SET submitted_processes = submitted_processes + ?, completed_processes ="
                       " completed_processes + ?, failed_processes = failed_processes + ? WHERE id = ?",
                       (submitted, completed, failed, run_id))
            changed["runs"].add(run_id)
    return changed


def _apply_run_event(db: sqlite3.Connection, run_id: int, kind: str, body: dict[str, Any],
                     changed: dict[str, Any]) -> None:
    if kind == "started":
        summary = nfhub_worker.workflow_summary(body.get("metadata") or {})
        db.execute(*move_run(run_id, "running"))  # (a run already past running stays where it is)
        db.execute("UPDATE runs SET started_at = COALESCE(started_at, ?), session_id = COALESCE(session_id, ?)"
                   " WHERE id = ?", (now_iso(), summary["session_id"] or body.get("runId"), run_id))
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


# ---- Journal -------------------------------------------------------------------------------------------------------

APPLY_BATCH = 2000  # queued events that start the applier without waiting for a lull
QUICK_APPLY = 500  # events per transaction of the live applier (a few milliseconds on the event loop's thread)
APPLY_GATHER = 0.005  # seconds without a new event that count as a lull, when the applier runs
APPLY_MAX_DELAY = 0.25  # seconds an acknowledged event may wait for the applier at most (live views lag this much)
MAX_QUEUED_EVENTS = 50_000  # acknowledged but not yet applied; beyond it senders wait
MAX_QUEUED_BYTES = 64 << 20  # the same limit in bytes of event bodies (events may be up to 4 MiB each)
JOURNAL_TRUNCATE = 8 << 20  # the journal is emptied once it is this large and fully applied


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


# ---- Run secrets ---------------------------------------------------------------------------------------------------

def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass
class RunRef:
    run_id: int
    project_id: int
    run_name: str


# ---- Weblog --------------------------------------------------------------------------------------------------------

# Nextflow ignores the answer's body (any 2xx is success). An empty one lets uvicorn send the whole answer in one
# write: a two-byte body costs a second send(2) on every event, a measurable part of the per-event time.
_EMPTY_200 = {"type": "http.response.start", "status": 200,
              "headers": [(b"content-length", b"0"), *SECURITY_HEADERS]}
_HEADERS = {name.decode(): value.decode() for name, value in SECURITY_HEADERS}  # (on errors)
_CLOSE = {**_HEADERS, "connection": "close"}  # uvicorn closes the connection after an answer that says so
_EMPTY_BODY = {"type": "http.response.body", "body": b""}


class Weblog:
    """Run secrets, the journal, the queue of acknowledged events and the applier. `on_applied(changed)` is called
    after each applied batch with {"runs": {ids}, "tasks": {run: {task ids}}}."""

    def __init__(self, store: Store, journal_path: Path,
                 on_applied: Callable[[dict[str, Any]], Awaitable[None]] | None = None):
        self.store = store
        self.on_applied = on_applied
        self.secrets: dict[str, RunRef] = {}  # sha256(secret) -> run, for weblog and finished
        self.known: dict[str, RunRef] = {}  # secrets seen in requests already -> run (same lifetime as above)
        self.boot = uuid.uuid4().hex[:12]
        self.seq = 0
        self.queue: list[Journaled] = []
        self.task_status: dict[int, dict[int, str]] = {}  # run -> task -> committed status, for the applier only
        self.wake = anyio.Event()
        self.woken = False  # whether `wake` is set (anyio's Event.is_set is a Python call: this is on every event)
        self.applied = 0  # journal sequence numbers applied so far (this boot)
        self.applied_event = anyio.Event()
        self.journal_path = journal_path
        self.journal = Journal(journal_path)
        self.journal_keep = False
        self.hurry = 0  # coroutines waiting in flush(): apply now, do not wait for a lull
        self.queued_bytes = 0

    # -- lifecycle
    async def start(self, tg: anyio.abc.TaskGroup) -> None:
        """Apply what the journal holds from before a restart, then start the applier."""
        await self._replay_journal()
        tg.start_soon(self._applier)

    def close(self) -> None:
        self.journal.close(applied=self.applied >= self.seq and not self.journal_keep)

    # -- run secrets
    def admit(self, secret_hash_: str, ref: RunRef) -> None:
        """From now on, events carrying the secret whose hash is `secret_hash_` belong to run `ref`."""
        self.secrets[secret_hash_] = ref
        self.task_status.pop(ref.run_id, None)  # a deleted project's run id may come back

    def forget(self, run_id: int) -> None:
        """The run is over: its secret dies with it."""
        for table in (self.secrets, self.known):
            for key, ref in list(table.items()):
                if ref.run_id == run_id:
                    del table[key]
        self.task_status.pop(run_id, None)

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
        Synchronous: endpoint() answers 2xx once it returns."""
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

    async def endpoint(self, scope: Scope, receive: Receive, send: Send) -> None:
        """POST /api/projects/<id>/nextflow-log as a plain ASGI app (scope["path_params"]["id"] is the project): 200
        with an empty body once the event is durable, else an error in the one shape. nfhub's outermost layer calls
        it before routing; the route table names it too, for the other methods (405) and the OpenAPI document.

        A refused request keeps its connection usable: its body is read (up to the size limit) and dropped. One over
        the limit is answered at once, unread, and the answer asks for the connection to be closed."""
        try:
            authorization = length = expect = None
            for name, value in scope["headers"]:
                if name == b"authorization":
                    authorization = value.decode("latin-1")
                elif name == b"content-length":
                    length = value
                elif name == b"expect":
                    expect = value
            try:
                ref = self.authorize(int(scope["path_params"]["id"]), scope["query_string"], authorization)
            except APIError as refused:
                if expect is None:  # (a client that waits for "100 Continue" has sent no body: answer at once)
                    try:
                        await read_body(receive, MAX_WEBLOG_BYTES, length, "event")
                    except APIError:
                        refused.headers = _CLOSE
                raise refused from None
            try:
                body = await read_body(receive, MAX_WEBLOG_BYTES, length, "event")
            except APIError as exc:
                exc.headers = _CLOSE
                raise
            if self.backlogged():
                await self.flush()  # back-pressure: a sender far ahead of the database waits
            self.accept(ref, body)
        except APIError as exc:
            await error_response(exc.status, exc.message, exc.details, exc.headers or _HEADERS)(scope, receive, send)
            return
        except ClientDisconnect:
            return  # nothing to answer, nothing recorded
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
                # In slices small enough to apply on the event loop's thread (Store.write_fn's quick path) without
                # holding up the requests waiting behind them for more than a few milliseconds.
                batch, self.queue = self.queue[:QUICK_APPLY], self.queue[QUICK_APPLY:]
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
                await anyio.sleep(0)  # requests that arrived meanwhile go first
            if self.applied >= self.seq and not self.journal_keep and self.journal.pos > JOURNAL_TRUNCATE:
                self.journal.reset()  # everything in it is committed; no await since the check

    async def _apply_batch(self, batch: list[Journaled], replay: bool = True) -> None:
        try:
            changed = await self.store.write_fn(apply_events, batch, self.task_status, replay,
                                                quick=len(batch) <= QUICK_APPLY)
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
        if self.on_applied is not None and (changed["runs"] or changed["tasks"]):
            await self.on_applied(changed)

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

