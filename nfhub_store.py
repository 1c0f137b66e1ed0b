"""nfhub storage: the SQLite schema (numbered migrations), its connection settings, `Store` (the one write path plus
the read paths every handler uses), the run states with the one door that moves a run between them, and the one
statement that creates a user.

A leaf: it imports no other nfhub module. Nothing here runs at import time."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite
import anyio
import anyio.to_thread


class StartupError(Exception):
    """A configuration problem that stops nfhub from starting; the message names the setting."""


# ---- Run states ---------------------------------------------------------------------------------------------------

RUN_STATES = ("queued", "starting", "running", "succeeded", "failed", "cancelled", "lost")
ACTIVE_STATES = ("queued", "starting", "running")
FINAL_STATES = ("succeeded", "failed", "cancelled", "lost")
ACTIVE_SQL = f"status IN {ACTIVE_STATES!r}"  # the same, as an SQL condition on runs
# The one table of moves: a run may enter a state only from these (the CHECK constraint of migration 2 keeps the
# column to RUN_STATES). A restart puts a run that never launched back in the queue: starting -> queued.
RUN_MOVES: dict[str, tuple[str, ...]] = {
    "queued": ("starting",),
    "starting": ("queued",),
    "running": ("queued", "starting"),
    **{final: ACTIVE_STATES for final in FINAL_STATES},
}


def move_run(run_id: int, to: str, *, only_from: tuple[str, ...] | None = None,
             where: str = "", **columns: Any) -> tuple[str, tuple]:
    """The one door for run state changes: the UPDATE (and its parameters) that moves run `run_id` to `to`, from the
    states it may leave for it (RUN_MOVES, or the narrower `only_from`), setting `columns` too. Its rowcount says
    whether the run moved. `where` adds an SQL condition (e.g. "cancel_requested = 0")."""
    allowed = RUN_MOVES[to]
    origins = allowed if only_from is None else tuple(s for s in only_from if s in allowed)
    if not origins:
        raise ValueError(f"a run cannot move to {to!r} from {only_from!r}")
    sets = "".join(f", {name} = ?" for name in columns)
    marks = ", ".join("?" for _ in origins)
    sql = f"UPDATE runs SET status = ?{sets} WHERE id = ? AND status IN ({marks})" + (f" AND {where}" if where else "")
    return sql, (to, *columns.values(), run_id, *origins)


# ---- Schema --------------------------------------------------------------------------------------------------------

# Numbered migrations; PRAGMA user_version holds how many have run. Append only, never edit a released one.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE users (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        display_name TEXT,
        email TEXT,
        provider TEXT NOT NULL DEFAULT 'local',
        subject TEXT,
        password_hash TEXT,
        is_admin INTEGER NOT NULL DEFAULT 0,
        disabled INTEGER NOT NULL DEFAULT 0,
        tokens_valid_after INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL,
        UNIQUE (provider, subject)
    );
    CREATE TABLE tokens (
        jti TEXT PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        kind TEXT NOT NULL CHECK (kind IN ('personal', 'session')),
        name TEXT,
        created_at TEXT NOT NULL,
        expires_at INTEGER NOT NULL,
        revoked_at INTEGER
    );
    CREATE INDEX tokens_user ON tokens(user_id);
    CREATE TABLE projects (
        id INTEGER PRIMARY KEY,
        owner_id INTEGER NOT NULL REFERENCES users(id),
        name TEXT NOT NULL,
        nextflow_project TEXT,
        workflow_arguments TEXT NOT NULL DEFAULT '{}',
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE INDEX projects_owner ON projects(owner_id);
    CREATE TABLE shares (
        project_id INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        access TEXT NOT NULL CHECK (access IN ('read', 'write')),
        PRIMARY KEY (project_id, user_id)
    );
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        project_id INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
        user_id INTEGER REFERENCES users(id),
        status TEXT NOT NULL,
        nextflow_project TEXT NOT NULL,
        arguments TEXT NOT NULL DEFAULT '{}',
        params TEXT NOT NULL DEFAULT '{}',
        command TEXT NOT NULL DEFAULT '[]',
        run_name TEXT NOT NULL,
        secret_hash TEXT NOT NULL,
        session_id TEXT,
        resume_of INTEGER,
        submitted_processes INTEGER NOT NULL DEFAULT 0,
        completed_processes INTEGER NOT NULL DEFAULT 0,
        failed_processes INTEGER NOT NULL DEFAULT 0,
        cached_processes INTEGER NOT NULL DEFAULT 0,
        exit_code INTEGER,
        error_message TEXT,
        failed_task TEXT,
        stats TEXT,
        pid INTEGER,
        pid_start INTEGER,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL,
        started_at TEXT,
        finished_at TEXT
    );
    CREATE INDEX runs_project ON runs(project_id, id);
    CREATE TABLE tasks (
        run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        task_id INTEGER NOT NULL,
        hash TEXT, name TEXT, process TEXT, tag TEXT, status TEXT NOT NULL,
        exit INTEGER, submit INTEGER, start INTEGER, complete INTEGER, duration INTEGER, realtime INTEGER,
        cpu_percent REAL, peak_rss INTEGER, workdir TEXT, native_id TEXT, attempt INTEGER, error_action TEXT,
        PRIMARY KEY (run_id, task_id)
    );
    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        jid TEXT NOT NULL UNIQUE,
        run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        event TEXT NOT NULL,
        body TEXT NOT NULL,
        received_at REAL NOT NULL
    );
    CREATE INDEX events_run ON events(run_id, id);
    """,
    # 2: runs.status may hold only a run state (the table is rebuilt: SQLite cannot add a CHECK to a column).
    """
    CREATE TABLE runs_new (
        id INTEGER PRIMARY KEY,
        project_id INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
        user_id INTEGER REFERENCES users(id),
        status TEXT NOT NULL CHECK (status IN ('queued', 'starting', 'running', 'succeeded', 'failed', 'cancelled',
                                               'lost')),
        nextflow_project TEXT NOT NULL,
        arguments TEXT NOT NULL DEFAULT '{}',
        params TEXT NOT NULL DEFAULT '{}',
        command TEXT NOT NULL DEFAULT '[]',
        run_name TEXT NOT NULL,
        secret_hash TEXT NOT NULL,
        session_id TEXT,
        resume_of INTEGER,
        submitted_processes INTEGER NOT NULL DEFAULT 0,
        completed_processes INTEGER NOT NULL DEFAULT 0,
        failed_processes INTEGER NOT NULL DEFAULT 0,
        cached_processes INTEGER NOT NULL DEFAULT 0,
        exit_code INTEGER,
        error_message TEXT,
        failed_task TEXT,
        stats TEXT,
        pid INTEGER,
        pid_start INTEGER,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL,
        started_at TEXT,
        finished_at TEXT
    );
    INSERT INTO runs_new SELECT * FROM runs;
    DROP TABLE runs;
    ALTER TABLE runs_new RENAME TO runs;
    CREATE INDEX runs_project ON runs(project_id, id);
    """,
]

