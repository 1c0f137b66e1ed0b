"""Tests for tests/fake_nextflow.py (the `nextflow` test double) and the demo pipeline pipelines/hello.

The fake runs as a real subprocess, argv shaped like nfhub's launch, against a loopback HTTP server that records the
weblog events. Task durations are scaled down with FAKE_NEXTFLOW_TIME_SCALE.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

FAKE = Path(__file__).resolve().parent / "fake_nextflow.py"
HELLO = Path(__file__).resolve().parents[1] / "pipelines" / "hello"
INT_MAX = 2147483647
ENVELOPE = {"runName", "runId", "event", "utcTime"}
HASH_RE = re.compile(r"^[0-9a-f]{2}/[0-9a-f]{6}$")
WORKFLOW_KEYS = {
    "runName", "sessionId", "commandLine", "scriptId", "scriptFile", "scriptName", "projectDir", "projectName",
    "repository", "commitId", "revision", "launchDir", "workDir", "outputDir", "homeDir", "userName", "profile",
    "configFiles", "container", "containerEngine", "nextflow", "manifest", "start", "complete", "duration", "success",
    "exitStatus", "errorMessage", "errorReport", "resume", "stubRun", "preview", "failOnIgnore", "wave", "fusion",
    "stats",
}
STATS_KEYS = {
    "succeededCount", "succeedCount", "failedCount", "ignoredCount", "cachedCount", "retriesCount", "abortedCount",
    "pendingCount", "submittedCount", "runningCount", "effectiveFailedCount", "totalCount", "succeedCountFmt",
    "cachedCountFmt", "failedCountFmt", "ignoredCountFmt", "succeedPct", "cachedPct", "ignoredPct",
    "effectiveFailedPct", "succeedDuration", "failedDuration", "cachedDuration", "computeTimeFmt", "loadCpus",
    "loadMemory", "loadMemoryFmt", "peakRunning", "peakCpus", "peakMemory", "peakMemoryFmt", "progressLength",
    "changeTimestamp", "processes",
}
TRACE_FIELDS = (
    "task_id,hash,native_id,name,status,exit,submit,start,complete,duration,realtime,%cpu,peak_rss,workdir,process,tag"
)


# ---- Loopback weblog server -------------------------------------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    raw: bytes
    body: dict[str, Any]


@dataclass
class WeblogServer:
    url: str = ""
    status: int = 200
    received: list[Received] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def events(self) -> list[dict[str, Any]]:
        with self.cond:
            return [r.body for r in self.received]

    def names(self) -> list[str]:
        return [e["event"] for e in self.events()]

    def clear(self) -> None:
        with self.cond:
            self.received.clear()

    def wait_for(self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 10) -> None:
        with self.cond:
            ok = self.cond.wait_for(lambda: predicate([r.body for r in self.received]), timeout)
        assert ok, f"condition not met; events so far: {self.names()}"


def _serve(status: int = 200) -> tuple[ThreadingHTTPServer, WeblogServer]:
    state = WeblogServer(status=status)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with state.cond:
                state.received.append(Received(self.path, dict(self.headers), raw, json.loads(raw)))
                state.cond.notify_all()
            self.send_response(state.status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_port}/api/projects/3/nextflow-log?token=abc"
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    return server, state


@pytest.fixture
def weblog() -> Iterator[WeblogServer]:
    server, state = _serve()
    yield state
    server.shutdown()
    server.server_close()


# ---- Launch helpers ---------------------------------------------------------------------------------------------


def env(scale: float = 0.1, **extra: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items()
           if not k.lower().endswith("_proxy") and not k.startswith(("NXF_", "FAKE_NEXTFLOW_"))}
    out["FAKE_NEXTFLOW_TIME_SCALE"] = str(scale)
    out.update(extra)
    return out


def make_pipeline(root: Path, spec: dict[str, Any], name: str = "pipe") -> Path:
    pipe = root / name
    pipe.mkdir(parents=True, exist_ok=True)
    (pipe / "main.nf").write_text("process A {\n  script:\n  'true'\n}\nworkflow { A() }\n")
    (pipe / "fake_nextflow.json").write_text(json.dumps(spec))
    return pipe


def write_run_dir(run_dir: Path, url: str, params: dict[str, Any] | None = None, raw: bool = True,
                  overwrite: bool = True, token: str | None = "run:abc") -> None:
    """The run dir nfhub prepares: params.json and the generated nfhub.config (same shape as nfhub's)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "params.json").write_text(json.dumps(params or {}))
    token_line = f"; basicToken = '{token}'" if token else ""
    (run_dir / "nfhub.config").write_text(
        "// generated by nfhub\n"
        "plugins { id 'nf-weblog' }\n"
        f"weblog {{ enabled = true; url = '{url}'{token_line} }}\n"
        f"trace {{ enabled = true; file = '{run_dir / 'trace.txt'}'; overwrite = {str(overwrite).lower()}; "
        f"raw = {str(raw).lower()}; fields = '{TRACE_FIELDS}' }}\n"
    )


def argv(launch_dir: Path, pipeline: Path | str, run_dir: Path, name: str, *extra: str) -> list[str]:
    return [sys.executable, str(FAKE), "-log", str(run_dir / "nextflow.log"), "run", str(pipeline),
            "-params-file", str(run_dir / "params.json"), "-name", name, "-work-dir", str(launch_dir / "work"),
            "-ansi-log", "false", "-c", str(run_dir / "nfhub.config"), *extra]


def run(args: list[str], cwd: Path, scale: float = 0.1, **extra_env: str) -> subprocess.CompletedProcess[str]:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run(args, cwd=cwd, env=env(scale, **extra_env), capture_output=True, text=True, timeout=30)


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead, it only waits to be reaped


def wait_until(predicate: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def task_events(events: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in events if e.get("trace", {}).get("name") == name]


def history(launch_dir: Path) -> list[list[str]]:
    path = launch_dir / ".nextflow" / "history"
    return [line.split("\t") for line in path.read_text().splitlines()] if path.exists() else []


# ---- A successful run, inspected by several tests ----------------------------------------------------------------

SUCCESS_SPEC = {
    "tasks": [
        {"process": "WF:ALIGN", "each": ["s1", "s2"], "seconds": 0.2, "stdout": "aligned {item}\n", "cpus": 2,
         "memory": "1 GB", "time": "1h", "outputs": {"{item}.bam": "bam of {item}"}},
        {"process": "WF:REPORT", "after": "WF:ALIGN", "seconds": 0.1, "tag": None},
    ]
}


@dataclass
class SuccessRun:
    launch: Path
    run_dir: Path
    proc: subprocess.CompletedProcess[str]
    events: list[dict[str, Any]]
    received: list[Received]
    url: str
    started_at: int
    ended_at: int


@pytest.fixture(scope="module")
def success_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SuccessRun]:
    server, state = _serve()
    root = tmp_path_factory.mktemp("success")
    pipe = make_pipeline(root, SUCCESS_SPEC)
    launch, run_dir = root / "launch", root / "runs" / "1"
    write_run_dir(run_dir, state.url, params={"sample-sheet": "Zoë.csv", "depth": 3})
    started_at = int(time.time() * 1000)
    proc = run(argv(launch, pipe, run_dir, "happy_run"), launch)
    ended_at = int(time.time() * 1000)
    yield SuccessRun(launch, run_dir, proc, state.events(), list(state.received), state.url, started_at, ended_at)
    server.shutdown()
    server.server_close()


def test_success_event_order_and_envelope(success_run: SuccessRun) -> None:
    r = success_run
    assert r.proc.returncode == 0, r.proc.stdout + r.proc.stderr
    names = [e["event"] for e in r.events]
    assert names[0] == "started" and names[-1] == "completed"
    assert names.count("process_submitted") == names.count("process_started") == names.count("process_completed") == 3
    for task in ("WF:ALIGN (s1)", "WF:ALIGN (s2)", "WF:REPORT"):
        assert [e["event"] for e in task_events(r.events, task)] == [
            "process_submitted", "process_started", "process_completed"]
    # REPORT waits for both ALIGN tasks
    first_report = names.index("process_submitted", max(i for i, e in enumerate(r.events)
                                                         if e.get("trace", {}).get("process") == "WF:ALIGN"
                                                         and e["event"] == "process_completed"))
    assert r.events[first_report]["trace"]["name"] == "WF:REPORT"
    run_ids = {e["runId"] for e in r.events}
    assert len(run_ids) == 1 and uuid.UUID(run_ids.pop())
    for e in r.events:
        extra = {"trace"} if e["event"].startswith("process_") else {"metadata"}
        assert set(e) == ENVELOPE | extra
        assert e["runName"] == "happy_run"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", e["utcTime"])
    for req in r.received:
        assert req.path == "/api/projects/3/nextflow-log?token=abc"
        assert req.headers["Content-Type"] == "application/json"
        assert req.headers["User-Agent"] == "Nextflow/25.10.2"
        assert req.headers["Authorization"] == "Basic " + base64.b64encode(b"run:abc").decode()
        assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", req.headers["Traceparent"])
        req.raw.decode("ascii")  # compact, pure ASCII JSON
        assert b": " not in req.raw and b", " not in req.raw[:200]
    assert b"Zo\\u00eb.csv" in r.received[0].raw


def test_success_metadata(success_run: SuccessRun) -> None:
    started, completed = success_run.events[0]["metadata"], success_run.events[-1]["metadata"]
    assert set(started) == set(completed) == {"parameters", "workflow"}
    # params-file keys are camel-cased; types survive
    assert started["parameters"] == {"sampleSheet": "Zoë.csv", "depth": 3}
    wf = started["workflow"]
    assert set(wf) == WORKFLOW_KEYS
    assert wf["sessionId"] == success_run.events[0]["runId"] and wf["runName"] == "happy_run"
    assert wf["launchDir"] == str(success_run.launch) and wf["workDir"] == str(success_run.launch / "work")
    assert wf["scriptFile"].endswith("/pipe/main.nf") and wf["scriptName"] == "main.nf"
    assert re.fullmatch(r"[0-9a-f]{32}", wf["scriptId"]) and wf["repository"] is None
    assert wf["profile"] == "standard" and wf["resume"] is False
    assert wf["commandLine"].startswith("nextflow -log ") and "-name happy_run" in wf["commandLine"]
    assert wf["configFiles"] == [str(success_run.run_dir / "nfhub.config")]
    assert wf["nextflow"]["version"] == "25.10.2" and wf["nextflow"]["enable"] == {"dsl": 2}
    assert wf["manifest"]["mainScript"] == "main.nf" and wf["manifest"]["contributors"] == []
    # the OffsetDateTime quirk: an object of getters, not a string
    start = wf["start"]
    assert isinstance(start, dict)
    assert {"year", "monthValue", "dayOfMonth", "hour", "minute", "second", "nano"} <= set(start)
    assert isinstance(start["offset"]["totalSeconds"], int) and len(start["offset"]["availableZoneIds"]) > 100
    assert (wf["complete"], wf["duration"], wf["success"], wf["exitStatus"], wf["errorMessage"]) == (
        None, None, False, None, None)
    assert set(wf["stats"]) == STATS_KEYS and wf["stats"]["processes"] == [] and wf["stats"]["succeededCount"] == 0

    done = completed["workflow"]
    assert done["success"] is True and done["exitStatus"] == 0 and done["errorMessage"] is None
    assert isinstance(done["complete"], dict) and done["duration"] >= 0
    stats = done["stats"]
    assert (stats["succeededCount"], stats["failedCount"], stats["cachedCount"], stats["abortedCount"]) == (3, 0, 0, 0)
    assert stats["succeedPct"] == 100.0 and stats["succeedCountFmt"] == "3"
    assert [(p["name"], p["succeeded"]) for p in stats["processes"]] == [("WF:ALIGN", 2), ("WF:REPORT", 1)]


def test_trace_records_fields_types_and_units(success_run: SuccessRun) -> None:
    r = success_run
    submitted, started, completed = (e["trace"] for e in task_events(r.events, "WF:ALIGN (s1)"))
    assert submitted["status"] == "SUBMITTED" and submitted["start"] == 0 and submitted["exit"] == INT_MAX
    assert "complete" not in submitted and "error_action" not in submitted
    assert r.started_at <= submitted["submit"] <= r.ended_at  # epoch ms
    assert started["status"] == "RUNNING" and started["start"] >= started["submit"]
    assert completed["status"] == "COMPLETED" and completed["exit"] == 0 and completed["error_action"] is None
    assert completed["complete"] >= completed["start"]
    assert completed["duration"] == completed["complete"] - completed["submit"]
    assert isinstance(completed["realtime"], int) and 15 <= completed["realtime"] <= completed["duration"] + 50
    assert isinstance(completed["%cpu"], float) and isinstance(completed["%mem"], float)
    assert isinstance(completed["peak_rss"], int) and completed["peak_rss"] > 1024 * 1024  # bytes, not KB
    assert (completed["cpus"], completed["memory"], completed["time"]) == (2, 1024**3, 3_600_000)
    assert completed["process"] == "WF:ALIGN" and completed["tag"] == "s1" and completed["module"] == []
    assert isinstance(completed["native_id"], int) and isinstance(completed["task_id"], int)
    assert HASH_RE.match(completed["hash"])
    workdir = Path(completed["workdir"])
    assert workdir.parent.parent == r.launch / "work"
    assert re.fullmatch(r"[0-9a-f]{32}", workdir.parent.name + workdir.name)
    assert completed["hash"] == f"{workdir.parent.name}/{workdir.name[:6]}"
    assert (workdir / ".exitcode").read_text() == "0"
    assert (workdir / ".command.out").read_text() == "aligned s1\n"
    assert (workdir / "s1.bam").read_text() == "bam of s1"
    assert {".command.sh", ".command.run", ".command.err", ".command.trace", ".command.begin"} <= {
        p.name for p in workdir.iterdir()}
    assert [e["trace"]["name"] for e in r.events if e["event"] == "process_submitted"][-1] == "WF:REPORT"


def test_trace_file_raw(success_run: SuccessRun) -> None:
    lines = (success_run.run_dir / "trace.txt").read_text().splitlines()
    assert lines[0].split("\t") == TRACE_FIELDS.split(",")
    rows = [dict(zip(lines[0].split("\t"), line.split("\t"), strict=True)) for line in lines[1:]]
    assert sorted(r["name"] for r in rows) == ["WF:ALIGN (s1)", "WF:ALIGN (s2)", "WF:REPORT"]
    for row in rows:
        assert row["status"] == "COMPLETED" and row["exit"] == "0"
        assert int(row["submit"]) >= success_run.started_at and int(row["duration"]) >= int(row["realtime"]) - 50
        assert int(row["peak_rss"]) > 1024 * 1024 and float(row["%cpu"]) >= 0
    assert next(r for r in rows if r["name"] == "WF:REPORT")["tag"] == "-"


def test_console_history_and_log(success_run: SuccessRun) -> None:
    r = success_run
    out = r.proc.stdout.splitlines()
    assert out[0] == "N E X T F L O W  ~  version 25.10.2"
    assert re.fullmatch(r"Launching `.*/pipe/main\.nf` \[happy_run\] DSL2 - revision: [0-9a-f]{10}", out[1])
    submitted = [line for line in out if "Submitted process" in line]
    assert len(submitted) == 3
    assert all(re.fullmatch(r"\[[0-9a-f]{2}/[0-9a-f]{6}\] Submitted process > WF:(ALIGN \(s[12]\)|REPORT)", s)
               for s in submitted)
    [entry] = history(r.launch)
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", entry[0]) and entry[1] != "-"
    assert entry[2:4] == ["happy_run", "OK"] and re.fullmatch(r"[0-9a-f]{32}", entry[4])
    assert entry[5] == r.events[0]["runId"] and entry[6].startswith("nextflow -log ")
    assert "$> nextflow -log" in (r.run_dir / "nextflow.log").read_text()
    assert (r.launch / ".nextflow" / "cache" / entry[5] / "db").is_dir()
    log = run([sys.executable, str(FAKE), "log"], r.launch)
    assert "happy_run" in log.stdout and "RUN NAME" in log.stdout
    tasks = run([sys.executable, str(FAKE), "log", "happy_run", "-f", "name,status,exit"], r.launch)
    assert sorted(tasks.stdout.splitlines()) == ["WF:ALIGN (s1)\tCOMPLETED\t0", "WF:ALIGN (s2)\tCOMPLETED\t0",
                                                 "WF:REPORT\tCOMPLETED\t0"]


def test_version_and_info(tmp_path: Path) -> None:
    assert run([sys.executable, str(FAKE), "-v"], tmp_path).stdout == "nextflow version 25.10.2.10555\n"
    splash = run([sys.executable, str(FAKE), "-version"], tmp_path).stdout
    assert "N E X T F L O W" in splash and "version 25.10.2 build 10555" in splash
    assert "Version: 25.10.2 build 10555" in run([sys.executable, str(FAKE), "info"], tmp_path).stdout


def test_executable_via_shebang(tmp_path: Path) -> None:
    assert os.access(FAKE, os.X_OK)
    assert FAKE.read_text().startswith("#!/usr/bin/env python3\n")
    proc = subprocess.run([str(FAKE), "-v"], capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.startswith("nextflow version 25.10.2")


# ---- Failures ---------------------------------------------------------------------------------------------------


def test_task_failure_terminate_sequence(tmp_path: Path, weblog: WeblogServer) -> None:
    spec = {"max_parallel": 3, "tasks": [
        {"process": "SLOW", "each": ["a", "b"], "seconds": 50},
        {"process": "BAD", "each": ["z"], "seconds": 1, "exit": 3, "stderr": "boom\nsecond line\n"},
    ]}
    pipe = make_pipeline(tmp_path, spec)
    launch, run_dir = tmp_path / "launch", tmp_path / "run"
    write_run_dir(run_dir, weblog.url)
    proc = run(argv(launch, pipe, run_dir, "failing"), launch)
    assert proc.returncode == 1
    events = weblog.events()
    names = [e["event"] for e in events]
    failed = names.index("process_completed")
    assert names[failed:] == ["process_completed"] * 3 + ["completed", "error"]
    bad = events[failed]["trace"]
    assert (bad["name"], bad["status"], bad["exit"], bad["error_action"]) == ("BAD (z)", "FAILED", 3, "TERMINATE")
    assert {"complete", "duration", "realtime"} <= set(bad)
    aborted = [events[failed + 1]["trace"], events[failed + 2]["trace"]]
    assert sorted(t["name"] for t in aborted) == ["SLOW (a)", "SLOW (b)"]
    for t in aborted:
        assert t["status"] == "ABORTED" and t["exit"] == INT_MAX
        assert not {"complete", "duration", "realtime", "error_action"} & set(t)
        wait_until(lambda pid=t["native_id"]: not alive(pid))
    wf = events[-2]["metadata"]["workflow"]
    assert (wf["success"], wf["exitStatus"], wf["errorMessage"]) == (False, 3, "boom\nsecond line")
    assert wf["errorReport"].startswith("Error executing process > 'BAD (z)'")
    assert (wf["stats"]["failedCount"], wf["stats"]["abortedCount"]) == (1, 2)
    assert set(events[-1]) == ENVELOPE  # `error` after an abort carries no trace
    assert "ERROR ~ Error executing process > 'BAD (z)'" in proc.stdout
    assert "WARN: Killing running tasks (2)" in proc.stdout
    assert history(launch)[0][3] == "ERR"


def test_error_strategy_ignore_skips_downstream(tmp_path: Path, weblog: WeblogServer) -> None:
    spec = {"tasks": [
        {"process": "A", "each": ["ok", "bad"], "seconds": 0.1},
        {"process": "A2", "each": ["bad"], "seconds": 0.1, "exit": 2, "error_strategy": "ignore"},
        {"process": "B", "after": "A2", "each": ["bad"], "seconds": 0.1},
    ]}
    pipe = make_pipeline(tmp_path, spec)
    launch, run_dir = tmp_path / "launch", tmp_path / "run"
    write_run_dir(run_dir, weblog.url)
    proc = run(argv(launch, pipe, run_dir, "ignoring"), launch)
    assert proc.returncode == 0, proc.stdout
    events = weblog.events()
    ignored = task_events(events, "A2 (bad)")[-1]["trace"]
    assert (ignored["status"], ignored["error_action"], ignored["exit"]) == ("FAILED", "IGNORE", 2)
    assert task_events(events, "B (bad)") == []
    assert re.search(r"NOTE: Process `A2 \(bad\)` terminated with an error exit status \(2\) -- Error is ignored",
                     proc.stdout)
    stats = events[-1]["metadata"]["workflow"]["stats"]
    assert events[-1]["event"] == "completed" and events[-1]["metadata"]["workflow"]["success"] is True
    assert (stats["ignoredCount"], stats["failedCount"], stats["succeededCount"]) == (1, 1, 2)


def test_error_strategy_finish_and_retry(tmp_path: Path, weblog: WeblogServer) -> None:
    spec = {"max_parallel": 2, "tasks": [
        {"process": "LONG", "seconds": 6},
        {"process": "FIN", "seconds": 0.1, "exit": 4, "stderr": "nope", "error_strategy": "finish"},
        {"process": "LATER", "after": "FIN", "seconds": 0.1},
    ]}
    pipe = make_pipeline(tmp_path, spec)
    launch, run_dir = tmp_path / "launch", tmp_path / "run"
    write_run_dir(run_dir, weblog.url)
    proc = run(argv(launch, pipe, run_dir, "finishing"), launch)
    assert proc.returncode == 1
    events = weblog.events()
    names = [e["event"] for e in events]
    assert names[-1] == "completed" and names.count("error") == 1
    error = events[names.index("error")]
    assert error["trace"]["name"] == "FIN" and error["trace"]["error_action"] == "FINISH"
    assert task_events(events, "LONG")[-1]["trace"]["status"] == "COMPLETED"  # running tasks finish normally
    assert names.index("error") < names.index("process_completed", names.index("error"))
    assert events[-1]["metadata"]["workflow"]["exitStatus"] == 4

    weblog.clear()
    spec = {"tasks": [{"process": "FLAKY", "seconds": 0.1, "exit": [1, 0], "error_strategy": "retry"}]}
    make_pipeline(tmp_path, spec, "retry")
    proc = run(argv(launch, tmp_path / "retry", run_dir, "retrying"), launch)
    assert proc.returncode == 0, proc.stdout
    done = [e["trace"] for e in weblog.events() if e["event"] == "process_completed"]
    assert [(t["attempt"], t["status"], t["error_action"]) for t in done] == [
        (1, "FAILED", "RETRY"), (2, "COMPLETED", None)]
    assert done[0]["hash"] != done[1]["hash"] and done[0]["task_id"] != done[1]["task_id"]
    assert "Re-submitted process > FLAKY" in proc.stdout
    assert weblog.events()[-1]["metadata"]["workflow"]["stats"]["retriesCount"] == 1


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=lambda s: s.name)
def test_signal_aborts_run_and_kills_tasks(tmp_path: Path, weblog: WeblogServer, sig: signal.Signals) -> None:
    pipe = make_pipeline(tmp_path, {"tasks": [{"process": "SLEEPY", "each": ["a", "b"], "seconds": 300}]})
    launch, run_dir = tmp_path / "launch", tmp_path / "run"
    write_run_dir(run_dir, weblog.url)
    launch.mkdir()
    proc = subprocess.Popen(argv(launch, pipe, run_dir, "interrupted"), cwd=launch, env=env(1.0), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        weblog.wait_for(lambda evs: sum(e["event"] == "process_started" for e in evs) == 2)
        assert [h[1:4] for h in history(launch)] == [["-", "interrupted", "-"]]  # written at start, updated at end
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=15)
    finally:
        with_group_kill(proc)
    assert proc.returncode == 1  # not 143: Nextflow handles the signal and exits 1
    events = weblog.events()
    names = [e["event"] for e in events]
    assert names[-4:] == ["process_completed", "process_completed", "completed", "error"]
    assert {e["trace"]["status"] for e in events[-4:-2]} == {"ABORTED"}
    wf = events[-2]["metadata"]["workflow"]
    assert (wf["success"], wf["exitStatus"], wf["errorMessage"], wf["errorReport"]) == (False, None, sig.name, sig.name)
    assert "WARN: Killing running tasks (2)" in out
    for e in events[-4:-2]:
        wait_until(lambda pid=e["trace"]["native_id"]: not alive(pid))
    assert history(launch)[0][3] == "ERR"


def with_group_kill(proc: subprocess.Popen[str]) -> None:
    # whatever a test leaves behind dies with the process group, as nfhub does after its grace period
    with_suppress = (ProcessLookupError, PermissionError)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except with_suppress:
        pass
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


def test_task_ignoring_sigterm_survives_until_group_kill(tmp_path: Path, weblog: WeblogServer) -> None:
    spec = {"tasks": [{"process": "STUBBORN", "seconds": 300, "ignore_sigterm": True}]}
    pipe = make_pipeline(tmp_path, spec)
    launch, run_dir = tmp_path / "launch", tmp_path / "run"
    write_run_dir(run_dir, weblog.url)
    launch.mkdir()
    proc = subprocess.Popen(argv(launch, pipe, run_dir, "stubborn"), cwd=launch, env=env(1.0), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        weblog.wait_for(lambda evs: "process_started" in [e["event"] for e in evs])
        pid = weblog.events()[-1]["trace"]["native_id"]
        assert os.getpgid(pid) == proc.pid  # tasks stay in the launcher's process group
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=15)
        assert proc.returncode == 1
        assert weblog.names()[-2:] == ["completed", "error"]
        assert alive(pid)
        os.killpg(proc.pid, signal.SIGKILL)
        wait_until(lambda: not alive(pid))
    finally:
        with_group_kill(proc)


# ---- Resume -----------------------------------------------------------------------------------------------------


def test_resume_reuses_succeeded_tasks(tmp_path: Path, weblog: WeblogServer) -> None:
    spec: dict[str, Any] = {"tasks": [
        {"process": "A", "each": ["a", "b"], "seconds": 0.1},
        {"process": "B", "after": "A", "each": ["a"], "seconds": 0.1},
        {"process": "B", "after": "A", "each": ["b"], "seconds": 0.1, "exit": 2, "error_strategy": "ignore"},
    ]}
    pipe = make_pipeline(tmp_path, spec)
    launch = tmp_path / "launch"
    write_run_dir(tmp_path / "r1", weblog.url)
    first = run(argv(launch, pipe, tmp_path / "r1", "first"), launch)
    assert first.returncode == 0, first.stdout
    session = weblog.events()[0]["runId"]

    spec["tasks"][2]["exit"] = 0  # "fix the input", then resume
    (pipe / "fake_nextflow.json").write_text(json.dumps(spec))
    weblog.clear()
    write_run_dir(tmp_path / "r2", weblog.url)
    second = run(argv(launch, pipe, tmp_path / "r2", "second", "-resume", session), launch)
    assert second.returncode == 0, second.stdout + second.stderr
    events = weblog.events()
    assert {e["runId"] for e in events} == {session} and {e["runName"] for e in events} == {"second"}
    # cached tasks send nothing: only the re-run task has events
    assert [(e["event"], e.get("trace", {}).get("name")) for e in events] == [
        ("started", None), ("process_submitted", "B (b)"), ("process_started", "B (b)"),
        ("process_completed", "B (b)"), ("completed", None)]
    assert events[0]["metadata"]["workflow"]["resume"] is True
    stats = events[-1]["metadata"]["workflow"]["stats"]
    assert (stats["cachedCount"], stats["succeededCount"], stats["cachedPct"]) == (3, 1, 75.0)
    assert stats["cachedDuration"] > 0
    assert len(re.findall(r"^\[[0-9a-f]{2}/[0-9a-f]{6}\] Cached process > (A \([ab]\)|B \(a\))$", second.stdout,
                          re.MULTILINE)) == 3
    rows = [line.split("\t") for line in (tmp_path / "r2" / "trace.txt").read_text().splitlines()[1:]]
    assert sorted(r[4] for r in rows) == ["CACHED", "CACHED", "CACHED", "COMPLETED"]
    assert [h[5] for h in history(launch)] == [session, session]
    assert [h[3] for h in history(launch)] == ["OK", "OK"]


def test_resume_edge_cases(tmp_path: Path, weblog: WeblogServer) -> None:
    pipe = make_pipeline(tmp_path, {"tasks": [{"process": "A", "seconds": 0}]})
    launch, run_dir = tmp_path / "launch", tmp_path / "run"
    write_run_dir(run_dir, weblog.url)
    fresh = run(argv(launch, pipe, run_dir, "never_ran", "-resume"), launch)
    assert fresh.returncode == 0
    assert "WARN: It appears you have never run this project before -- Option `-resume` is ignored" in fresh.stdout
    assert weblog.events()[0]["metadata"]["workflow"]["resume"] is False
    weblog.clear()
    missing = str(uuid.uuid4())
    proc = run(argv(launch, pipe, run_dir, "bad_resume", "-resume", missing), launch)
    assert proc.returncode == 1 and weblog.events() == []
    assert f"Can't find a run with the specified id: {missing} -- Execution can't be resumed" in proc.stderr
    last = run(argv(launch, pipe, run_dir, "resume_last", "-resume", "last"), launch)
    assert last.returncode == 0 and "Cached process > A" in last.stdout


# ---- Pre-start failures: no events, exit 1 --------------------------------------------------------------------


def test_run_name_rules(tmp_path: Path, weblog: WeblogServer) -> None:
    pipe = make_pipeline(tmp_path, {"tasks": [{"process": "A", "seconds": 0}]})
    launch, run_dir = tmp_path / "launch", tmp_path / "run"
    write_run_dir(run_dir, weblog.url)
    assert run(argv(launch, pipe, run_dir, "taken"), launch).returncode == 0
    before = history(launch)
    weblog.clear()
    clash = run(argv(launch, pipe, run_dir, "taken"), launch)
    assert clash.returncode == 1
    assert clash.stderr.strip() == "Run name `taken` has been already used -- Specify a different one"
    bad = run(argv(launch, pipe, run_dir, "9lives"), launch)
    assert bad.returncode == 1 and "Not a valid run name: `9lives`" in bad.stderr
    last = run(argv(launch, pipe, run_dir, "last"), launch)
    assert last.returncode == 1 and "Not a valid run name: `last`" in last.stderr
    assert weblog.events() == [] and history(launch) == before


@pytest.mark.parametrize(
    ("case", "stream", "message"),
    [
        ("missing_script", "stderr", "Cannot find script file: {tmp}/nope.nf"),
        ("revision_local", "stderr", "Revision option cannot be used when running a local script"),
        ("unknown_profile", "stderr", "Unknown configuration profile: 'tset'\n\nDid you mean one of these?\n    test"),
        ("params_extension", "stderr", "Not a valid params file extension: {tmp}/params.txt"),
        ("params_invalid", "stderr", "Cannot parse params file: {tmp}/bad.json"),
        ("weblog_url", "stdout", "ERROR ~ Only http and https are supported -- The given URL was: ftp://127.0.0.1/x"),
        ("weblog_token", "stdout", "ERROR ~ Invalid auth token provided - should be 'USERNAME:PASSWORD'."),
        ("unknown_option", "stderr", "Unknown option: -frobnicate"),
    ],
)
def test_prestart_failures(tmp_path: Path, weblog: WeblogServer, case: str, stream: str, message: str) -> None:
    pipe = make_pipeline(tmp_path, {"tasks": [{"process": "A", "seconds": 0}]})
    (pipe / "nextflow.config").write_text("profiles {\n  test { params.x = 1 }\n}\n")
    launch, run_dir = tmp_path / "launch", tmp_path / "run"
    write_run_dir(run_dir, weblog.url)
    args = argv(launch, pipe, run_dir, "prestart")
    if case == "missing_script":
        args[5] = str(tmp_path / "nope.nf")
    elif case == "revision_local":
        args += ["-r", "main"]
    elif case == "unknown_profile":
        args += ["-profile", "tset"]
    elif case == "params_extension":
        (tmp_path / "params.txt").write_text("{}")
        args[7] = str(tmp_path / "params.txt")
    elif case == "params_invalid":
        (tmp_path / "bad.json").write_text("{not json")
        args[7] = str(tmp_path / "bad.json")
    elif case == "weblog_url":
        write_run_dir(run_dir, "ftp://127.0.0.1/x")
    elif case == "weblog_token":
        write_run_dir(run_dir, weblog.url, token="no-colon")
    else:
        args.append("-frobnicate")
    proc = run(args, launch)
    assert proc.returncode == 1
    assert message.format(tmp=tmp_path) in getattr(proc, stream)
    assert weblog.events() == [] and history(launch) == []


# ---- Parameters, config, weblog errors ---------------------------------------------------------------------------


def test_cli_params_config_defaults_and_profiles(tmp_path: Path, weblog: WeblogServer) -> None:
    pipe = make_pipeline(tmp_path, {"tasks": [{"process": "A", "seconds": 0}]})
    (pipe / "nextflow.config").write_text(
        "params {\n  outdir = 'results'   // default\n  depth = 1\n  nested { level = 'low' }\n}\n"
        'params.label = "run-${params.depth}"\n'
        "profiles { deep { params.depth = 10 }\n  wide { params.width = 5 } }\n"
    )
    launch, run_dir = tmp_path / "launch", tmp_path / "run"
    write_run_dir(run_dir, weblog.url, params={"from-file": [1, 2], "depth": 2})
    (tmp_path / "global.config").write_text("params.fromGlobal = true\n")
    args = argv(launch, pipe, run_dir, "params", "-profile", "deep,wide", "--max-count", "7", "--ratio=0.5",
                "--flag", "--word", "hello world", "--a.b", "c", "--off", "FALSE", "--neg", "-3")
    args[2:2] = ["-c", str(tmp_path / "global.config")]  # a global option, before `run`
    proc = run(args, launch)
    assert proc.returncode == 0, proc.stderr
    params = weblog.events()[0]["metadata"]["parameters"]
    assert params == {
        "outdir": "results", "depth": 2, "nested": {"level": "low"}, "label": "run-2", "width": 5,
        "fromFile": [1, 2], "maxCount": 7, "ratio": 0.5, "flag": True, "word": "hello world", "a": {"b": "c"},
        "off": False, "neg": -3, "fromGlobal": True,
    }
    assert weblog.events()[0]["metadata"]["workflow"]["profile"] == "deep,wide"
    weblog.clear()
    strings = run(argv(launch, pipe, run_dir, "params_v2", "--max-count", "7"), launch, NXF_SYNTAX_PARSER="v2")
    assert strings.returncode == 0 and weblog.events()[0]["metadata"]["parameters"]["maxCount"] == "7"
    weblog.clear()
    (run_dir / "params.yml").write_text("input-file: data/x.csv\nthreads: 4\nlist: [a, b]\n")
    args = argv(launch, pipe, run_dir, "params_yaml")
    args[args.index("-params-file") + 1] = str(run_dir / "params.yml")
    assert run(args, launch).returncode == 0
    parameters = weblog.events()[0]["metadata"]["parameters"]
    assert (parameters["inputFile"], parameters["threads"], parameters["list"]) == ("data/x.csv", 4, ["a", "b"])


def test_trace_file_formatted_and_never_clobbered(tmp_path: Path, weblog: WeblogServer) -> None:
    pipe = make_pipeline(tmp_path, {"tasks": [{"process": "A", "each": ["x"], "seconds": 1.2, "memory": "2 GB"}]})
    launch, run_dir = tmp_path / "launch", tmp_path / "run"
    write_run_dir(run_dir, weblog.url, raw=False)
    assert run(argv(launch, pipe, run_dir, "formatted"), launch).returncode == 0
    trace = run_dir / "trace.txt"
    header, row = (line.split("\t") for line in trace.read_text().splitlines())
    values = dict(zip(header, row, strict=True))
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}", values["submit"])
    assert re.fullmatch(r"\d+ms", values["realtime"]) and re.fullmatch(r"\d+(\.\d)? MB", values["peak_rss"])
    assert re.fullmatch(r"\d+\.\d%", values["%cpu"]) and values["status"] == "COMPLETED"
    # an existing trace file without `overwrite = true`: the run goes on without a trace file
    before = trace.read_text()
    write_run_dir(run_dir, weblog.url, overwrite=False)
    proc = run(argv(launch, pipe, run_dir, "keeps_trace"), launch)
    assert proc.returncode == 0
    assert f"WARN: Failed to create trace file: {trace} -- Trace file already exists: {trace}" in proc.stdout
    assert trace.read_text() == before


