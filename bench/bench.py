"""nfhub benchmark (`make bench`): every figure beside a bare Starlette app measured in the same run.

Both servers are separate processes on uvicorn[standard] (uvloop + httptools): nfhub through `nfhub serve` with a
throw-away data dir, the yardstick as `uvicorn bench/bare_app.py`. The clients live in this process and speak
hand-written HTTP/1.1 over keep-alive loopback sockets, the same client for both servers. Figures:

1. weblog, one sender as Nextflow sends it (one connection, one event at a time), events/s and latency;
2. weblog, 16 runs sending at once, events/s, then every acknowledged event is looked for in the database;
3. schedule-to-exec latency (POST schedule until the `nextflow` stand-in starts);
4. a 1 GiB upload (MiB/s, nfhub's peak RSS growth) and its download;
5. plain requests: GET /api/projects and /api/health, sequential and 16 at once.

`--quick` shrinks every figure for a smoke run. Nothing outlives the run: servers, pipeline stand-ins and the temp
folder are removed on exit, Ctrl-C and errors included.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import http.client
import json
import os
import re
import secrets
import selectors
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
MiB = 1 << 20
CONCURRENCY = 16


@dataclass
class Sizes:
    schedule_runs: int = 30
    seq_events: int = 9_000  # per round, one sender
    conc_events: int = 1_800  # per sender per round, 16 senders
    rounds: int = 3
    plain_seq: int = 2_000
    plain_conc: int = 200  # per connection
    upload: int = 1 << 30
    downloads: int = 3

    @classmethod
    def quick(cls) -> Sizes:
        return cls(schedule_runs=8, seq_events=1_500, conc_events=240, rounds=1, plain_seq=500, plain_conc=50,
                   upload=64 * MiB, downloads=1)


# ---- processes -----------------------------------------------------------------------------------------------------


def _die_with_parent() -> None:
    # A server must not outlive a bench killed with SIGKILL: ask the kernel to SIGTERM it when we die.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.01) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class Server:
    """A server process in its own session, its output in a log file."""

    def __init__(self, name: str, argv: list[str], port: int, health: str, log: Path, env: dict[str, str]):
        self.name, self.argv, self.port, self.health, self.log, self.env = name, argv, port, health, log, env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Server:
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         env=self.env, cwd=ROOT, start_new_session=True, preexec_fn=_die_with_parent)
        wait_for(self._ready, 30, f"{self.name} to answer on port {self.port}", 0.05)
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
        try:
            return api(self.port, "GET", self.health)[0] == 200
        except OSError:
            return False

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def flavour(self) -> str:
        maps = Path(f"/proc/{self.pid}/maps").read_text()
        return "+".join(lib for lib in ("uvloop", "httptools") if f"/{lib}/" in maps) or "asyncio+h11"

    def cpu(self) -> float:
        """CPU seconds (user + system, all threads) the server has used so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def memory(self) -> dict[str, int]:
        """VmRSS / VmHWM in bytes."""
        found = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(value.split()[0]) * 1024
        return found

    def reset_peak(self) -> bool:
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")  # 5: reset the peak RSS (VmHWM) to now
            return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


# ---- HTTP: a control client and the load driver ----------------------------------------------------------------


def api(port: int, method: str, path: str, body: object = None, token: str | None = None,
        timeout: float = 30) -> tuple[int, object]:
    """One request for setting things up (not measured): status and decoded JSON (or text)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        headers = {"x-access-token": token} if token else {}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["content-type"] = "application/json"
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        try:
            return resp.status, json.loads(raw) if raw else None
        except ValueError:
            return resp.status, raw.decode(errors="replace")
    finally:
        conn.close()


def must(port: int, method: str, path: str, body: object = None, token: str | None = None) -> dict:
    status, answer = api(port, method, path, body, token)
    if status != 200:
        raise RuntimeError(f"{method} {path} -> {status}: {answer}")
    return answer  # type: ignore[return-value]


def raw_request(method: str, path: str, port: int, headers: dict[str, str] | None = None, body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}:{port}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if (body or method == "POST") and not any(k.lower() == "content-length" for k in headers or {}):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)


def parse_response(buf: bytearray) -> tuple[int, int] | None:
    """(status, total length) of the complete response at the start of buf, or None if it is not all there yet."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buf[:end + 2])
    m = _CONTENT_LENGTH.search(head)
    if m is None:
        raise RuntimeError(f"response without Content-Length: {head[:300]!r}")
    total = end + 4 + int(m.group(1))
    return (int(head[9:12]), total) if len(buf) >= total else None


