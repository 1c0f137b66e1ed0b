"""The weblog's lane (nfhub_weblog.Weblog.endpoint, taken by nfhub's outermost ASGI layer): raw HTTP/1.1 against a real uvicorn, because what
matters here is what goes over the wire: statuses, headers, keep-alive, pipelining, and requests it hands to ASGI."""

from __future__ import annotations

import asyncio
import json
import mmap
import socket

import pytest

import nfhub_config
import nfhub_weblog
from conftest import LiveServer, db_rows, new_project, wait_for


def _read_response(sock: socket.socket, buf: bytearray) -> tuple[int, dict[str, str], bytes]:
    """One response off a keep-alive socket (content-length bodies only); leaves what follows it in buf."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {bytes(buf)!r}")
        buf += chunk
    head, _, _ = bytes(buf).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    start = len(head) + 4
    length = int(headers.get("content-length", "0"))
    while len(buf) < start + length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed in the body")
        buf += chunk
    body = bytes(buf[start:start + length])
    del buf[:start + length]
    return status, headers, body


def _closed(sock: socket.socket) -> bool:
    sock.settimeout(5)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def _post(path: str, body: bytes, extra: str = "", version: str = "1.1") -> bytes:
    return (f"POST {path} HTTP/{version}\r\nhost: x\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n{extra}\r\n").encode() + body


@pytest.fixture
def weblog(server: LiveServer, token: dict, rows):
    """A held run: (project id, weblog path with its secret, run row, a connect() for raw sockets)."""
    http = server.http
    pid = new_project(http, token, "slow", {})
    assert http.post(f"/api/projects/{pid}/schedule", headers=token).status_code == 200
    run = wait_for(lambda: [r for r in http.get(f"/api/projects/{pid}/runs", headers=token).json()["runs"]
                            if r["status"] == "running"], 30, what="the run to start")[0]
    config = (nfhub_config.runs_dir(server.config, pid) / str(run["id"]) / "nfhub.config").read_text()
    path = f"/api/projects/{pid}/nextflow-log?token={config.split('token=')[1].split(chr(39))[0]}"
    socks: list[socket.socket] = []

    def connect() -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", server.config.port), timeout=10)
        socks.append(sock)
        return sock

    yield pid, path, run, connect
    for sock in socks:
        sock.close()
    if server.thread.is_alive():  # (some tests shut the server down)
        http.post(f"/api/projects/{pid}/cancel", headers=token)


def _event(run: dict, kind: str, **extra: object) -> bytes:
    return json.dumps({"runName": run["run_name"], "runId": "s", "event": kind, "utcTime": "2026-01-01T00:00:00Z",
                       **extra}, separators=(",", ":")).encode()


def _task(run: dict, kind: str, task_id: int, status: str) -> bytes:
    trace = {"task_id": task_id, "status": status, "hash": "ab/cdef12", "name": f"P ({task_id})", "exit": 2147483647,
             "submit": 1_700_000_000_000, "start": 0, "process": "P", "tag": None, "workdir": "/w/ab/cdef12"}
    return _event(run, kind, trace=trace)


def test_lane_answers_like_the_route_and_keeps_the_connection(weblog, rows) -> None:
    pid, path, run, connect = weblog
    sock, buf = connect(), bytearray()
    for task_id in (1001, 1002):  # (the run's own tasks have small ids)
        sock.sendall(_post(path, _task(run, "process_submitted", task_id, "SUBMITTED")))
        status, headers, body = _read_response(sock, buf)
        assert (status, body, headers["content-length"]) == (200, b"", "0")
        # the same protective headers as every other answer, and uvicorn's own
        assert headers["x-content-type-options"] == "nosniff" and headers["x-frame-options"] == "SAMEORIGIN"
        assert "date" in headers and "connection" not in headers
    wait_for(lambda: rows("SELECT count(*) FROM tasks WHERE run_id = ? AND task_id > 1000", (run["id"],))[0][0] == 2,
             10, what="both tasks applied")
    # an ordinary request on the same connection still goes through the routes
    sock.sendall(b"GET /api/health HTTP/1.1\r\nhost: x\r\n\r\n")
    status, headers, body = _read_response(sock, buf)
    assert status == 200 and json.loads(body)["status"] == "ok"


def test_lane_refusals_record_nothing(weblog, rows) -> None:
    pid, path, run, connect = weblog
    sock, buf = connect(), bytearray()
    wrong = path.rsplit("=", 1)[0] + "=not-the-secret"
    cases = [
        (_post(wrong, _task(run, "process_submitted", 1005, "SUBMITTED")), 401, "secret"),
        (_post(f"/api/projects/{pid + 999}/nextflow-log?" + path.split("?")[1], _task(run, "process_submitted", 1005,
                                                                                    "SUBMITTED")), 401, "secret"),
        (_post(path, b"{not json"), 400, "not valid JSON"),
        (_post(path, b"[1, 2]"), 400, "JSON object"),
        (_post(path, _event({"run_name": "someone-else"}, "refused_probe")), 401, "another run"),
    ]
    for request, want, words in cases:
        sock.sendall(request)
        status, headers, body = _read_response(sock, buf)
        assert status == want and headers["content-type"] == "application/json"
        assert words in json.loads(body)["error"]
        assert headers["x-content-type-options"] == "nosniff"
    # the connection survived every refusal, and nothing of them was recorded
    sock.sendall(_post(path, _event(run, "lane_probe")))
    assert _read_response(sock, buf)[0] == 200
    wait_for(lambda: rows("SELECT count(*) FROM events WHERE event = 'lane_probe'")[0][0] == 1, 10)
    assert rows("SELECT count(*) FROM events WHERE event = 'refused_probe'")[0][0] == 0
    assert rows("SELECT count(*) FROM tasks WHERE task_id = 1005")[0][0] == 0


def test_lane_too_large_closes_without_reading(weblog, rows) -> None:
    pid, path, run, connect = weblog
    for target in (path, path.rsplit("=", 1)[0] + "=wrong"):
        sock, buf = connect(), bytearray()
        sock.sendall(f"POST {target} HTTP/1.1\r\nhost: x\r\ncontent-length: {(4 << 20) + 1}\r\n\r\n".encode()
                     + b"{" * 1000)
        status, headers, body = _read_response(sock, buf)
        assert status == (413 if target == path else 401) and headers["connection"] == "close"
        assert _closed(sock)
    # chunked: no length up front, so the lane counts as it reads
    sock, buf = connect(), bytearray()
    sock.sendall(f"POST {path} HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n".encode())
    status = None
    try:
        for _ in range(5):
            sock.sendall(b"100000\r\n" + b"a" * 0x100000 + b"\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass
    status, headers, _ = _read_response(sock, buf)
    assert status == 413 and _closed(sock)


def test_lane_chunked_pipelined_and_http10(weblog, rows) -> None:
    pid, path, run, connect = weblog
    sock, buf = connect(), bytearray()
    body = _task(run, "process_submitted", 1001, "SUBMITTED")
    half = len(body) // 2
    chunked = (f"POST {path} HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
               f"{half:x}\r\n").encode() + body[:half] + f"\r\n{len(body) - half:x}\r\n".encode() + body[half:] \
        + b"\r\n0\r\n\r\n"
    # three requests in one write: answered in order, the ASGI one in the middle included
    sock.sendall(chunked + b"GET /api/health HTTP/1.1\r\nhost: x\r\n\r\n"
                 + _post(path, _task(run, "process_started", 1001, "RUNNING")))
    answers = [_read_response(sock, buf) for _ in range(3)]
    assert [a[0] for a in answers] == [200, 200, 200]
    assert json.loads(answers[1][2])["status"] == "ok" and answers[0][2] == answers[2][2] == b""
    wait_for(lambda: [r[0] for r in rows("SELECT status FROM tasks WHERE run_id = ? AND task_id = 1001", (run["id"],))]
             == ["RUNNING"], 10, what="both events applied in order")
    # an answer that closes the connection comes after the ones already due on it
    sock.sendall(_post(path, _task(run, "process_submitted", 1004, "SUBMITTED"))
                 + _post(path, _task(run, "process_submitted", 1005, "SUBMITTED"), "connection: close\r\n"))
    first, second = _read_response(sock, buf), _read_response(sock, buf)
    assert (first[0], second[0], second[1]["connection"]) == (200, 200, "close") and "connection" not in first[1]
    assert _closed(sock)
    # HTTP/1.0: answered, then closed
    old = connect()
    old.sendall(_post(path, _task(run, "process_submitted", 1002, "SUBMITTED"), version="1.0"))
    status, headers, _ = _read_response(old, bytearray())
    assert status == 200 and headers["connection"] == "close" and _closed(old)


def test_expect_continue_goes_the_asgi_way(weblog, rows) -> None:
    pid, path, run, connect = weblog
    sock, buf = connect(), bytearray()
    body = _task(run, "process_submitted", 1003, "SUBMITTED")
    sock.sendall(_post(path, b"", "expect: 100-continue\r\n").replace(b"content-length: 0",
                                                                      f"content-length: {len(body)}".encode()))
    status, _, _ = _read_response(sock, buf)
    assert status == 100
    sock.sendall(body)
    status, _, _ = _read_response(sock, buf)
    assert status == 200
    wait_for(lambda: rows("SELECT count(*) FROM tasks WHERE run_id = ? AND task_id = 1003", (run["id"],))[0][0] == 1,
             10)


# ---- the journal ------------------------------------------------------------------------------------------------------


def test_journal_appends_grow_and_cut_records_read_as_the_end(tmp_path, monkeypatch) -> None:

    monkeypatch.setattr(nfhub_weblog.Journal, "CHUNK", 4096)
    journal = nfhub_weblog.Journal(tmp_path / "j")
    assert not journal.path.exists()  # nothing reserved before the first event
    records = [f"r-{i}\t1\t1.0\t3\n".encode() + b"abc\n" for i in range(1000)]  # 17 KB: grows past 4 chunks
    for record in records:
        journal.append(record)
    data = journal.path.read_bytes()
    assert data.startswith(b"".join(records)) and not data[journal.pos:].strip(b"\0")
    # a kill in the middle of a copy: the first byte goes in last, so the record reads as the end
    journal.append(records[0])
    journal.map[journal.pos - len(records[0])] = 0
    data = journal.path.read_bytes()
    assert data[len(b"".join(records))] == 0
    journal.reset()
    assert journal.pos == 0 and not journal.path.read_bytes().strip(b"\0")
    journal.close(applied=True)
    assert not journal.path.exists()


def test_a_full_disk_refuses_the_event_with_507(weblog, server: LiveServer, rows) -> None:
    pid, path, run, connect = weblog
    journal = server.app.state.runs.weblog.journal
    sock, buf = connect(), bytearray()
    sock.sendall(_post(path, _event(run, "before_full")))
    assert _read_response(sock, buf)[0] == 200

    def full(need: int) -> None:
        raise OSError(28, "No space left on device")

    size = journal.size
    journal._grow, journal.size = full, journal.pos  # the reserved space is used up, and the disk is full
    try:
        sock.sendall(_post(path, _event(run, "disk_full")))
        status, _, body = _read_response(sock, buf)
    finally:
        del journal._grow
        journal.size = size
    assert status == 507 and "space" in json.loads(body)["error"]
    sock.sendall(_post(path, _event(run, "after_full")))
    assert _read_response(sock, buf)[0] == 200
    wait_for(lambda: rows("SELECT count(*) FROM events WHERE event = 'after_full'")[0][0] == 1, 10)
    assert rows("SELECT count(*) FROM events WHERE event = 'disk_full'")[0][0] == 0


def test_a_bug_in_the_lane_is_a_500_not_a_dead_connection(weblog, server: LiveServer, monkeypatch, rows) -> None:
    pid, path, run, connect = weblog
    runs = server.app.state.runs.weblog

    def broken(ref: object, body: bytes) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(runs, "accept", broken)
    sock, buf = connect(), bytearray()
    sock.sendall(_post(path, _event(run, "lane_bug")))
    status, headers, body = _read_response(sock, buf)
    assert status == 500 and json.loads(body) == {"error": "internal error"}
    assert _closed(sock)  # (uvicorn closes a connection whose app raised)
    monkeypatch.delattr(runs, "accept")  # the real one again: the server goes on
    sock, buf = connect(), bytearray()
    sock.sendall(_post(path, _event(run, "after_bug")))
    assert _read_response(sock, buf)[0] == 200


# ---- found in review ----------------------------------------------------------------------------------------------


def _protocols(server: LiveServer) -> set:
    return set(server.server.server_state.connections)


def test_an_upgrade_request_on_the_weblog_path_goes_the_asgi_way(weblog, server: LiveServer, caplog) -> None:
    pid, path, run, connect = weblog
    body = _event(run, "upgrade_probe")
    sock = connect()
    sock.sendall((f"POST {path} HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: websocket\r\n"
                  "sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n"
                  f"content-length: {len(body)}\r\n\r\n").encode() + body)
    sock.settimeout(5)
    try:
        answer = sock.recv(65536)
    except TimeoutError:
        answer = b""
    assert not answer.startswith(b"HTTP/1.1 5")
    assert not [r for r in caplog.records if r.exc_info], "no traceback"


def test_graceful_shutdown_answers_a_lane_request_under_way_then_closes(weblog, server: LiveServer) -> None:
    pid, path, run, connect = weblog
    request = _post(path, _event(run, "shutdown_probe"))
    sock, buf = connect(), bytearray()
    sock.sendall(request[:-10])  # headers and most of the body
    # (the test peeks at uvicorn's connection objects: the request is under way once it has a cycle)
    wait_for(lambda: [p for p in _protocols(server) if getattr(p, "cycle", None) is not None], 5)
    server.server.should_exit = True  # SIGTERM
    wait_for(lambda: not server.server.servers or not server.server.servers[0].is_serving(), 5,
             what="uvicorn to stop accepting")
    sock.sendall(request[-10:])
    status, headers, _ = _read_response(sock, buf)
    assert status == 200 and headers["connection"] == "close" and _closed(sock)
    server.thread.join(15)
    assert not server.thread.is_alive()
    # applied before the loop stopped, or kept in the journal for the next start
    journal = server.config.data_path / "weblog.journal"
    assert db_rows(server.config, "SELECT count(*) FROM events WHERE event = 'shutdown_probe'")[0][0] == 1 or (
        b"shutdown_probe" in journal.read_bytes())


def test_an_acknowledged_event_not_yet_applied_keeps_the_journal(weblog, server: LiveServer, rows) -> None:
    """The applier took the event off its queue but waits for the database when the server stops: the journal
    must not be deleted, the next start applies it."""
    pid, path, run, connect = weblog
    state = server.app.state.hub
    weblog = state.runs.weblog
    loop = server.server.servers[0].get_loop()
    # the run's own events are in (its two tasks run for a while): nothing else reaches the applier meanwhile
    wait_for(lambda: rows("SELECT count(*) FROM tasks WHERE run_id = ? AND status = 'RUNNING'", (run["id"],))[0][0] == 2
             and weblog.applied == weblog.seq, 30, what="the run's own events applied")

    async def hold() -> None:  # any other write in progress
        async with state.store.write():
            await asyncio.sleep(3)

    asyncio.run_coroutine_threadsafe(hold(), loop)
    wait_for(lambda: state.store._lock.locked(), 5)
    sock = connect()
    sock.sendall(_post(path, _event(run, "acked_probe")))
    assert _read_response(sock, bytearray())[0] == 200
    wait_for(lambda: not weblog.queue and weblog.applied < weblog.seq, 5,
             what="the applier to take the event and wait for the database")
    server.server.should_exit = True
    server.thread.join(20)
    journal = server.config.data_path / "weblog.journal"
    assert b"acked_probe" in journal.read_bytes()
    with LiveServer(server.config) as again:
        wait_for(lambda: db_rows(again.config, "SELECT count(*) FROM events WHERE event = 'acked_probe'")[0][0] == 1,
                 10, what="the replayed event")


def test_a_failed_mmap_leaves_the_journal_usable(tmp_path, monkeypatch) -> None:

    monkeypatch.setattr(nfhub_weblog.Journal, "CHUNK", 4096)
    journal = nfhub_weblog.Journal(tmp_path / "j")
    journal.append(b"a" * 100 + b"\n")

    def failing(*args: object, **kwargs: object) -> None:
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(nfhub_weblog.mmap, "mmap", failing)
    with pytest.raises(OSError):  # (the lane answers 507)
        journal.append(b"b" * 5000 + b"\n")
    monkeypatch.setattr(nfhub_weblog.mmap, "mmap", mmap.mmap)
    journal.append(b"c" * 10 + b"\n")
    assert journal.path.read_bytes().startswith(b"a" * 100 + b"\n" + b"c" * 10 + b"\n")
    journal.close(applied=False)


def test_asgi_route_and_lane_answer_alike(weblog, server: LiveServer) -> None:
    """With and without Expect: 100-continue, a refusal gives the same error body and headers."""
    pid, path, run, connect = weblog
    wrong = path.rsplit("=", 1)[0] + "=wrong"
    answers = []
    for extra in ("", "expect: 100-continue\r\n"):
        sock, buf = connect(), bytearray()
        body = b"{}"
        sock.sendall(_post(wrong, b"", extra).replace(b"content-length: 0", b"content-length: 2"))
        if extra:
            pass  # a refused request is answered before its body is asked for
        else:
            sock.sendall(body)
        status, headers, payload = _read_response(sock, buf)
        answers.append((status, payload, headers["content-type"], headers["x-content-type-options"],
                        headers["x-frame-options"]))
    assert answers[0] == answers[1] == (401, b'{"error":"missing or wrong run secret"}', "application/json",
                                        "nosniff", "SAMEORIGIN")
    # a fragment is no part of the secret
    sock, buf = connect(), bytearray()
    sock.sendall(_post(path + "#x", _event(run, "fragment_probe")))
    assert _read_response(sock, buf)[0] == 200