def test_config_parser_shapes(tmp_path: Path) -> None:
    fake = load_fake_module()
    (tmp_path / "extra.config").write_text("process.'withName:ALIGN|SORT'.cpus = 8\n")
    cfg = tmp_path / "nfhub.config"
    cfg.write_text(
        "/* generated */\nplugins {\n    id 'nf-weblog'\n}\n"
        'weblog { enabled = true; url = "http://h:1/p?token=a&b=c"; basicToken = \'u:p\' }\n'
        "trace.enabled = true\ntrace.file = \"${launchDir}/trace.txt\" // comment\ntrace.raw = false\n"
        "process {\n  memory = 2.GB\n  time = 90.min\n  errorStrategy = { task.attempt < 2 ? 'retry' : 'finish' }\n"
        "  withName: 'NFCORE:.*' { cpus = 4 }\n  ext.args = [ '--a',\n    '--b' ]\n}\n"
        "env { FOO = 'bar' }\nincludeConfig 'extra.config'\nmanifest { name = 'x/y'; recurseSubmodules = false }\n"
        "executor.queueSize = -1\nif (params.foo) { weblog.enabled = false }\n"
    )
    merged, files = fake.load_config([cfg], [], {"params": {}, "overrides": {}, "launchDir": "/L"})
    assert merged["plugins"] == {"id": ["nf-weblog"]}
    assert merged["weblog"] == {"enabled": True, "url": "http://h:1/p?token=a&b=c", "basicToken": "u:p"}
    assert merged["trace"] == {"enabled": True, "file": "/L/trace.txt", "raw": False}
    assert merged["process"]["memory"] == 2 * 1024**3 and merged["process"]["time"] == 90 * 60_000
    assert isinstance(merged["process"]["errorStrategy"], fake.Raw)
    assert merged["process"]["withName:NFCORE:.*"] == {"cpus": 4}
    assert merged["process"]["withName:ALIGN|SORT"] == {"cpus": 8}
    assert merged["process"]["ext"]["args"] == ["--a", "--b"]
    assert merged["env"] == {"FOO": "bar"} and merged["manifest"]["recurseSubmodules"] is False
    assert merged["executor"]["queueSize"] == -1
    assert files == [cfg, tmp_path / "extra.config"]
    with pytest.raises(fake.AbortOperation, match="missing closing brace"):
        (tmp_path / "broken.config").write_text("weblog {\n enabled = true\n")
        fake.load_config([tmp_path / "broken.config"], [], {"params": {}, "overrides": {}})


