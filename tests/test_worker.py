"""Tests for nfhub_worker: run files and argv, real child processes (stub executables written to tmp_path),
cancellation and adoption checked through /proc, Nextflow file parsers, weblog normalisation, the dispatcher and
work-dir cleaning."""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest

import nfhub_files
import nfhub_worker as w

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------

WEBLOG_URL = "http://127.0.0.1:8000/api/projects/7/nextflow-log?token=s3cr3t"
SESSION = "4f7c2c1e-2b0a-4d5e-9a43-1f0e2d3c4b5a"


def make_spec(tmp_path: Path, **overrides: object) -> w.LaunchSpec:
    launch_dir = tmp_path / "data" / "runs" / "7"
    values: dict = dict(
        run_id=42,
        nextflow="nextflow",
        source=str(tmp_path / "pipeline"),
        local=True,
        revision=None,
        profiles=(),
        config_files=(),
        params={"input": "samples.csv", "outdir": "results"},
        run_dir=launch_dir / "42",
        launch_dir=launch_dir,
        work_dir=launch_dir / "work",
        run_name="nfhub-42-abcde",
        weblog_url=WEBLOG_URL,
    )
    values.update(overrides)
    return w.LaunchSpec(**values)


def make_stub(tmp_path: Path, name: str, body: str) -> Path:
    """An executable Python script (our stand-in for nextflow) in tmp_path/bin."""
    path = tmp_path / "bin" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return path


def ready_spec(tmp_path: Path, **overrides: object) -> w.LaunchSpec:
    spec = make_spec(tmp_path, **overrides)
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    return spec


def console(spec: w.LaunchSpec) -> str:
    try:
        return (spec.run_dir / "console.log").read_text()
    except FileNotFoundError:
        return ""


async def until(cond: Callable[[], object], timeout: float = 10.0) -> None:
    with anyio.fail_after(timeout):
        while not cond():
            await anyio.sleep(0.01)