# ---- Connections ---------------------------------------------------------------------------------------------------

USER_CACHE_SECONDS = 2.0
# A read runs on the event loop's own thread while it stays under this many SQLite VM steps (about a millisecond);
# past it, it is interrupted and goes to the read connection's thread, as every later run of the same statement.
QUICK_READ_STEPS = 50_000


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# WAL + NORMAL: a commit survives a crash or kill -9 of nfhub (not a power cut), and costs no fsync.
BUSY_TIMEOUT_MS = 5000
PRAGMAS = ("journal_mode=WAL", "foreign_keys=ON", f"busy_timeout={BUSY_TIMEOUT_MS}", "synchronous=NORMAL")


def _pragmas(conn: sqlite3.Connection) -> None:
    for pragma in PRAGMAS:
        conn.execute(f"PRAGMA {pragma}")


def migrate(path: Path) -> int:
    """Create or upgrade the database file; returns the schema version. Safe to call from several processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, timeout=5)
    try:
        _pragmas(conn)
        # Off while migrating (it cannot change inside a transaction): a migration that rebuilds a table drops the old
        # one, which would otherwise cascade to the rows that refer to it. Checked before the commit instead.
        conn.execute("PRAGMA foreign_keys=OFF")
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise StartupError(f"database {path} has schema version {version}, newer than this nfhub knows")
            for number in range(version, len(MIGRATIONS)):
                for statement in MIGRATIONS[number].split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version={number + 1}")
            broken = conn.execute("PRAGMA foreign_key_check").fetchone()
            if broken is not None:
                raise StartupError(f"database {path}: migration left a broken reference in table {broken[0]}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return len(MIGRATIONS)
    finally:
        conn.close()


def _row_dict(cursor: Any, row: tuple) -> dict[str, Any]:
    return {col[0]: row[i] for i, col in enumerate(cursor.description)}


# ---- Store ---------------------------------------------------------------------------------------------------------

class Result:
    """What a statement of a write transaction gave: its rows (already fetched), rowcount and lastrowid."""

    __slots__ = ("rows", "rowcount", "lastrowid")

    def __init__(self, cursor: sqlite3.Cursor):
        self.rows: list[dict[str, Any]] = cursor.fetchall()
        self.rowcount = cursor.rowcount
        self.lastrowid = cursor.lastrowid

    def fetchone(self) -> dict[str, Any] | None:
        return self.rows[0] if self.rows else None

    def fetchall(self) -> list[dict[str, Any]]:
        return self.rows


class Tx:
    """The statements of one write transaction (see Store.write): each runs on the writer's connection in a worker
    thread, in order."""

    def __init__(self, store: Store):
        self._store = store

    async def execute(self, sql: str, params: tuple | dict = ()) -> Result:
        return await self._store._on_writer(lambda conn: Result(conn.execute(sql, params)))


class Store:
    """SQLite access: one write connection behind a lock (the only write path) and the read connections.

    The writer is a plain `sqlite3` connection driven from anyio's worker threads, one statement or one whole
    transaction function per hop, never two at a time (the lock): the standard library's documented API, so that a
    batch of weblog events is one thread hop, not one per statement."""

    def __init__(self, path: Path):
        self.path = path
        self._writer: sqlite3.Connection | None = None
        self._writer_limiter = anyio.CapacityLimiter(1)
        self._reader: aiosqlite.Connection | None = None
        self._quick: sqlite3.Connection | None = None  # the loop thread's own read connection (see all())
        self._quick_steps = 0
        self.slow_reads: set[str] = set()  # statements that ran past QUICK_READ_STEPS once
        self._lock = anyio.Lock()
        self.users: dict[int, tuple[float, dict[str, Any]]] = {}  # user id -> (valid until, row)

    async def open(self) -> None:
        migrate(self.path)
        writer = sqlite3.connect(self.path, isolation_level=None, timeout=5, check_same_thread=False)
        writer.row_factory = _row_dict
        _pragmas(writer)
        self._writer = writer
        self._reader = await self._connect()
        await self._reader.execute("PRAGMA query_only=1")
        quick = sqlite3.connect(self.path, isolation_level=None, timeout=0)  # busy: the reader's thread waits
        quick.row_factory = _row_dict
        for pragma in ("query_only=1", "foreign_keys=ON"):
            quick.execute(f"PRAGMA {pragma}")
        quick.set_progress_handler(self._quick_progress, 1000)
        self._quick = quick

    async def _connect(self) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(self.path, isolation_level=None)
        conn.row_factory = _row_dict  # type: ignore[assignment]
        for pragma in PRAGMAS:
            await conn.execute(f"PRAGMA {pragma}")
        return conn

    def _quick_progress(self) -> int:
        self._quick_steps += 1000
        return self._quick_steps > QUICK_READ_STEPS  # nonzero interrupts the statement

    async def close(self) -> None:
        if self._quick is not None:
            self._quick.close()
            self._quick = None
        if self._reader is not None:
            await self._reader.close()
            self._reader = None
        if self._writer is not None:
            async with self._lock:
                self._writer.close()
            self._writer = None

    async def _on_writer(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """`fn(writer)` in a worker thread. Not cancellable once started (anyio waits for the thread), so a
        transaction is never left half-done by a cancelled caller."""
        writer = self._writer
        assert writer is not None, "the store is not open"
        return await anyio.to_thread.run_sync(fn, writer, limiter=self._writer_limiter)

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[Tx]:
        """The one write path: BEGIN IMMEDIATE … COMMIT under a lock; rollback on any exception or cancellation."""
        async with self._lock:
            await self._on_writer(lambda conn: conn.execute("BEGIN IMMEDIATE"))
            try:
                yield Tx(self)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await self._on_writer(lambda conn: conn.execute("ROLLBACK"))
                raise
            with anyio.CancelScope(shield=True):
                await self._on_writer(lambda conn: conn.execute("COMMIT"))
                self.users.clear()  # any write may have changed a user (password, revocation, …)

    async def write_fn(self, fn: Callable[..., Any], *args: Any, quick: bool = False) -> Any:
        """Run `fn(sqlite3_connection, *args)` as one transaction (the same write path as write()), in one thread hop:
        many statements for the cost of one hop.

        `quick=True` is for short transactions on a hot path (a slice of weblog events): it runs right here on the
        event loop's thread, as quick reads do, when the database is free this very moment. Handing the work to a
        thread and back costs more than the work, and each hand-over of the interpreter lock stalls the event loop
        (measured: the one-sender weblog rate rose from ~0.8 to ~0.95 of the bare endpoint). When another process
        holds the database, it goes to the writer's thread and waits there, never on the loop."""

        def transaction(conn: sqlite3.Connection) -> Any:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn, *args)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

        async with self._lock:
            writer = self._writer
            assert writer is not None, "the store is not open"
            if quick:
                writer.execute("PRAGMA busy_timeout=0")
                try:
                    writer.execute("BEGIN IMMEDIATE")
                except sqlite3.OperationalError:
                    quick = False  # locked by another process: wait for it on the writer's thread
                finally:
                    writer.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
                if quick:
                    try:
                        result = fn(writer, *args)
                    except BaseException:
                        writer.execute("ROLLBACK")
                        raise
                    writer.execute("COMMIT")
                    self.users.clear()
                    return result
            with anyio.CancelScope(shield=True):  # once started it runs to its end; wait for it
                result = await self._on_writer(transaction)
            self.users.clear()
            return result

    async def user(self, user_id: int) -> dict[str, Any] | None:
        """The user row, from a short-lived cache: every authenticated request needs it. Writes through write()
        empty the cache; a change made outside nfhub (sqlite3 by hand) shows within USER_CACHE_SECONDS."""
        cached = self.users.get(user_id)
        if cached is not None and cached[0] > time.monotonic():
            return dict(cached[1])
        row = await self.one("SELECT * FROM users WHERE id = ?", (user_id,))
        if row is not None:
            if len(self.users) > 10_000:
                self.users.clear()
            self.users[user_id] = (time.monotonic() + USER_CACHE_SECONDS, dict(row))
        return row

    async def all(self, sql: str, params: tuple | dict = ()) -> list[dict[str, Any]]:
        """Rows of a read. Most reads take SQLite some microseconds: they run right here, on the event loop's
        thread, where a hop to the read connection's thread and back (two thread wake-ups) would cost several times
        the query. One that runs past QUICK_READ_STEPS is interrupted and handed to that thread, as are its later
        runs, so the loop is never held for more than about a millisecond."""
        quick = self._quick
        if quick is not None and sql not in self.slow_reads:
            self._quick_steps = 0
            try:
                return quick.execute(sql, params).fetchall()
            except sqlite3.OperationalError as exc:
                if self._quick_steps > QUICK_READ_STEPS:
                    self.slow_reads.add(sql)
                elif "locked" not in str(exc):
                    raise
        assert self._reader is not None
        return list(await self._reader.execute_fetchall(sql, params))  # type: ignore[arg-type]

    async def one(self, sql: str, params: tuple | dict = ()) -> dict[str, Any] | None:
        rows = await self.all(sql, params)
        return rows[0] if rows else None


# ---- Users --------------------------------------------------------------------------------------------------------


def insert_user(conn: sqlite3.Connection, name: str, *, password_hash: str | None = None, is_admin: bool = False,
                provider: str = "local", subject: str | None = None, email: str | None = None,
                display_name: str | None = None) -> int:
    """The one statement that creates a user (the CLI, the logins and the first start use it); returns its id.
    sqlite3.IntegrityError when the name (or provider and subject) is taken."""
    cur = conn.execute(
        "INSERT INTO users (name, display_name, email, provider, subject, password_hash, is_admin, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (name, display_name, email, provider, subject, password_hash, int(is_admin), now_iso()))
    return int(cur.lastrowid or 0)


def open_sync(path: Path) -> sqlite3.Connection:
    """A plain connection for the command line (migrated, nfhub's pragmas, rows as sqlite3.Row)."""
    migrate(path)
    conn = sqlite3.connect(path, isolation_level=None, timeout=5)
    _pragmas(conn)
    conn.row_factory = sqlite3.Row
    return conn