def load_fake_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fake_nextflow_under_test", FAKE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_weblog_failures_warn_and_run_continues(tmp_path: Path) -> None:
    server, state = _serve(status=500)
    try:
        pipe = make_pipeline(tmp_path, {"tasks": [{"process": "A", "each": [1, 2], "seconds": 0}]})
        launch, run_dir = tmp_path / "launch", tmp_path / "run"
        write_run_dir(run_dir, state.url)
        proc = run(argv(launch, pipe, run_dir, "server_error"), launch)
        assert proc.returncode == 0
        assert len(state.events()) == 8  # every event attempted once: no retries
        warning = f"WARN: Server returned HTTP response code: 500 for URL: {state.url}"
        assert proc.stdout.count(warning) == 1  # identical warnings are throttled
    finally:
        server.shutdown()
        server.server_close()
    # the server is gone now: connection refused
    write_run_dir(run_dir, state.url)
    proc = run(argv(launch, pipe, run_dir, "server_down"), launch)
    assert proc.returncode == 0
    assert proc.stdout.count("WARN: java.net.ConnectException: Connection refused") == 1
    assert history(launch)[-1][3] == "OK"


# ---- The hello demo pipeline -----------------------------------------------------------------------------------


def test_hello_publishes_outputs(tmp_path: Path, weblog: WeblogServer) -> None:
    names = tmp_path / "names.txt"
    names.write_text("Ada\n\n  Grace \nLinus\n")
    launch, run_dir = tmp_path / "launch", tmp_path / "run"
    write_run_dir(run_dir, weblog.url, params={"input": str(names), "outdir": "results"})
    proc = run(argv(launch, HELLO, run_dir, "hello_copy"), launch)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = launch / "results"
    assert sorted(str(p.relative_to(results)) for p in results.rglob("*") if p.is_file()) == [
        "hello/Ada.txt", "hello/Grace.txt", "hello/Linus.txt",
        "upper/Ada.upper.txt", "upper/Grace.upper.txt", "upper/Linus.upper.txt"]
    assert (results / "hello" / "Grace.txt").read_text() == "Hello, Grace!\n"
    assert (results / "upper" / "Grace.upper.txt").read_text() == "HELLO, GRACE!\n"
    assert not (results / "hello" / "Ada.txt").is_symlink()
    wf = weblog.events()[-1]["metadata"]["workflow"]
    assert wf["manifest"]["name"] == "nfhub/hello" and wf["stats"]["succeededCount"] == 6

    weblog.clear()
    write_run_dir(run_dir, weblog.url, params={
        "input": str(names), "outdir": str(tmp_path / "out"), "greeting": "Hi", "max_names": 2,
        "uppercase": False, "publish_dir_mode": "symlink"})
    proc = run(argv(launch, HELLO, run_dir, "hello_symlink"), launch)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    published = sorted((tmp_path / "out").rglob("*"))
    assert [p.relative_to(tmp_path / "out").as_posix() for p in published] == ["hello", "hello/Ada.txt",
                                                                               "hello/Grace.txt"]
    link = tmp_path / "out" / "hello" / "Ada.txt"
    assert link.is_symlink() and Path(os.readlink(link)).parent.parent.parent == launch / "work"
    assert link.read_text() == "Hi, Ada!\n"