@dataclass
class Load:
    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)
    ok: list[int] = field(default_factory=list)  # 2xx answers per connection
    errors: Counter = field(default_factory=Counter)
    first_error: bytes = b""
    client_cpu: float = 0.0
    server_cpu: float = 0.0

    @property
    def count(self) -> int:
        return sum(self.ok)

    @property
    def rate(self) -> float:
        return self.count / self.elapsed if self.elapsed else 0.0

    def pct(self, q: float) -> float:
        values = sorted(self.latencies)
        return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def drive(server: Server, streams: list[list[bytes]], timeout: float = 300) -> Load:
    """Send each stream's requests over its own keep-alive connection, one at a time; all connections at once."""
    sel = selectors.DefaultSelector()
    socks = []
    result = Load(ok=[0] * len(streams))
    state: list[list] = []  # per connection: [socket, requests, next index, buffer, sent at]
    try:
        for i, reqs in enumerate(streams):
            s = socket.create_connection((HOST, server.port))
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            socks.append(s)
            state.append([s, reqs, 0, bytearray(), 0.0])
            sel.register(s, selectors.EVENT_READ, i)
        cpu0, scpu0 = time.process_time(), server.cpu()
        start = time.perf_counter()
        deadline = start + timeout
        live = 0
        for st in state:  # requests here are small: a blocking sendall returns at once
            if st[1]:
                st[4] = time.perf_counter()
                st[0].sendall(st[1][0])
                st[2] = 1
                live += 1
        lat = result.latencies
        while live:
            events = sel.select(1.0)
            if not events and time.perf_counter() > deadline:
                raise RuntimeError(f"load did not finish within {timeout} s")
            for key, _ in events:
                i = key.data
                st = state[i]
                chunk = st[0].recv(262144)
                if not chunk:
                    raise RuntimeError(f"{server.name} closed connection {i}")
                buf = st[3]
                buf += chunk
                parsed = parse_response(buf)
                if parsed is None:
                    continue
                now = time.perf_counter()
                status, total = parsed
                lat.append(now - st[4])
                if 200 <= status < 300:
                    result.ok[i] += 1
                else:
                    result.errors[status] += 1
                    result.first_error = result.first_error or bytes(buf[:total])
                del buf[:total]
                if st[2] < len(st[1]):
                    st[4] = time.perf_counter()
                    st[0].sendall(st[1][st[2]])
                    st[2] += 1
                else:
                    live -= 1
        result.elapsed = time.perf_counter() - start
        result.client_cpu = time.process_time() - cpu0
        result.server_cpu = server.cpu() - scpu0
        return result
    finally:
        sel.close()
        for s in socks:
            s.close()


def read_response(sock: socket.socket, sink: bool = False) -> tuple[int, bytes, int]:
    """Status, head+body (body dropped when sink) and body length of one response on a blocking socket."""
    buf = bytearray()
    while (end := buf.find(b"\r\n\r\n")) < 0:
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("connection closed before the response")
        buf += chunk
    m = _CONTENT_LENGTH.search(bytes(buf[:end + 2]))
    if m is None:
        raise RuntimeError(f"response without Content-Length: {bytes(buf[:300])!r}")
    length = int(m.group(1))
    got = len(buf) - end - 4
    if sink:
        block = bytearray(4 * MiB)
        view = memoryview(block)
        while got < length:
            n = sock.recv_into(view)
            if not n:
                raise RuntimeError("connection closed in the body")
            got += n
        return int(buf[9:12]), bytes(buf[:end + 4]), got
    while got < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("connection closed in the body")
        buf += chunk
        got += len(chunk)
    return int(buf[9:12]), bytes(buf), got


# ---- weblog events as Nextflow sends them (docs/nextflow.md §3, §5) ----------------------------------------------

WEBLOG_HEADERS = {
    "Content-Type": "application/json",
    "User-Agent": "Nextflow/25.10.0",
    "Accept": "text/html, image/gif, image/jpeg, *; q=.2, */*; q=.2",
    "Connection": "keep-alive",
}
SCRIPT = """
    printf "%s\\t%s\\n" sample_{i}_R1.fastq.gz sample_{i}_R2.fastq.gz > files.tsv
    [ ! -f  sample_{i}_1.fastq.gz ] && ln -s sample_{i}_R1.fastq.gz sample_{i}_1.fastq.gz
    [ ! -f  sample_{i}_2.fastq.gz ] && ln -s sample_{i}_R2.fastq.gz sample_{i}_2.fastq.gz
    fastqc --quiet --threads 2 --memory 4096 sample_{i}_R1.fastq.gz sample_{i}_R2.fastq.gz

    cat <<-END_VERSIONS > versions.yml
    "NFCORE_RNASEQ:RNASEQ:FASTQ_QC_TRIM_FILTER_SETSTRANDEDNESS:FASTQ_FASTQC_UMITOOLS_TRIMGALORE:FASTQC":
        fastqc: $( fastqc --version | sed '/FastQC v/!d; s/.*v//' )
    END_VERSIONS
    """


