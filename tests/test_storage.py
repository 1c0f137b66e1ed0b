"""The database layer: pragmas, migrations from an empty file, the one write path."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import anyio
import pytest

import nfhub_auth
import nfhub_config
import nfhub_store


def test_migrations_from_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    path.write_bytes(b"")
    assert nfhub_store.migrate(path) == len(nfhub_store.MIGRATIONS)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(nfhub_store.MIGRATIONS)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"users", "tokens", "projects", "shares", "runs", "tasks", "events"} <= tables
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    assert nfhub_store.migrate(path) == len(nfhub_store.MIGRATIONS)  # idempotent


def test_newer_schema_refused(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version=999")
    conn.close()
    with pytest.raises(nfhub_config.StartupError, match="newer"):
        nfhub_store.migrate(path)


def test_store_pragmas_and_rollback(tmp_path: Path) -> None:
    async def main() -> None:
        store = nfhub_store.Store(tmp_path / "db.sqlite")
        await store.open()
        try:
            assert (await store.one("PRAGMA foreign_keys"))["foreign_keys"] == 1
            async with store.write() as db:  # the writer waits for locks; quick reads never do (see below)
                assert (await db.execute("PRAGMA busy_timeout")).fetchone()["timeout"] >= 5000
            assert (await store.one("PRAGMA journal_mode"))["journal_mode"] == "wal"
            uid = await nfhub_auth.create_user(store, "u")
            with pytest.raises(RuntimeError):
                async with store.write() as db:
                    await db.execute("INSERT INTO projects (owner_id, name, created_at, updated_at)"
                                     " VALUES (?, 'p', 'x', 'x')", (uid,))
                    raise RuntimeError("abort")
            assert (await store.one("SELECT count(*) AS n FROM projects"))["n"] == 0
            # Cancellation in the middle of a transaction rolls back too.
            with anyio.move_on_after(0.05):
                async with store.write() as db:
                    await db.execute("INSERT INTO projects (owner_id, name, created_at, updated_at)"
                                     " VALUES (?, 'p', 'x', 'x')", (uid,))
                    await anyio.sleep(10)
            assert (await store.one("SELECT count(*) AS n FROM projects"))["n"] == 0

            async def writer(i: int) -> None:
                async with store.write() as db:
                    await db.execute("INSERT INTO projects (owner_id, name, created_at, updated_at)"
                                     " VALUES (?, ?, 'x', 'x')", (uid, f"p{i}"))

            async with anyio.create_task_group() as tg:
                for i in range(50):
                    tg.start_soon(writer, i)
            assert (await store.one("SELECT count(*) AS n FROM projects"))["n"] == 50
        finally:
            await store.close()

    anyio.run(main)


def test_reads_past_the_step_budget_move_off_the_event_loop(tmp_path: Path) -> None:
    """Quick reads run on the loop's thread; one that runs long is interrupted, finished on the reader's thread
    with the same result, and its statement goes there directly from then on."""
    heavy = ("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)"
             " SELECT count(*) AS c, sum(i) AS s FROM n")

    async def main() -> None:
        store = nfhub_store.Store(tmp_path / "db.sqlite")
        await store.open()
        try:
            assert await store.one(heavy, (10,)) == {"c": 10, "s": 55}
            assert heavy not in store.slow_reads  # small enough: answered on the loop's thread
            assert await store.one(heavy, (300_000,)) == {"c": 300_000, "s": 300_000 * 300_001 // 2}
            assert heavy in store.slow_reads
            assert await store.one(heavy, (10,)) == {"c": 10, "s": 55}  # now always on the reader's thread
            with pytest.raises(sqlite3.OperationalError, match="no such table"):  # real errors are errors
                await store.one("SELECT * FROM nothing_here")
            with pytest.raises(sqlite3.OperationalError, match="readonly"):
                await store.all("DELETE FROM users")
        finally:
            await store.close()

    anyio.run(main)