def until_sync(cond: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def proc_stat(pid: int) -> tuple[str, int, int, int] | None:
    """(state, pgrp, session, starttime) read straight from /proc, independently of the module under test."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2 :].split()
    return fields[0].decode(), int(fields[2]), int(fields[3]), int(fields[19])


def alive(pid: int) -> bool:
    st = proc_stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def group_members(pgid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = proc_stat(int(entry))
            if st and st[0] not in ("Z", "X") and pgid in (st[1], st[2]):
                found.append(int(entry))
    return found


def parse_groovy_config(text: str) -> dict:
    """Parse the small Groovy subset nfhub writes (scopes, `key = value`, `id '...'`), strictly: a wrongly escaped
    single-quoted string is an error here just as it would be for Nextflow."""

    def literal(src: str) -> object:
        if src in ("true", "false"):
            return src == "true"
        if re.fullmatch(r"\d+", src):
            return int(src)
        assert src.startswith("'") and src.endswith("'") and len(src) >= 2, src
        out, i, body = [], 0, src[1:-1]
        while i < len(body):
            c = body[i]
            if c == "\\":
                assert body[i + 1] in ("\\", "'"), f"unexpected escape in {src}"
                out.append(body[i + 1])
                i += 2
                continue
            assert c != "'", f"unescaped quote in {src}"
            out.append(c)
            i += 1
        return "".join(out)

    config: dict = {}
    stack = [config]
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("//"):
            continue
        if m := re.fullmatch(r"(\w+) \{", line):
            stack.append(stack[-1].setdefault(m.group(1), {}))
        elif line == "}":
            stack.pop()
        elif m := re.fullmatch(r"id (.+)", line):
            stack[-1].setdefault("id", []).append(literal(m.group(1)))
        elif m := re.fullmatch(r"(\w+) = (.+)", line):
            stack[-1][m.group(1)] = literal(m.group(2))
        else:
            raise AssertionError(f"unparseable config line: {raw!r}")
    assert len(stack) == 1, "unbalanced braces"
    return config


# ---------------------------------------------------------------------------------------------------------------
# run names, prepare_run
# ---------------------------------------------------------------------------------------------------------------


def test_new_run_name_is_valid_and_unique() -> None:
    names = {w.new_run_name(42) for _ in range(200)}
    assert len(names) == 200
    for name in names:
        assert re.fullmatch(r"nfhub-42-[a-z0-9]{5}", name)
        assert re.fullmatch(r"^[a-z](?:[a-z\d]|[-_](?=[a-z\d])){0,79}$", name)
    with pytest.raises(ValueError):
        w.new_run_name(-1)


def test_prepare_run_writes_files_and_exact_argv(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, params={"input": "${launchDir}/x.csv", "n": 3, "flag": True, "nested": {"a": [1, 2]}})
    argv = w.prepare_run(spec)

    run_dir = spec.run_dir
    assert argv == [
        "nextflow", "-log", str(run_dir / "nextflow.log"), "run", spec.source,
        "-params-file", str(run_dir / "params.json"), "-name", "nfhub-42-abcde",
        "-work-dir", str(spec.work_dir), "-ansi-log", "false", "-c", str(run_dir / "nfhub.config"),
    ]  # fmt: skip
    assert spec.launch_dir.is_dir() and spec.work_dir.is_dir()

    raw_params = (run_dir / "params.json").read_text()
    assert json.loads(raw_params) == spec.params
    assert "${" not in raw_params  # Nextflow would substitute it in the file's raw text

    config_path = run_dir / "nfhub.config"
    assert stat.S_IMODE(config_path.stat().st_mode) == 0o600
    config = parse_groovy_config(config_path.read_text())
    assert config["plugins"] == {"id": ["nf-weblog"]}
    assert config["weblog"] == {"enabled": True, "url": WEBLOG_URL}
    assert config["trace"] == {
        "enabled": True,
        "file": str(run_dir / "trace.txt"),
        "overwrite": True,
        "raw": True,
        "fields": "task_id,hash,native_id,name,status,exit,submit,start,complete,duration,realtime,%cpu,peak_rss,"
        "workdir,process,tag",
    }
    # no temporary files left behind
    assert sorted(p.name for p in run_dir.iterdir()) == ["nfhub.config", "params.json"]


def test_prepare_run_remote_with_everything(tmp_path: Path) -> None:
    extra = tmp_path / "site.config"
    spec = make_spec(
        tmp_path,
        source="nf-core/demo",
        local=False,
        revision="1.0.2",
        profiles=("test", "docker"),
        config_files=(str(extra),),
        resume_session=SESSION,
        weblog_basic_token="nextflow:pa'ss",
        plugins=("nf-schema@2.5.1",),
    )
    argv = w.prepare_run(spec)
    run_dir = spec.run_dir
    assert argv == [
        "nextflow", "-log", str(run_dir / "nextflow.log"), "run", "nf-core/demo",
        "-params-file", str(run_dir / "params.json"), "-name", "nfhub-42-abcde",
        "-work-dir", str(spec.work_dir), "-ansi-log", "false", "-c", str(run_dir / "nfhub.config"),
        "-c", str(extra), "-profile", "test,docker", "-r", "1.0.2", "-resume", SESSION,
    ]  # fmt: skip
    config = parse_groovy_config((run_dir / "nfhub.config").read_text())
    assert config["weblog"]["basicToken"] == "nextflow:pa'ss"
    assert config["plugins"]["id"] == ["nf-weblog", "nf-schema@2.5.1"]


def test_prepare_run_local_ignores_revision_and_keeps_pipeline_plugins(tmp_path: Path) -> None:
    pipeline = tmp_path / "pipeline"
    pipeline.mkdir()
    (pipeline / "nextflow.config").write_text(
        "params { outdir = 'results' }\n/* plugins { id 'nf-commented' } */\n"
        "plugins {\n    id 'nf-schema@2.5.1' // validation\n    id 'nf-weblog@1.2.0'\n}\n"
    )
    argv = w.prepare_run(make_spec(tmp_path, revision="main"))
    assert "-r" not in argv
    config = parse_groovy_config((tmp_path / "data/runs/7/42/nfhub.config").read_text())
    # a plugins block in a -c file replaces the pipeline's, so the pipeline's own must be repeated
    assert config["plugins"]["id"] == ["nf-weblog@1.2.0", "nf-schema@2.5.1"]


def test_prepare_run_escapes_special_characters(tmp_path: Path) -> None:
    base = tmp_path / 'it\'s a \\ "data" dir $HOME'
    url = "http://127.0.0.1:8000/api/projects/7/nextflow-log?token=a'b\\c&x=%20;~|!"
    spec = make_spec(
        base, weblog_url=url, source=str(base / "pipeline"), params={"cmd": "; rm -rf ~ $(id) `id` | nc x 1"}
    )
    w.prepare_run(spec)
    text = (spec.run_dir / "nfhub.config").read_text()
    assert "a\\'b\\\\c" in text
    config = parse_groovy_config(text)
    assert config["weblog"]["url"] == url
    assert config["trace"]["file"] == str(spec.run_dir / "trace.txt")
    assert json.loads((spec.run_dir / "params.json").read_text()) == spec.params


def test_prepare_run_creates_private_files_whatever_the_umask(tmp_path: Path) -> None:
    spec = make_spec(tmp_path)
    old = os.umask(0)
    try:
        w.prepare_run(spec)
        w.prepare_run(spec)  # rewritten in place on a relaunch
    finally:
        os.umask(old)
    for name in ("nfhub.config", "params.json"):
        assert stat.S_IMODE((spec.run_dir / name).stat().st_mode) == 0o600


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"weblog_url": WEBLOG_URL + "\nplugins { id 'evil' }"}, id="newline-in-url"),
        pytest.param({"weblog_url": "ftp://127.0.0.1/x"}, id="not-http"),
        pytest.param({"weblog_basic_token": "no-colon"}, id="basic-token"),
        pytest.param({"run_name": "Bad Name!"}, id="run-name"),
        pytest.param({"run_name": "last"}, id="run-name-last"),
        pytest.param({"resume_session": "last"}, id="resume-not-uuid"),
        pytest.param({"resume_session": "-c"}, id="resume-option"),
        pytest.param({"profiles": ("test,evil",)}, id="profile-comma"),
        pytest.param({"profiles": ("-resume",)}, id="profile-dash"),
        pytest.param({"local": False, "source": "a/b", "revision": "-x"}, id="revision-dash"),
        pytest.param({"source": "-with-tower"}, id="source-dash"),
        pytest.param({"config_files": ("/etc/x\n.config",)}, id="config-newline"),
        pytest.param({"params": {"x": float("nan")}}, id="params-nan"),
        pytest.param({"params": {"x": object()}}, id="params-object"),
        pytest.param({"params": ["not", "a", "dict"]}, id="params-list"),
        pytest.param({"plugins": ("nf-x' }",)}, id="plugin-id"),
    ],
)
def test_prepare_run_rejects_bad_input_and_writes_nothing(tmp_path: Path, overrides: dict) -> None:
    spec = make_spec(tmp_path, **overrides)
    with pytest.raises(ValueError):
        w.prepare_run(spec)
    assert not (tmp_path / "data").exists()


# ---------------------------------------------------------------------------------------------------------------
# launch
# ---------------------------------------------------------------------------------------------------------------

REPORT_STUB = """
import json, os, sys
print(json.dumps({
    "argv": sys.argv[1:],
    "cwd": os.getcwd(),
    "own_group": os.getpgrp() == os.getpid(),
    "own_session": os.getsid(0) == os.getpid(),
    "stdin": sys.stdin.read(),
    "ansi": os.environ.get("NXF_ANSI_LOG"),
    "extra": os.environ.get("STUB_EXTRA"),
    "secret": os.environ.get("NFHUB_SECRET_KEY"),
}), flush=True)
print("to stderr", file=sys.stderr, flush=True)
"""


async def test_launch_prepared_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NFHUB_SECRET_KEY", "do-not-leak")
    stub = make_stub(tmp_path, "nextflow", REPORT_STUB)
    spec = make_spec(tmp_path, nextflow=str(stub), env={"STUB_EXTRA": "yes"})
    argv = w.prepare_run(spec)
    (spec.run_dir / "console.log").write_text("earlier output\n")

    proc = await w.launch(spec, argv)
    assert proc.pid > 0 and proc.start_time > 0 and not proc.adopted
    assert await proc.wait() == 0
    assert proc.returncode == 0

    lines = console(spec).splitlines()
    assert lines[0] == "earlier output"  # appended, not truncated
    report = json.loads(lines[1])
    assert report == {
        "argv": argv[1:],
        "cwd": str(spec.launch_dir),
        "own_group": True,
        "own_session": True,
        "stdin": "",
        "ansi": "false",
        "extra": "yes",
        "secret": None,
    }
    assert "to stderr" in lines[2]


async def test_launch_finds_executable_on_path(tmp_path: Path) -> None:
    stub = make_stub(tmp_path, "nextflow", "print('hello from PATH')\n")
    spec = ready_spec(tmp_path, env={"PATH": f"{stub.parent}:{os.defpath}"})
    proc = await w.launch(spec, ["nextflow", "-v"])
    assert await proc.wait() == 0
    assert "hello from PATH" in console(spec)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param("print('done')\n", 0, id="success"),
        pytest.param("import sys\nprint('ERROR ~ boom', flush=True)\nsys.exit(1)\n", 1, id="failure"),
        pytest.param("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n", 137, id="sigkill"),
    ],
)
async def test_launch_exit_codes(tmp_path: Path, body: str, expected: int) -> None:
    stub = make_stub(tmp_path, "nextflow", body)
    spec = ready_spec(tmp_path)
    proc = await w.launch(spec, [str(stub)])
    assert await proc.wait() == expected
    assert await proc.wait() == expected  # idempotent
    assert not proc.is_running()


@pytest.mark.parametrize("kind", ["not-on-path", "missing-file", "not-executable"])
async def test_launch_error(tmp_path: Path, kind: str) -> None:
    spec = ready_spec(tmp_path, env={"PATH": str(tmp_path / "empty-bin")})
    exe = {"not-on-path": "nextflow", "missing-file": str(tmp_path / "nope" / "nextflow")}.get(kind)
    if kind == "not-executable":
        plain = tmp_path / "nextflow.txt"
        plain.write_text("not a program")
        exe = str(plain)
    assert exe is not None
    with pytest.raises(w.LaunchError) as err:
        await w.launch(spec, [exe, "run", "x"])
    assert "nextflow" in str(err.value).lower()
    # the reason is also where users read the run's output
    assert str(err.value) in w.console_tail(spec.run_dir / "console.log")


async def test_launch_error_when_launch_dir_missing(tmp_path: Path) -> None:
    stub = make_stub(tmp_path, "nextflow", "print('never')\n")
    spec = make_spec(tmp_path, launch_dir=tmp_path / "gone", run_dir=tmp_path / "run")
    spec.run_dir.mkdir()
    with pytest.raises(w.LaunchError, match="launch directory"):
        await w.launch(spec, [str(stub)])


# ---------------------------------------------------------------------------------------------------------------
# terminate, kill_group_leftovers
# ---------------------------------------------------------------------------------------------------------------

NEXTFLOW_LIKE_STUB = """
import signal, sys, time
def on_term(signum, frame):
    # like Nextflow: kill own tasks, report, exit 1 (nextflow.md §8.4)
    print("cleanup after SIGTERM", flush=True)
    sys.exit(1)
signal.signal(signal.SIGTERM, on_term)
print("ready", flush=True)
while True:
    time.sleep(1)
"""

# A leader that spawns a task ignoring SIGTERM; LEADER_IGNORES decides whether the leader ignores it as well.
SPAWNING_STUB = """
import signal, subprocess, sys, time
LEADER_IGNORES = {ignores}
child = subprocess.Popen([sys.executable, "-c",
    "import signal, time\\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\\n"
    "print('child ready', flush=True)\\n"
    "while True: time.sleep(1)\\n"])
print(f"child {{child.pid}}", flush=True)
if LEADER_IGNORES:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
print("ready", flush=True)
while True:
    time.sleep(1)
"""


async def test_terminate_lets_nextflow_clean_up(tmp_path: Path) -> None:
    spec = ready_spec(tmp_path)
    proc = await w.launch(spec, [str(make_stub(tmp_path, "nextflow", NEXTFLOW_LIKE_STUB))])
    await until(lambda: "ready" in console(spec))
    with anyio.fail_after(10):  # well before the grace period: it exits by itself
        await w.terminate(proc, grace=60)
    assert await proc.wait() == 1
    assert "cleanup after SIGTERM" in console(spec)
    assert group_members(proc.pid) == []


@pytest.mark.parametrize("leader_ignores", [True, False], ids=["leader-ignores-term", "leader-exits-on-term"])
async def test_terminate_kills_whole_group(tmp_path: Path, leader_ignores: bool) -> None:
    spec = ready_spec(tmp_path)
    stub = make_stub(tmp_path, "nextflow", SPAWNING_STUB.format(ignores=leader_ignores))
    proc = await w.launch(spec, [str(stub)])
    await until(lambda: "ready" in console(spec) and "child ready" in console(spec))
    child = int(re.search(r"^child (\d+)$", console(spec), re.M).group(1))  # type: ignore[union-attr]
    assert set(group_members(proc.pid)) == {proc.pid, child}

    with anyio.fail_after(20):
        await w.terminate(proc, grace=0.5)
    assert await proc.wait() == (137 if leader_ignores else 1)
    assert not alive(proc.pid) and not alive(child)
    assert group_members(proc.pid) == []


async def test_terminate_already_finished_is_harmless(tmp_path: Path) -> None:
    spec = ready_spec(tmp_path)
    proc = await w.launch(spec, [str(make_stub(tmp_path, "nextflow", "print('bye')\n"))])
    assert await proc.wait() == 0
    await w.terminate(proc, grace=1)
    await w.terminate(proc, grace=1)
    assert proc.returncode == 0


async def test_terminate_never_signals_a_recycled_pid(tmp_path: Path) -> None:
    # an unrelated process that happens to have the pid we remember, but another start time
    other = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE, start_new_session=True
    )
    try:
        start = proc_stat(other.pid)[3]  # type: ignore[index]
        stale = w.RunProcess(other.pid, start + 1)
        assert not stale.is_running()
        assert w.kill_group_leftovers(other.pid, start + 1) == 0
        # the realistic case: our leader (started earlier) is gone and a newer process now owns the number
        assert w.kill_group_leftovers(other.pid, start - 1) == 0
        await w.terminate(stale, grace=0.1)
        assert other.poll() is None and alive(other.pid)
    finally:
        other.stdin.close()  # type: ignore[union-attr]
        other.wait(timeout=10)


def test_kill_group_leftovers_after_leader_exit(tmp_path: Path) -> None:
    # the leader starts a SIGTERM-ignoring task in its group and exits; the task is left behind
    script = (
        "import subprocess, sys\n"
        "c = subprocess.Popen([sys.executable, '-c', 'import signal, time; signal.signal(signal.SIGTERM, "
        "signal.SIG_IGN); print(1, flush=True)\\nwhile True: time.sleep(1)'], stdout=subprocess.PIPE)\n"
        "c.stdout.readline()\n"
        "print(c.pid, flush=True)\n"
    )
    leader = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, start_new_session=True)
    out, _ = leader.communicate(timeout=20)
    child = int(out)
    assert alive(child) and group_members(leader.pid) == [child]
    assert w.kill_group_leftovers(leader.pid) == 1
    until_sync(lambda: not alive(child))
    assert w.kill_group_leftovers(leader.pid) == 0


def test_kill_group_leftovers_refuses_own_group() -> None:
    assert w.kill_group_leftovers(os.getpgrp()) == 0
    assert w.kill_group_leftovers(os.getsid(0)) == 0
    assert w.kill_group_leftovers(1) == 0


# ---------------------------------------------------------------------------------------------------------------
# adopt
# ---------------------------------------------------------------------------------------------------------------

WAITING_STUB = """
import signal, sys
signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
print("ready", flush=True)
sys.stdin.read()   # runs until the test closes its stdin
"""


def start_detached(tmp_path: Path, run_name: str) -> subprocess.Popen[bytes]:
    stub = make_stub(tmp_path, "nextflow", WAITING_STUB)
    popen = subprocess.Popen(
        [str(stub), "run", "x", "-name", run_name],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    assert popen.stdout is not None and popen.stdout.readline() == b"ready\n"
    return popen


async def test_adopt_after_restart_and_wait(tmp_path: Path) -> None:
    popen = start_detached(tmp_path, "nfhub-9-zzzzz")
    try:
        start = w.process_start_time(popen.pid)
        assert start == proc_stat(popen.pid)[3]  # type: ignore[index]
        assert w.adopt(popen.pid, start + 1, "nfhub-9-zzzzz") is None  # type: ignore[operator]
        assert w.adopt(popen.pid, start, "nfhub-9-other") is None  # type: ignore[arg-type]
        assert w.adopt(popen.pid, start, "nfhub-9") is None  # type: ignore[arg-type]
        proc = w.adopt(popen.pid, start, "nfhub-9-zzzzz")  # type: ignore[arg-type]
        assert proc is not None and proc.adopted and proc.is_running()

        result: list[int | None] = []

        async def waiter() -> None:
            result.append(await proc.wait())

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            assert result == []  # still running
            popen.stdin.close()  # type: ignore[union-attr]
            with anyio.fail_after(10):
                await until(lambda: result)
        assert result == [None]  # not our child: exit code unknown
        assert not proc.is_running()
    finally:
        if popen.stdin and not popen.stdin.closed:
            popen.stdin.close()
        popen.wait(timeout=10)
        popen.stdout.close()  # type: ignore[union-attr]
    assert w.adopt(popen.pid, start, "nfhub-9-zzzzz") is None  # type: ignore[arg-type]


async def test_terminate_adopted_process(tmp_path: Path) -> None:
    popen = start_detached(tmp_path, "nfhub-10-yyyyy")
    try:
        proc = w.adopt(popen.pid, w.process_start_time(popen.pid), "nfhub-10-yyyyy")  # type: ignore[arg-type]
        assert proc is not None
        with anyio.fail_after(10):
            await w.terminate(proc, grace=5)
        assert popen.wait(timeout=10) == 1  # it got SIGTERM and exited by itself
        assert group_members(popen.pid) == []
    finally:
        popen.stdin.close()  # type: ignore[union-attr]
        popen.stdout.close()  # type: ignore[union-attr]
        if popen.poll() is None:
            popen.kill()
            popen.wait()


def test_adopt_missing_pid() -> None:
    assert w.adopt(2**22 + 12345, 1, "nfhub-1-aaaaa") is None


# ---------------------------------------------------------------------------------------------------------------
# history, trace, console
# ---------------------------------------------------------------------------------------------------------------

HISTORY = (
    "2024-05-02 10:11:12\t1m 3s\tnfhub-1-abcde\tOK\t7a3f1c2b9d0e4f5a6b7c8d9e0f1a2b3c\t"
    "4f7c2c1e-2b0a-4d5e-9a43-1f0e2d3c4b5a\tnextflow run /data/pipelines/hello -name nfhub-1-abcde\n"
    "2024-05-02 11:00:00\t2.5s\tnfhub-2-fghij\tERR\t7a3f1c2b9d0e4f5a6b7c8d9e0f1a2b3c\t"
    "0b9c1d2e-3f4a-4b5c-8d6e-7f8091a2b3c4\tnextflow run /data/pipelines/hello -name nfhub-2-fghij\n"
    "\n"
    "garbage line\n"
    "2024-05-02 12:00:00\t-\tnfhub-3-klmno\t-\t7a3f1c2b9d0e4f5a6b7c8d9e0f1a2b3c\t"
    "4f7c2c1e-2b0a-4d5e-9a43-1f0e2d3c4b5a\tnextflow run /data/pipelines/hello -name nfhub-3-klmno "
    "-resume 4f7c2c1e-2b0a-4d5e-9a43-1f0e2d3c4b5a\n"
)


def test_read_history(tmp_path: Path) -> None:
    assert w.read_history(tmp_path) == []
    (tmp_path / ".nextflow").mkdir()
    (tmp_path / ".nextflow" / "history").write_text(HISTORY)
    entries = w.read_history(tmp_path)
    assert [(e["run_name"], e["status"], e["duration_ms"]) for e in entries] == [
        ("nfhub-1-abcde", "OK", 63000),
        ("nfhub-2-fghij", "ERR", 2500),
        ("nfhub-3-klmno", "-", None),
    ]
    first = entries[0]
    assert first["timestamp"] == "2024-05-02 10:11:12"
    assert first["timestamp_ms"] == round(datetime(2024, 5, 2, 10, 11, 12).timestamp() * 1000)
    assert first["duration"] == "1m 3s"
    assert first["revision"] == "7a3f1c2b9d0e4f5a6b7c8d9e0f1a2b3c"
    assert first["session_id"] == SESSION
    assert first["command"] == "nextflow run /data/pipelines/hello -name nfhub-1-abcde"
    assert w.find_history(tmp_path, "nfhub-2-fghij")["status"] == "ERR"  # type: ignore[index]
    assert w.find_history(tmp_path, "nfhub-4-nope") is None


HEADER = "task_id\thash\tnative_id\tname\tstatus\texit\tsubmit\tstart\tcomplete\tduration\trealtime\t%cpu\tpeak_rss\t"
HEADER += "workdir\tprocess\ttag\n"
RAW_TRACE = HEADER + (
    "1\t3a/5f2c1b\t12345\tFASTQC (sample1)\tCOMPLETED\t0\t1714644672345\t1714644672400\t1714644675600\t3255\t3100\t"
    "98.5\t52428800\t/data/runs/7/work/3a/5f2c1b9e0d4c3b2a1f0e9d8c7b6a5f4e\tNFCORE_DEMO:FASTQC\tsample1\n"
    "2\t4c/77de10\t-\tTRIM (sample1)\tCACHED\t0\t1714644000000\t1714644000100\t1714644001000\t1000\t900\t"
    "50.0\t1048576\t/data/runs/7/work/4c/77de10aa\tNFCORE_DEMO:TRIM\tsample1\n"
    "3\t9e/01ab44\t12399\tALIGN (sample2)\tFAILED\t1\t1714644672345\t1714644672400\t1714644673400\t1055\t990\t"
    "12.3\t2048\t/data/runs/7/work/9e/01ab44bb\tNFCORE_DEMO:ALIGN\tsample2\n"
    "4\t1f/2233aa\t12400\tALIGN (sample3)\tABORTED\t-\t1714644672345\t1714644672400\t-\t-\t-\t-\t-\t"
    "/data/runs/7/work/1f/2233aacc\tNFCORE_DEMO:ALIGN\t-\n"
)
# real Nextflow's default, formatted trace file (nextflow.md §7): other columns, local dates, units
FORMATTED_TRACE = (
    "task_id\thash\tnative_id\tname\tstatus\texit\tsubmit\tduration\trealtime\t%cpu\tpeak_rss\tpeak_vmem\trchar\t"
    "wchar\n"
    "1\t3a/5f2c1b\t12345\tFASTQC (sample1)\tCOMPLETED\t0\t2024-05-02 10:11:12.345\t3.3s\t3.1s\t98.5%\t50 MB\t"
    "1.2 GB\t12.3 MB\t1 KB\n"
    "2\t4c/77de10\t12346\tTRIM (sample1)\tCACHED\t0\t2024-05-02 10:00:00.000\t1m 4s\t1h 2m\t50.0%\t0\t0\t0\t0\n"
    "3\t9e/01ab44\t12399\tALIGN (sample2)\tFAILED\t137\t2024-05-02 10:11:13.000\t1d 2h 3m 4s\t850ms\t-\t512 B\t"
    "-\t-\t-\n"
    "4\t1f/2233aa\t-\tALIGN (sample3)\tABORTED\t-\t2024-05-02 10:11:14.500\t-\t-\t-\t-\t-\t-\t-\n"
)


def test_parse_trace_raw(tmp_path: Path) -> None:
    path = tmp_path / "trace.txt"
    path.write_text(RAW_TRACE)
    tasks = w.parse_trace(path)
    assert [t["task_id"] for t in tasks] == [1, 2, 3, 4]
    assert tasks[0] == {
        "task_id": 1,
        "hash": "3a/5f2c1b",
        "name": "FASTQC (sample1)",
        "process": "NFCORE_DEMO:FASTQC",
        "tag": "sample1",
        "status": "COMPLETED",
        "exit": 0,
        "submit": 1714644672345,
        "start": 1714644672400,
        "complete": 1714644675600,
        "duration": 3255,
        "realtime": 3100,
        "cpu_percent": 98.5,
        "peak_rss": 52428800,
        "workdir": "/data/runs/7/work/3a/5f2c1b9e0d4c3b2a1f0e9d8c7b6a5f4e",
        "native_id": "12345",
        "attempt": None,
        "error_action": None,
    }
    assert tasks[1]["status"] == "CACHED" and tasks[1]["native_id"] is None
    assert tasks[2]["exit"] == 1 and tasks[2]["status"] == "FAILED"
    aborted = tasks[3]
    assert aborted["status"] == "ABORTED" and aborted["exit"] is None and aborted["complete"] is None
    assert aborted["duration"] is None and aborted["cpu_percent"] is None and aborted["tag"] is None
    assert set(aborted) == set(tasks[0])


def test_parse_trace_formatted(tmp_path: Path) -> None:
    path = tmp_path / "trace.txt"
    path.write_text(FORMATTED_TRACE)
    tasks = w.parse_trace(path)
    local_ms = lambda *a: round(datetime(*a).timestamp() * 1000)  # noqa: E731
    first, cached, failed, aborted = tasks
    assert first["submit"] == local_ms(2024, 5, 2, 10, 11, 12, 345000)
    assert (first["duration"], first["realtime"]) == (3300, 3100)
    assert first["cpu_percent"] == 98.5
    assert first["peak_rss"] == 50 * 1024**2
    assert first["start"] is None and first["workdir"] is None  # not in this file
    assert cached["status"] == "CACHED" and cached["peak_rss"] == 0
    assert (cached["duration"], cached["realtime"]) == (64000, 3720000)
    assert failed["exit"] == 137
    assert failed["duration"] == ((26 * 60 + 3) * 60 + 4) * 1000
    assert (failed["realtime"], failed["peak_rss"], failed["cpu_percent"]) == (850, 512, None)
    assert aborted["exit"] is None and aborted["native_id"] is None and aborted["duration"] is None
    assert aborted["submit"] == local_ms(2024, 5, 2, 10, 11, 14, 500000)


def test_parse_trace_missing_or_empty(tmp_path: Path) -> None:
    assert w.parse_trace(tmp_path / "missing.txt") == []
    (tmp_path / "empty.txt").write_text("")
    assert w.parse_trace(tmp_path / "empty.txt") == []
    (tmp_path / "header.txt").write_text(HEADER)
    assert w.parse_trace(tmp_path / "header.txt") == []
    (tmp_path / "dir").mkdir()
    assert w.parse_trace(tmp_path / "dir") == []


def test_console_tail(tmp_path: Path) -> None:
    path = tmp_path / "console.log"
    assert w.console_tail(path) == ""
    body = "".join(f"\x1b[32mline {i}\x1b[0m\r\n" for i in range(1000)) + "\n\n"
    path.write_text(body)
    assert w.console_tail(path, lines=3) == "line 997\nline 998\nline 999"
    tail = w.console_tail(path, lines=1000, max_bytes=200)
    assert tail.endswith("line 999") and all(line.startswith("line ") for line in tail.splitlines())


def test_nextflow_version(tmp_path: Path) -> None:
    good = make_stub(tmp_path, "nextflow", "print('nextflow version 25.10.2.10555')\n")
    assert w.nextflow_version(str(good)) == "25.10.2.10555"
    odd = make_stub(tmp_path, "other", "print('something else')\n")
    assert w.nextflow_version(str(odd)) is None
    assert w.nextflow_version(str(tmp_path / "missing")) is None


def test_nextflow_version_timeout_kills_it(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    hang = make_stub(
        tmp_path, "hang", f"import os, time\nopen({str(pidfile)!r}, 'w').write(str(os.getpid()))\ntime.sleep(600)\n"
    )
    started = time.monotonic()
    assert w.nextflow_version(str(hang), timeout=1.0) is None
    assert time.monotonic() - started < 10
    assert not alive(int(pidfile.read_text()))


# ---------------------------------------------------------------------------------------------------------------
# weblog payloads
# ---------------------------------------------------------------------------------------------------------------

WORKDIR = "/data/runs/7/work/3a/5f2c1b9e0d4c3b2a1f0e9d8c7b6a5f4e"
SUBMITTED = {
    "task_id": 1, "status": "SUBMITTED", "hash": "3a/5f2c1b", "name": "NFCORE_DEMO:DEMO:FASTQC (sample1)",
    "exit": 2147483647, "submit": 1714644672345, "start": 0, "process": "NFCORE_DEMO:DEMO:FASTQC",
    "tag": "sample1", "module": [], "container": None, "attempt": 1, "script": "\n    fastqc --threads 1 s1.fq\n",
    "scratch": None, "workdir": WORKDIR, "queue": None, "cpus": 1, "memory": 6442450944, "disk": None,
    "time": 14400000, "env": "PATH=/bin\n", "native_id": 12345,
}  # fmt: skip
COMPLETED = {
    **SUBMITTED, "status": "COMPLETED", "exit": 0, "start": 1714644672400, "error_action": None,
    "complete": 1714644675600, "duration": 3255, "realtime": 3100, "%cpu": 98.5, "cpu_model": "AMD EPYC",
    "rchar": 1234567, "wchar": 2345, "syscr": 120, "syscw": 12, "read_bytes": 4096, "write_bytes": 8192,
    "%mem": 0.3, "vmem": 3456789012, "rss": 41943040, "peak_vmem": 3456789012, "peak_rss": 52428800,
    "vol_ctxt": 50, "inv_ctxt": 3,
}  # fmt: skip


def test_task_from_weblog_submitted() -> None:
    task = w.task_from_weblog(SUBMITTED)
    assert task == {
        "task_id": 1,
        "hash": "3a/5f2c1b",
        "name": "NFCORE_DEMO:DEMO:FASTQC (sample1)",
        "process": "NFCORE_DEMO:DEMO:FASTQC",
        "tag": "sample1",
        "status": "SUBMITTED",
        "exit": None,
        "submit": 1714644672345,
        "start": None,
        "complete": None,
        "duration": None,
        "realtime": None,
        "cpu_percent": None,
        "peak_rss": None,
        "workdir": WORKDIR,
        "native_id": "12345",
        "attempt": 1,
        "error_action": None,
    }


def test_task_from_weblog_completed_failed_aborted() -> None:
    done = w.task_from_weblog(COMPLETED)
    assert (done["status"], done["exit"], done["start"], done["complete"]) == (
        "COMPLETED",
        0,
        1714644672400,
        1714644675600,
    )
    assert (done["duration"], done["realtime"], done["cpu_percent"], done["peak_rss"]) == (3255, 3100, 98.5, 52428800)

    failed = w.task_from_weblog({**COMPLETED, "status": "FAILED", "exit": 1, "error_action": "TERMINATE"})
    assert (failed["status"], failed["exit"], failed["error_action"]) == ("FAILED", 1, "TERMINATE")

    # killed by Nextflow after another task failed: no completion fields, exit still Integer.MAX_VALUE
    aborted_payload = {**SUBMITTED, "task_id": 2, "status": "ABORTED", "start": 1714644672400, "tag": None}
    aborted = w.task_from_weblog(aborted_payload)
    assert (aborted["status"], aborted["exit"], aborted["complete"], aborted["duration"]) == (
        "ABORTED",
        None,
        None,
        None,
    )
    assert aborted["tag"] is None and aborted["start"] == 1714644672400

    grid = w.task_from_weblog({**SUBMITTED, "native_id": "slurm-991"})
    assert grid["native_id"] == "slurm-991"
    with pytest.raises(ValueError):
        w.task_from_weblog({"status": "SUBMITTED"})


def offset_datetime(**values: object) -> dict:
    """java.time.OffsetDateTime the way Groovy's JsonGenerator serialises it (nextflow#2271)."""
    obj = {
        "month": "AUGUST",
        "offset": {
            "rules": {"transitions": [], "fixedOffset": True, "transitionRules": []},
            "totalSeconds": 7200,
            "id": "+02:00",
            "availableZoneIds": ["Europe/Zurich", "UTC"],
        },
        "second": 25,
        "hour": 11,
        "nano": 219341000,
        "year": 2021,
        "dayOfMonth": 25,
        "minute": 35,
        "monthValue": 8,
        "dayOfWeek": "WEDNESDAY",
        "dayOfYear": 237,
    }
    obj.update(values)
    return obj


STATS = {
    "succeededCount": 3, "succeedCount": 3, "failedCount": 1, "ignoredCount": 0, "cachedCount": 2,
    "retriesCount": 0, "abortedCount": 1, "pendingCount": 0, "submittedCount": 0, "runningCount": 0,
    "effectiveFailedCount": 1, "totalCount": 7, "succeedCountFmt": "3", "cachedCountFmt": "2",
    "failedCountFmt": "1", "ignoredCountFmt": "0", "succeedPct": 50.0, "cachedPct": 33.33, "ignoredPct": 0.0,
    "effectiveFailedPct": 16.67, "succeedDuration": 9300, "failedDuration": 990, "cachedDuration": 1900,
    "computeTimeFmt": "(a few seconds)", "loadCpus": 0, "loadMemory": 0, "loadMemoryFmt": "0", "peakRunning": 2,
    "peakCpus": 2, "peakMemory": 0, "peakMemoryFmt": "0", "progressLength": 2, "changeTimestamp": 1629884125219,
    "processes": [
        {"index": 0, "name": "FASTQC", "hash": "3a/5f2c1b", "workDir": ["/w"], "taskName": "FASTQC (s1)",
         "pending": 0, "submitted": 0, "running": 0, "succeeded": 2, "cached": 1, "failed": 0, "aborted": 0,
         "stored": 0, "ignored": 0, "retries": 0, "terminated": True, "errored": False, "loadCpus": 0,
         "loadMemory": 0, "peakRunning": 2, "peakCpus": 2, "peakMemory": 0, "totalCount": 3, "completedCount": 3},
    ],
}  # fmt: skip


def completed_metadata(**workflow: object) -> dict:
    wf = {
        "runName": "nfhub-42-abcde",
        "sessionId": SESSION,
        "commandLine": "nextflow -log /data/runs/7/42/nextflow.log run /data/pipelines/hello -name nfhub-42-abcde",
        "scriptId": "7a3f1c2b9d0e4f5a6b7c8d9e0f1a2b3c",
        "projectName": "hello",
        "repository": None,
        "commitId": None,
        "revision": None,
        "launchDir": "/data/runs/7",
        "workDir": "/data/runs/7/work",
        "profile": "standard",
        "configFiles": ["/data/pipelines/hello/nextflow.config", "/data/runs/7/42/nfhub.config"],
        "container": {},
        "nextflow": {"version": "25.10.2", "build": 10555, "timestamp": "2025-11-28T18:42:00Z", "enable": {"dsl": 2}},
        "start": offset_datetime(),
        "complete": offset_datetime(second=30, nano=0),
        "duration": 4781,
        "success": True,
        "exitStatus": 0,
        "errorMessage": None,
        "errorReport": None,
        "resume": True,
        "stubRun": False,
        "stats": STATS,
    }
    wf.update(workflow)
    return {"parameters": {"input": "samples.csv", "outdir": "results"}, "workflow": wf}


def test_workflow_summary_completed() -> None:
    summary = w.workflow_summary(completed_metadata())
    utc_ms = lambda *a: round(datetime(*a, tzinfo=UTC).timestamp() * 1000)  # noqa: E731
    assert summary["start"] == utc_ms(2021, 8, 25, 9, 35, 25, 219341)
    assert summary["complete"] == utc_ms(2021, 8, 25, 9, 35, 30)
    assert summary["session_id"] == SESSION and summary["run_name"] == "nfhub-42-abcde"
    assert (summary["success"], summary["exit_status"], summary["error_message"]) == (True, 0, None)
    assert (summary["resume"], summary["duration"], summary["nextflow_version"]) == (True, 4781, "25.10.2")
    stats = summary["stats"]
    assert {k: stats[k] for k in ("succeeded", "failed", "ignored", "cached", "aborted", "effective_failed")} == {
        "succeeded": 3,
        "failed": 1,
        "ignored": 0,
        "cached": 2,
        "aborted": 1,
        "effective_failed": 1,
    }
    assert stats["processes"][0]["name"] == "FASTQC" and stats["processes"][0]["cached"] == 1


def test_workflow_summary_failures() -> None:
    sigterm = w.workflow_summary(
        completed_metadata(success=False, exitStatus=None, errorMessage="SIGTERM", errorReport="SIGTERM")
    )
    assert (sigterm["success"], sigterm["exit_status"], sigterm["error_message"]) == (False, None, "SIGTERM")

    report = "Error executing process > 'ALIGN (sample1)'\n\nCaused by:\n  Process `ALIGN (sample1)` terminated"
    task_failed = w.workflow_summary(
        completed_metadata(success=False, exitStatus=137, errorMessage="Killed", errorReport=report)
    )
    assert (task_failed["exit_status"], task_failed["error_message"], task_failed["error_report"]) == (
        137,
        "Killed",
        report,
    )


def test_workflow_summary_started_and_odd_shapes() -> None:
    started = w.workflow_summary(
        completed_metadata(complete=None, duration=None, success=False, exitStatus=None, resume=False, stats={})
    )
    assert started["complete"] is None and started["duration"] is None and started["exit_status"] is None
    assert started["stats"]["succeeded"] == 0 and started["stats"]["processes"] == []

    empty = w.workflow_summary({})
    assert empty["session_id"] is None and empty["success"] is None and empty["stats"]["cached"] == 0

    legacy = w.workflow_summary(
        {"workflow": {"start": "2019-07-01T10:00:00Z", "stats": {"succeedCount": 4}, "success": True}}
    )
    assert legacy["start"] == round(datetime(2019, 7, 1, 10, tzinfo=UTC).timestamp() * 1000)
    assert legacy["stats"]["succeeded"] == 4

    # a broken date object or junk values must not raise
    odd = w.workflow_summary({"workflow": {"start": {"year": "x"}, "stats": {"cachedCount": "n/a"}, "duration": "?"}})
    assert odd["start"] is None and odd["stats"]["cached"] == 0 and odd["duration"] is None
    assert w.workflow_summary(completed_metadata()["workflow"])["run_name"] == "nfhub-42-abcde"


# ---------------------------------------------------------------------------------------------------------------
# work directories
# ---------------------------------------------------------------------------------------------------------------


def write(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    return path


def test_work_dir_size(tmp_path: Path) -> None:
    work = tmp_path / "work"
    write(work / "ab" / "cdef" / ".command.out", 100)
    big = write(work / "ab" / "cdef" / "big", 1000)
    os.link(big, work / "ab" / "cdef" / "big.hardlink")
    write(tmp_path / "outside" / "huge", 5000)
    (work / "ab" / "cdef" / "link").symlink_to(tmp_path / "outside")
    assert nfhub_files.work_dir_size(work) == 1100
    assert nfhub_files.work_dir_size(tmp_path / "missing") == 0


def test_clean_work_dir(tmp_path: Path) -> None:
    work = tmp_path / "runs" / "7" / "work"
    victim = tmp_path / "victim"
    write(victim / "precious", 77)
    project = tmp_path / "projects" / "7" / "results"
    project.mkdir(parents=True)

    t1 = work / "ab" / "cdef0123"
    write(t1 / ".command.sh", 100)
    write(t1 / "sub" / "out.bam", 200)
    t2 = work / "cd" / "ef456789"
    write(t2 / ".command.log", 50)
    (t2 / "input.fq").symlink_to(victim / "precious")  # staged input: a link, never followed
    (t2 / "inputs").symlink_to(victim)
    t3 = work / "ef" / "01234567"  # a published (symlinked) output lives here: keep it
    write(t3 / "report.html", 300)
    (project / "report.html").symlink_to(t3 / "report.html")
    t4 = work / "aa" / "bbbbbbbb"  # the task dir itself is a symlink out of the work dir
    t4.parent.mkdir(parents=True)
    t4.symlink_to(victim)
    t5 = work / "ff" / "99999999"  # output published as a hard link: removing the dir frees only the rest
    write(t5 / ".command.err", 10)
    os.link(write(t5 / "counts.tsv", 1000), project / "counts.tsv")

    freed = nfhub_files.clean_work_dir(
        work,
        [str(t1), str(t2), str(t3), str(t4), str(t5), str(victim), str(work / ".." / ".." / ".." / "victim"),
         str(work), "relative/dir", "s3://bucket/work/ab/cd", str(work / "zz" / "missing")],
        keep=[project],
    )  # fmt: skip
    assert freed == 100 + 200 + 50 + 10
    assert not t1.exists() and not t2.exists() and not t5.exists()
    assert not (work / "ab").exists()  # emptied two-letter level removed too
    assert (t3 / "report.html").read_bytes() == b"x" * 300
    assert (project / "report.html").resolve() == (t3 / "report.html").resolve()
    assert t4.is_symlink() and (victim / "precious").read_bytes() == b"x" * 77
    assert (project / "counts.tsv").stat().st_size == 1000
    assert work.is_dir()


def test_clean_work_dir_through_symlinked_parent(tmp_path: Path) -> None:
    work = tmp_path / "work"
    outside = tmp_path / "outside"
    write(outside / "deadbeef" / "data", 10)
    work.mkdir()
    (work / "ab").symlink_to(outside)  # work/ab/deadbeef resolves outside the work dir
    assert nfhub_files.clean_work_dir(work, [str(work / "ab" / "deadbeef")], keep=[]) == 0
    assert (outside / "deadbeef" / "data").exists()
    assert nfhub_files.clean_work_dir(tmp_path / "no-work", [str(work / "x")], keep=[]) == 0


# ---------------------------------------------------------------------------------------------------------------
# Dispatcher
# ---------------------------------------------------------------------------------------------------------------


async def test_dispatcher_fifo_and_concurrency_limit() -> None:
    gates = {i: anyio.Event() for i in range(1, 7)}
    started: list[int] = []
    peak = 0

    async def start(run_id: int) -> None:
        nonlocal peak
        started.append(run_id)
        peak = max(peak, len(dispatcher.active()))
        await gates[run_id].wait()

    dispatcher = w.Dispatcher(2, start)
    for run_id in (1, 2, 3, 4, 5):
        dispatcher.submit(run_id)
    dispatcher.submit(3)  # duplicate: ignored
    async with anyio.create_task_group() as tg:
        await tg.start(dispatcher.serve)
        await until(lambda: len(started) == 2)
        await anyio.wait_all_tasks_blocked()
        assert started == [1, 2] and dispatcher.active() == {1, 2}
        assert dispatcher.queued() == [3, 4, 5] and dispatcher.is_queued(3)

        gates[2].set()
        await until(lambda: len(started) == 3)
        assert started == [1, 2, 3] and dispatcher.active() == {1, 3}

        dispatcher.submit(6)  # while serving
        for run_id in (1, 3, 4, 5, 6):
            gates[run_id].set()
        await until(lambda: not dispatcher.active() and not dispatcher.queued())
        assert started == [1, 2, 3, 4, 5, 6] and peak <= 2
        tg.cancel_scope.cancel()


async def test_dispatcher_drop() -> None:
    release = anyio.Event()
    started: list[int] = []

    async def start(run_id: int) -> None:
        started.append(run_id)
        await release.wait()

    dispatcher = w.Dispatcher(1, start)
    async with anyio.create_task_group() as tg:
        await tg.start(dispatcher.serve)
        for run_id in (1, 2, 3):
            dispatcher.submit(run_id)
        await until(lambda: started == [1])
        assert dispatcher.drop(2) is True
        assert dispatcher.drop(2) is False  # no longer queued
        assert dispatcher.drop(1) is False  # running, not queued: that's terminate's job
        assert not dispatcher.is_queued(2)
        release.set()
        await until(lambda: not dispatcher.active() and not dispatcher.queued())
        assert started == [1, 3]
        tg.cancel_scope.cancel()


async def test_dispatcher_survives_failing_start(caplog: pytest.LogCaptureFixture) -> None:
    done: list[int] = []

    async def start(run_id: int) -> None:
        if run_id == 1:
            raise RuntimeError("database on fire")
        done.append(run_id)

    dispatcher = w.Dispatcher(1, start)
    with caplog.at_level(logging.ERROR, logger="nfhub.worker"):
        async with anyio.create_task_group() as tg:
            await tg.start(dispatcher.serve)
            dispatcher.submit(1)
            dispatcher.submit(2)
            await until(lambda: done == [2])
            dispatcher.submit(3)
            await until(lambda: done == [2, 3])
            assert not dispatcher.active()
            tg.cancel_scope.cancel()
    assert "database on fire" in caplog.text


def test_dispatcher_rejects_bad_limit() -> None:
    async def start(run_id: int) -> None:
        pass

    for bad in (0, -1, True):
        with pytest.raises(ValueError):
            w.Dispatcher(bad, start)  # type: ignore[arg-type]


def test_numbers_too_large_for_an_int_convert_to_nothing(tmp_path: Path) -> None:
    """A trace file with an absurd value ('1e999') gives no value for that column, not an exception that would
    stop the run's bookkeeping."""
    trace = tmp_path / "trace.txt"
    trace.write_text("task_id\tstatus\tduration\tpeak_rss\tsubmit\texit\n1\tCOMPLETED\t1e999\t1e999\t1e999\t1e999\n")
    (task,) = w.parse_trace(trace)
    assert (task["task_id"], task["duration"], task["peak_rss"], task["submit"], task["exit"]) == (
        1, None, None, None, None)