def trace(task_id: int, status: str, work: str, t0: int) -> dict:
    """A raw TraceRecord store for one task at the given stage (SUBMITTED, RUNNING, COMPLETED)."""
    digest = secrets.token_hex(16)
    rec: dict = {
        "task_id": task_id, "status": status, "hash": f"{digest[:2]}/{digest[2:8]}",
        "name": f"NFCORE_RNASEQ:RNASEQ:FASTQ_QC_TRIM_FILTER_SETSTRANDEDNESS:FASTQC (sample_{task_id})",
        "exit": 0 if status == "COMPLETED" else 2147483647, "submit": t0, "start": 0 if status == "SUBMITTED" else t0 + 120,
        "process": "NFCORE_RNASEQ:RNASEQ:FASTQ_QC_TRIM_FILTER_SETSTRANDEDNESS:FASTQ_FASTQC_UMITOOLS_TRIMGALORE:FASTQC",
        "tag": f"sample_{task_id}", "module": [], "container": "quay.io/biocontainers/fastqc:0.12.1--hdfd78af_0",
        "attempt": 1, "script": SCRIPT.format(i=task_id), "scratch": None,
        "workdir": f"{work}/{digest[:2]}/{digest[2:]}", "queue": None, "cpus": 2, "memory": 4294967296,
        "disk": None, "time": 14400000, "env": "PATH=$PATH:/opt/pipeline/bin\n", "native_id": 40000 + task_id,
    }
    if status == "COMPLETED":
        rec.update({
            "error_action": None, "complete": t0 + 5120, "duration": 5120, "realtime": 4870, "%cpu": 187.4,
            "cpu_model": "AMD EPYC 7763 64-Core Processor", "rchar": 734003200, "wchar": 2097152, "syscr": 18211,
            "syscw": 512, "read_bytes": 733954048, "write_bytes": 2101248, "%mem": 1.2, "vmem": 6442450944,
            "rss": 412090368, "peak_vmem": 6442450944, "peak_rss": 498073600, "vol_ctxt": 2311, "inv_ctxt": 97,
        })
    return rec