def test_hello_test_profile_and_missing_input(tmp_path: Path, weblog: WeblogServer) -> None:
    launch, run_dir = tmp_path / "launch", tmp_path / "run"
    write_run_dir(run_dir, weblog.url)
    proc = run(argv(launch, HELLO, run_dir, "hello_test", "-profile", "test"), launch, scale=0.05)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (launch / "results" / "upper" / "Linus.upper.txt").read_text() == "HELLO, LINUS!\n"
    # no --input: a script error after `started`
    weblog.clear()
    proc = run(argv(launch, HELLO, run_dir, "hello_no_input"), launch)
    assert proc.returncode == 1
    assert weblog.names() == ["started", "completed", "error"]
    wf = weblog.events()[1]["metadata"]["workflow"]
    assert (wf["success"], wf["exitStatus"], wf["errorMessage"]) == (False, None, "Missing required parameter: --input")
    assert "ERROR ~ Missing required parameter: --input" in proc.stdout


def test_hello_schema_shape() -> None:
    schema = json.loads((HELLO / "nextflow_schema.json").read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    groups = [ref["$ref"].split("/")[-1] for ref in schema["allOf"]]
    assert groups == list(schema["$defs"])
    props = {k: v for g in schema["$defs"].values() for k, v in g["properties"].items()}
    assert schema["$defs"]["input_output_options"]["required"] == ["input", "outdir"]
    assert props["input"]["format"] == "file-path" and props["outdir"]["format"] == "directory-path"
    assert props["max_names"]["type"] == "integer" and props["max_names"]["minimum"] < props["max_names"]["maximum"]
    assert props["uppercase"]["type"] == "boolean" and "enum" in props["publish_dir_mode"]
    # every schema param has a config default (or null), so the fake and Nextflow see the same names
    config = (HELLO / "nextflow.config").read_text()
    for name in props:
        assert re.search(rf"^\s+{name}\s+=", config, re.MULTILINE), name