def envelope(run_name: str, session: str, event: str, **payload: object) -> bytes:
    body = {"runName": run_name, "runId": session, "event": event,
            "utcTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **payload}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=True).encode()


def started_event(run_name: str, session: str, work: str) -> bytes:
    now = int(time.time() * 1000)
    workflow = {"sessionId": session, "runName": run_name, "start": now, "workDir": work, "resume": False,
                "nextflow": {"version": "25.10.0", "build": 10289}, "profile": "standard", "success": False}
    return envelope(run_name, session, "started", metadata={"parameters": {"outdir": "results"}, "workflow": workflow})


def task_events(run_name: str, session: str, work: str, first: int, count: int) -> list[bytes]:
    """`count` events: process_submitted / _started / _completed for consecutive tasks from task id `first`."""
    out = []
    t0 = int(time.time() * 1000)
    kinds = (("process_submitted", "SUBMITTED"), ("process_started", "RUNNING"), ("process_completed", "COMPLETED"))
    task_id = first
    while len(out) < count:
        for kind, status in kinds[: count - len(out)]:
            out.append(envelope(run_name, session, kind, trace=trace(task_id, status, work, t0)))
        task_id += 1
    return out


@dataclass
class Run:
    project_id: int
    run_id: int
    run_name: str
    session: str
    path: str  # weblog path with ?token=<secret>, as nfhub wrote it into nfhub.config
    work: str
    next_task: int = 1
    sent: int = 0  # events acknowledged with 2xx
    tasks: int = 0  # distinct tasks of acknowledged events
    completed: int = 0  # tasks whose process_completed was acknowledged

    def events(self, count: int) -> list[bytes]:
        """The next `count` events (whole tasks: count is a multiple of 3)."""
        assert count % 3 == 0
        bodies = task_events(self.run_name, self.session, self.work, self.next_task, count)
        self.next_task += count // 3
        return bodies

    def acked(self, n: int) -> None:
        # events are sent in task order, three per task: n acknowledged events cover n // 3 whole tasks
        self.sent += n
        self.tasks += (n + 2) // 3
        self.completed += n // 3


# ---- the bench -----------------------------------------------------------------------------------------------------

STUB = r"""#!/bin/bash
# nextflow stand-in for nfhub's benchmark: stamps the moment it starts next to the params file, then either exits
# (pipeline 'instant') or holds the run open until SIGTERM (bounded, in case nobody sends one).
t=$EPOCHREALTIME
prev= pf= src=
for a in "$@"; do
  case $prev in -params-file) pf=$a ;; run) src=$a ;; esac
  prev=$a
done
printf '%s %s\n' "$t" "$$" > "${pf%/*}/exec_time"
case $src in */instant) exit 0 ;; esac
exec sleep 900
"""


class Bench:
    def __init__(self, sizes: Sizes, only: str | None = None, http: str = "auto"):
        self.sizes = sizes
        self.only = only
        self.http = http  # nfhub's `http` setting (the bare app always runs httptools)
        self.tmp = Path(tempfile.mkdtemp(prefix="nfhub-bench-"))
        self.data = self.tmp / "data"
        self.bare_dir = self.tmp / "bare"
        self.servers: list[Server] = []
        self.rows: list[tuple[int, str]] = []  # (figure number, line)
        self.notes: list[str] = []
        self.runs: list[Run] = []

    # -- setup
    def setup(self) -> None:
        t = self.tmp
        stub = t / "nextflow"
        stub.write_text(STUB)
        stub.chmod(0o755)
        for name in ("hold", "instant"):
            (t / "pipelines" / name).mkdir(parents=True)
            (t / "pipelines" / name / "main.nf").write_text("workflow { }\n")
        catalog = {name: {"description": name, "source": f"./pipelines/{name}"} for name in ("hold", "instant")}
        (t / "catalog.yaml").write_text(json.dumps(catalog))  # JSON is YAML
        self.bare_dir.mkdir()
        (t / "logs").mkdir()
        port = free_port()
        self.config = t / "nfhub.yaml"
        self.config.write_text(json.dumps({
            "data_dir": str(self.data), "pipelines": str(t / "catalog.yaml"), "nextflow": str(stub), "host": HOST,
            "port": port, "max_concurrent_runs": CONCURRENCY, "log_level": "warning", "cancel_grace": 5,
            "http": self.http}))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NFHUB_", "PYTHON"))}
        nfhub = [sys.executable, str(ROOT / "nfhub.py")]
        for name in ("bench", "reader"):
            subprocess.run([*nfhub, "user", "add", name, "--config", str(self.config)], check=True, env=env, cwd=ROOT,
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        self.token, self.reader = (subprocess.run(
            [*nfhub, "token", name, "--lifetime", "2h", "--config", str(self.config)], check=True, env=env, cwd=ROOT,
            stdin=subprocess.DEVNULL, capture_output=True, text=True).stdout.strip() for name in ("bench", "reader"))
        self.nfhub = Server("nfhub", [*nfhub, "serve", "--config", str(self.config)], port, "/api/health",
                            t / "logs" / "nfhub.log", env)
        bare_port = free_port()
        self.bare = Server("bare", [sys.executable, "-m", "uvicorn", "bare_app:app", "--app-dir", str(ROOT / "bench"),
                                    "--host", HOST, "--port", str(bare_port), "--loop", "uvloop", "--http", "httptools",
                                    "--no-access-log", "--log-level", "warning"],
                           bare_port, "/json", t / "logs" / "bare.log", {**env, "BENCH_BARE_DIR": str(self.bare_dir)})
        for server in (self.nfhub, self.bare):
            self.servers.append(server)
            server.start()
        flavours = {s.name: s.flavour() for s in self.servers}
        print(f"servers: nfhub pid {self.nfhub.pid} ({flavours['nfhub']}), bare pid {self.bare.pid} "
              f"({flavours['bare']}); {os.cpu_count()} cores; temp {self.tmp}")
        if flavours["nfhub"] != flavours["bare"] and self.http != "h11":
            raise RuntimeError(f"the servers run different uvicorn flavours: {flavours}")
        # warm both up: imports, first connections, SQLite pages
        for server, path, tok in ((self.nfhub, "/api/projects", self.token), (self.bare, "/json", None)):
            req = raw_request("GET", path, server.port, {"x-access-token": tok} if tok else {})
            drive(server, [[req] * 300])

    def new_project(self, name: str, pipeline: str | None, token: str | None = None) -> int:
        token = token or self.token
        pid = must(self.nfhub.port, "POST", "/api/projects/create", {"name": name}, token)["project"]["id"]
        if pipeline:
            must(self.nfhub.port, "POST", f"/api/projects/{pid}/update", {"nextflow_project": pipeline}, token)
        return pid

    def stamp(self, project_id: int, run_id: int) -> tuple[float, int] | None:
        try:
            t, pid = (self.data / "runs" / str(project_id) / str(run_id) / "exec_time").read_text().split()
            return float(t), int(pid)
        except (OSError, ValueError):
            return None

    def row(self, text: str, figure: int) -> None:
        self.rows.append((figure, text))
        print("  " + text, flush=True)

    @staticmethod
    def verdict(value: float, goal: float, higher: bool = True) -> str:
        ok = value >= goal if higher else value < goal
        return "OK" if ok else "MISSED"

    # -- 3. schedule to exec
    def schedule_latency(self) -> None:
        print("schedule-to-exec latency ...", flush=True)
        pid = self.new_project("latency", "instant")
        lat, answer = [], []
        for i in range(self.sizes.schedule_runs + 3):
            t0 = time.time()
            run_id = must(self.nfhub.port, "POST", f"/api/projects/{pid}/schedule", {}, self.token)["run_id"]
            t1 = time.time()
            stamped = wait_for(lambda run_id=run_id: self.stamp(pid, run_id), 10, f"run {run_id} to exec", 0.0005)
            if i >= 3:  # the first runs warm up the code paths
                lat.append(stamped[0] - t0)  # type: ignore[index]
                answer.append(t1 - t0)
            wait_for(lambda: not must(self.nfhub.port, "GET", f"/api/projects/{pid}", None,
                                      self.token)["project"]["is_scheduled"], 10, f"run {run_id} to end", 0.002)
        runs = must(self.nfhub.port, "GET", f"/api/projects/{pid}/runs", None, self.token)["runs"]
        bad = [r["status"] for r in runs if r["status"] != "succeeded"]
        if bad:
            self.notes.append(f"schedule runs that did not succeed: {Counter(bad)}")
        lat.sort()
        p50, p95 = statistics.median(lat), lat[min(len(lat) - 1, int(0.95 * len(lat)))]
        self.row(f"schedule->exec ({len(lat)} runs): p50 {p50 * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms, max "
                 f"{lat[-1] * 1000:.1f} ms (POST answered in p50 {statistics.median(answer) * 1000:.1f} ms) | "
                 f"goal p50 < 100 ms {self.verdict(p50 * 1000, 100, higher=False)}", 3)

    # -- 1 and 2. weblog
    def start_runs(self) -> None:
        port = self.nfhub.port
        for i in range(CONCURRENCY):
            pid = self.new_project(f"weblog {i}", "hold")
            run_id = must(port, "POST", f"/api/projects/{pid}/schedule", {}, self.token)["run_id"]
            cfg = (self.data / "runs" / str(pid) / str(run_id) / "nfhub.config").read_text()
            m = re.search(r"url\s*=\s*'http://[^/']+(/[^']*)'", cfg)
            if m is None:
                raise RuntimeError(f"no weblog url in nfhub.config of run {run_id}:\n{cfg}")
            run = must(port, "GET", f"/api/projects/{pid}/runs/{run_id}", None, self.token)["run"]
            work = str(self.data / "runs" / str(pid) / "work")
            self.runs.append(Run(pid, run_id, run["run_name"], secrets.token_hex(16), m.group(1), work))
        for run in self.runs:
            wait_for(lambda run=run: self.stamp(run.project_id, run.run_id), 20, f"run {run.run_id} to start")
        # Nextflow's first event; it moves the run to 'running'
        load = drive(self.nfhub, [[raw_request("POST", r.path, port, WEBLOG_HEADERS,
                                               started_event(r.run_name, r.session, r.work))] for r in self.runs])
        if load.count != len(self.runs):
            raise RuntimeError(f"'started' events refused: {load.errors} {load.first_error[:400]!r}")
        for run in self.runs:
            run.sent += 1

    def db_counts(self) -> dict[int, int]:
        conn = sqlite3.connect(f"file:{self.data / 'nfhub.sqlite'}?mode=ro", uri=True, timeout=5)
        try:
            return dict(conn.execute("SELECT run_id, count(*) FROM events GROUP BY run_id").fetchall())
        finally:
            conn.close()

    def wait_applied(self, timeout: float = 120) -> float:
        """Seconds until every acknowledged event is in the events table (rows are only ever added here, so the
        largest id is their number: a cheap query to poll)."""
        t0 = time.perf_counter()
        want = sum(r.sent for r in self.runs)
        conn = sqlite3.connect(f"file:{self.data / 'nfhub.sqlite'}?mode=ro", uri=True, timeout=5)
        try:
            wait_for(lambda: (conn.execute("SELECT max(id) FROM events").fetchone()[0] or 0) >= want, timeout,
                     "the events to be applied", 0.005)
        except RuntimeError:
            pass  # verify_events reports the discrepancy
        finally:
            conn.close()
        return time.perf_counter() - t0

    def weblog(self, senders: int) -> None:
        sizes = self.sizes
        per = sizes.seq_events if senders == 1 else sizes.conc_events
        label = "weblog 1 sender" if senders == 1 else f"weblog {senders} senders"
        print(f"{label} ({sizes.rounds} x {per * senders:,} events each side) ...", flush=True)
        runs = self.runs[:senders]
        ours: list[Load] = []
        bares: list[Load] = []
        drains: list[float] = []
        for rnd in range(sizes.rounds):
            batches = [r.events(per) for r in runs]
            nf_streams = [[raw_request("POST", r.path, self.nfhub.port, WEBLOG_HEADERS, b) for b in batch]
                          for r, batch in zip(runs, batches, strict=True)]
            bare_streams = [[raw_request("POST", "/weblog", self.bare.port, WEBLOG_HEADERS, b) for b in batch]
                            for batch in batches]
            for side in (("nfhub", "bare") if rnd % 2 == 0 else ("bare", "nfhub")):
                if side == "nfhub":
                    load = drive(self.nfhub, nf_streams)
                    for run, n in zip(runs, load.ok, strict=True):
                        run.acked(n)
                    if load.errors:
                        raise RuntimeError(f"nfhub refused weblog events: {dict(load.errors)} "
                                           f"{load.first_error[:400]!r}")
                    drains.append(self.wait_applied())  # the next measurement must not share the CPU with it
                    ours.append(load)
                else:
                    load = drive(self.bare, bare_streams)
                    if load.errors:
                        raise RuntimeError(f"bare refused: {dict(load.errors)} {load.first_error[:300]!r}")
                    bares.append(load)
        size = statistics.mean(len(b) for b in batches[0])
        nf, bare = _median(ours), _median(bares)
        ratio = nf.rate / bare.rate
        # acknowledged is what a sender sees; sustained also counts the time until everything is applied
        sustained = statistics.median(x.count / (x.elapsed + d) for x, d in zip(ours, drains, strict=True))
        goal = 0.8 if senders == 1 else 0.7
        figure = 1 if senders == 1 else 2
        lat = blat = ""
        if senders == 1:
            lat = f" (p50 {nf.pct(0.5) * 1000:.2f} ms, p99 {nf.pct(0.99) * 1000:.2f} ms)"
            blat = f" (p50 {bare.pct(0.5) * 1000:.2f} ms, p99 {bare.pct(0.99) * 1000:.2f} ms)"
        self.row(f"{label}: nfhub {nf.rate:,.0f} ev/s{lat} | bare {bare.rate:,.0f} ev/s{blat} | ratio {ratio:.2f} "
                 f"(goal {goal:.2f}) {self.verdict(ratio, goal)}", figure)
        self.row(f"{label}, sustained (until applied to the database): nfhub {sustained:,.0f} ev/s | ratio "
                 f"{sustained / bare.rate:.2f} (applied {statistics.median(drains) * 1000:,.0f} ms after the last "
                 f"answer, median round)", figure)
        self.notes.append(
            f"{label}: bodies {size:,.0f} B avg; server CPU per event nfhub {nf.server_cpu / nf.count * 1e6:.0f} us, "
            f"bare {bare.server_cpu / bare.count * 1e6:.0f} us; client CPU {nf.client_cpu / nf.elapsed:.0%} / "
            f"{bare.client_cpu / bare.elapsed:.0%} of a core; rounds nfhub {', '.join(f'{x.rate:,.0f}' for x in ours)}"
            f" / bare {', '.join(f'{x.rate:,.0f}' for x in bares)} ev/s; nfhub RSS now "
            f"{self.nfhub.memory()['VmRSS'] / MiB:,.0f} MiB (peak {self.nfhub.memory()['VmHWM'] / MiB:,.0f})")

    def verify_events(self) -> None:
        self.wait_applied(60)
        have = self.db_counts()
        conn = sqlite3.connect(f"file:{self.data / 'nfhub.sqlite'}?mode=ro", uri=True, timeout=5)
        try:
            tasks = dict(conn.execute("SELECT run_id, count(*) FROM tasks GROUP BY run_id").fetchall())
            counters = {r[0]: r[1:] for r in conn.execute(
                "SELECT id, submitted_processes, completed_processes, status FROM runs").fetchall()}
        finally:
            conn.close()
        total = sum(r.sent for r in self.runs)
        problems = []
        for r in self.runs:
            if have.get(r.run_id, 0) != r.sent:
                problems.append(f"run {r.run_id}: {r.sent} acknowledged, {have.get(r.run_id, 0)} in events")
            if tasks.get(r.run_id, 0) != r.tasks:
                problems.append(f"run {r.run_id}: {r.tasks} tasks sent, {tasks.get(r.run_id, 0)} task rows")
            sub, done, status = counters[r.run_id]
            if (sub, done) != (r.tasks, r.completed) or status != "running":
                problems.append(f"run {r.run_id}: counters {sub}/{done} {status}, expected "
                                f"{r.tasks}/{r.completed} running")
        if problems:
            self.row(f"weblog accounting: DISCREPANCY over {total:,} events: " + "; ".join(problems[:8]), 2)
        else:
            self.row(f"weblog accounting: all {total:,} events accounted for ({len(self.runs)} runs: events rows, "
                     f"{sum(r.tasks for r in self.runs):,} task rows and run counters match) OK", 2)

    def stop_runs(self) -> None:
        for run in self.runs:
            must(self.nfhub.port, "POST", f"/api/projects/{run.project_id}/cancel", {}, self.token)

    # -- 5. plain requests
    def plain(self) -> None:
        print("plain requests ...", flush=True)
        for i in range(3):
            self.new_project(f"reader {i}", None, self.reader)
        nfp, bp = self.nfhub.port, self.bare.port
        cases = [
            ("GET /api/projects (3 projects)", raw_request("GET", "/api/projects", nfp, {"x-access-token": self.reader})),
            ("GET /api/health", raw_request("GET", "/api/health", nfp)),
        ]
        bare_req = raw_request("GET", "/json", bp)
        s = self.sizes
        for conns, per in ((1, s.plain_seq), (CONCURRENCY, s.plain_conc)):
            bare = _median([drive(self.bare, [[bare_req] * per for _ in range(conns)]) for _ in range(s.rounds)])
            for label, req in cases:
                load = _median([drive(self.nfhub, [[req] * per for _ in range(conns)]) for _ in range(s.rounds)])
                if load.errors:
                    raise RuntimeError(f"{label}: {dict(load.errors)} {load.first_error[:300]!r}")
                lat = f" (p50 {load.pct(0.5) * 1000:.2f} ms)" if conns == 1 else ""
                self.row(f"{label}, {'sequential' if conns == 1 else f'{conns} connections'}: nfhub "
                         f"{load.rate:,.0f} req/s{lat} | bare GET /json {bare.rate:,.0f} req/s | ratio "
                         f"{load.rate / bare.rate:.2f}", 5)

    # -- 4. upload and download
    def upload(self, server: Server, path: str, headers: dict[str, str]) -> tuple[float, int, object]:
        total = self.sizes.upload
        boundary = "nfhub-bench-" + secrets.token_hex(12)
        pre = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"directory\"\r\n\r\n\r\n"
               f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.bin\"\r\n"
               "Content-Type: application/octet-stream\r\n\r\n").encode()
        post = f"\r\n--{boundary}--\r\n".encode()
        head = raw_request("POST", path, server.port, {
            **headers, "Content-Type": f"multipart/form-data; boundary={boundary}",
            "Content-Length": str(len(pre) + total + len(post))})
        with socket.create_connection((HOST, server.port)) as sock:
            t0 = time.perf_counter()
            try:
                for chunk in _multipart(head + pre, total, post):
                    sock.sendall(chunk)
            except OSError:
                pass  # answered early (an error): read it below
            status, raw, _ = read_response(sock)
            elapsed = time.perf_counter() - t0
        body = raw.split(b"\r\n\r\n", 1)[1]
        return elapsed, status, json.loads(body) if body else None

    def download(self, server: Server, path: str, headers: dict[str, str]) -> float:
        with socket.create_connection((HOST, server.port)) as sock:
            t0 = time.perf_counter()
            sock.sendall(raw_request("GET", path, server.port, headers))
            status, head, got = read_response(sock, sink=True)
            elapsed = time.perf_counter() - t0
        if status != 200 or got != self.sizes.upload:
            raise RuntimeError(f"download {path}: status {status}, {got} bytes: {head[:300]!r}")
        return elapsed

    def files(self) -> None:
        total = self.sizes.upload
        print(f"upload and download of {total / MiB:,.0f} MiB ...", flush=True)
        pid = self.new_project("files", None)
        auth = {"x-access-token": self.token}
        mem0 = self.nfhub.memory()
        reset = self.nfhub.reset_peak()
        base = self.nfhub.memory()["VmRSS"]
        nf_t, status, answer = self.upload(self.nfhub, f"/api/projects/{pid}/upload-file", auth)
        peak = self.nfhub.memory()["VmHWM"] if reset else max(self.nfhub.memory()["VmHWM"], mem0["VmHWM"])
        growth = max(0, peak - base)
        stored = self.data / "projects" / str(pid) / "big.bin"
        if status != 200 or not stored.is_file() or stored.stat().st_size != total:
            raise RuntimeError(f"nfhub upload: {status} {answer}; stored: {stored.stat().st_size if stored.exists() else None}")
        bare_t, status, answer = self.upload(self.bare, "/upload?fsync=1", {})
        if status != 200:
            raise RuntimeError(f"bare upload: {status} {answer}")
        raw_t, status, _ = self.upload(self.bare, "/upload", {})
        (self.bare_dir / "upload.bin").unlink()
        os.link(stored, self.bare_dir / "download.bin")  # the very same file, hot in the page cache for both
        nf_rate, bare_rate = total / MiB / nf_t, total / MiB / bare_t
        ratio = nf_rate / bare_rate
        self.row(f"upload {total / MiB:,.0f} MiB: nfhub {nf_rate:,.0f} MiB/s | bare (stream to file + fsync) "
                 f"{bare_rate:,.0f} MiB/s | ratio {ratio:.2f} (goal 0.80) {self.verdict(ratio, 0.8)}", 4)
        self.row(f"upload peak RSS growth: nfhub {growth / MiB:.1f} MiB (goal < 64 MiB) "
                 f"{self.verdict(growth / MiB, 64, higher=False)}", 4)
        self.notes.append(f"upload: bare without fsync {total / MiB / raw_t:,.0f} MiB/s; nfhub RSS before "
                          f"{base / MiB:.0f} MiB" + ("" if reset else " (peak not resettable: HWM since start)"))
        nf_d = [self.download(self.nfhub, f"/api/projects/{pid}/download?path=big.bin", auth)
                for _ in range(self.sizes.downloads)]
        bare_d = [self.download(self.bare, "/download", {}) for _ in range(self.sizes.downloads)]
        nd, bd = total / MiB / statistics.median(nf_d), total / MiB / statistics.median(bare_d)
        self.row(f"download {total / MiB:,.0f} MiB: nfhub {nd:,.0f} MiB/s | bare FileResponse {bd:,.0f} MiB/s | "
                 f"ratio {nd / bd:.2f}", 4)

    # -- teardown
    def cleanup(self) -> None:
        for server in reversed(self.servers):
            with contextlib.suppress(Exception):
                server.stop()
        # pipeline stand-ins still holding a run (nfhub leaves running pipelines running when it stops)
        for stamp in (self.data / "runs").glob("*/*/exec_time"):
            with contextlib.suppress(OSError, ValueError):
                pid = int(stamp.read_text().split()[1])
                if b"sleep" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def run(self) -> None:
        t0 = time.monotonic()
        phases = []
        # the upload first: its RSS growth is only meaningful in a server whose heap the weblog backlog has not grown
        steps = {"files": [self.files], "schedule": [self.schedule_latency],
                 "weblog": [self.start_runs, lambda: self.weblog(1), lambda: self.weblog(CONCURRENCY),
                            self.verify_events, self.stop_runs], "plain": [self.plain]}
        for step in [self.setup, *(s for name, part in steps.items() if self.only in (None, name) for s in part)]:
            t = time.monotonic()
            step()
            phases.append(time.monotonic() - t)
        print(f"\n==== nfhub benchmark ({'quick' if self.sizes.upload < 1 << 30 else 'full'}, "
              f"{time.monotonic() - t0:.0f} s; ratios against bare Starlette on the same uvicorn "
              f"{self.nfhub.flavour()}, {os.cpu_count()} cores) ====")
        for _, row in sorted(self.rows, key=lambda r: r[0]):  # stable: figure order, then as measured
            print(row)
        print("notes:")
        for note in self.notes:
            print(f"  {note}")
        print(f"  phase seconds: {', '.join(f'{p:.0f}' for p in phases)}")


def _multipart(head: bytes, total: int, tail: bytes) -> Iterator[bytes | memoryview]:
    """The upload body, generated as it is sent: one random MiB, repeated."""
    yield head
    block = memoryview(os.urandom(MiB))
    left = total
    while left:
        n = min(left, len(block))
        yield block[:n]
        left -= n
    yield tail


def _median(loads: list[Load]) -> Load:
    """The round with the median rate (latencies: all rounds together)."""
    ranked = sorted(loads, key=lambda x: x.rate)
    pick = ranked[len(ranked) // 2]
    return Load(pick.elapsed, [x for load in loads for x in load.latencies], pick.ok, pick.errors, pick.first_error,
                pick.client_cpu, pick.server_cpu)


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small, fast smoke run (same figures, less data)")
    parser.add_argument("--only", choices=("files", "schedule", "weblog", "plain"),
                        help="measure one group of figures only")
    parser.add_argument("--http", choices=("auto", "h11"), default="auto",
                        help="nfhub's HTTP parser: auto (httptools on loopback, as deployed locally) or h11 (what a "
                             "non-loopback bind gets), to measure what the header cap costs")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored (`cmd &`)
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGHUP, _stop)
    bench = Bench(Sizes.quick() if args.quick else Sizes(), args.only, args.http)
    try:
        bench.run()
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except Exception:
        for server in bench.servers:
            print(f"--- {server.name} log (last lines) ---\n{server.tail()}", file=sys.stderr)
        raise
    finally:
        bench.cleanup()


if __name__ == "__main__":
    sys.exit(main())
