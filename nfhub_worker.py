"""Everything nfhub knows about Nextflow: building the command and the generated run config, launching and
supervising ``nextflow run`` in its own session, cancelling it without leaving processes behind, adopting a run
that outlived an nfhub restart, reading ``.nextflow/history`` and trace files, normalising weblog payloads, cleaning
work directories, and the dispatcher that starts queued runs.

It receives plain values and callbacks and never imports Starlette or ``nfhub``. Facts about Nextflow that the code
relies on are in docs/nextflow.md (section numbers are cited as "nextflow.md §N").
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import secrets
import shutil
import signal
import subprocess
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, NamedTuple

import anyio
import anyio.abc

log = logging.getLogger("nfhub.worker")

# nextflow.md §8.1: CmdRun's run-name rule (case-insensitive there; we only ever generate lower case).
RUN_NAME_RE = re.compile(r"^[a-z](?:[a-z\d]|[-_](?=[a-z\d])){0,79}$", re.IGNORECASE)
# The launcher only takes the token after -resume as a session id if it is `last` or a UUID (nextflow.md §8.1);
# anything else would silently become a script argument.
_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.IGNORECASE)
_PROFILE_RE = re.compile(r"^[A-Za-z0-9_.+@:/-]+$")
_PLUGIN_RE = re.compile(r"^[A-Za-z0-9_.-]+(?:@[A-Za-z0-9_.+-]+)?$")

TRACE_FIELDS = (
    "task_id,hash,native_id,name,status,exit,submit,start,complete,duration,realtime,%cpu,peak_rss,workdir,process,tag"
)
WEBLOG_PLUGIN = "nf-weblog"
INT_MAX = 2147483647  # Nextflow's "no exit status yet" (Integer.MAX_VALUE), nextflow.md §5
_KILL_WAIT = 10.0  # seconds to wait for the kernel to finish a SIGKILL before giving up on reaping
_SWEEP_TIME = 5.0  # seconds spent re-killing stragglers that fork while being killed


class LaunchError(Exception):
    """Nextflow could not be started at all (missing executable, missing launch dir, ...)."""


@dataclass(frozen=True)
class LaunchSpec:
    run_id: int
    nextflow: str
    source: str
    local: bool
    revision: str | None
    profiles: tuple[str, ...]
    config_files: tuple[str, ...]
    params: dict
    run_dir: Path
    launch_dir: Path
    work_dir: Path
    run_name: str
    weblog_url: str
    weblog_basic_token: str | None = None
    resume_session: str | None = None
    env: dict[str, str] | None = None
    # A `plugins {}` block in a -c file *replaces* the pipeline's own block (nextflow#6754, #7350), so the
    # pipeline's plugins (e.g. nf-schema) must be declared again beside nf-weblog. Local pipelines are scanned
    # automatically (pipeline_plugins); list extra ones here, e.g. for remote pipelines.
    plugins: tuple[str, ...] = ()


# ---------------------------------------------------------------------------------------------------------------
# Command line and generated files
# ---------------------------------------------------------------------------------------------------------------


def new_run_name(run_id: int) -> str:
    """A fresh Nextflow run name, e.g. ``nfhub-42-k3j9x``: valid for ``-name`` and unique per launch."""
    if isinstance(run_id, bool) or not isinstance(run_id, int) or run_id < 0:
        raise ValueError(f"run id must be a non-negative integer, not {run_id!r}")
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return f"nfhub-{run_id}-" + "".join(secrets.choice(alphabet) for _ in range(5))


def groovy_string(value: str) -> str:
    """``value`` as a single-quoted Groovy literal (no interpolation); control characters are refused."""
    if not isinstance(value, str):
        raise ValueError(f"expected a string, not {type(value).__name__}")
    bad = next((c for c in value if ord(c) < 0x20 or ord(c) == 0x7F), None)
    if bad is not None:
        raise ValueError(f"control character {bad!r} not allowed in a Nextflow config value: {value!r}")
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def pipeline_plugins(pipeline_dir: Path) -> list[str]:
    """Plugin ids declared in ``plugins { id '...' }`` blocks of a local pipeline's ``nextflow.config``.

    Best effort: included config files and profiles are not followed.
    """
    try:
        text = (Path(pipeline_dir) / "nextflow.config").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.DOTALL)
    found: list[str] = []
    for block in re.finditer(r"(?m)^\s*plugins\s*\{(.*?)\}", text, flags=re.DOTALL):
        for line in block.group(1).splitlines():
            m = re.match(r"\s*id\s*\(?\s*(['\"])([^'\"]+)\1", line)
            if m and _PLUGIN_RE.match(m.group(2)) and m.group(2) not in found:
                found.append(m.group(2))
    return found


def _check_arg(what: str, value: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, not {type(value).__name__}")
    if not value:
        raise ValueError(f"{what} must not be empty")
    if "\x00" in value or "\n" in value or "\r" in value:
        raise ValueError(f"{what} must not contain NUL or newline characters: {value!r}")
    if value.startswith("-"):
        # argv is never a shell, but Nextflow would still parse a leading dash as an option
        raise ValueError(f"{what} must not start with '-': {value!r}")
    return value


def _abs(path: Path | str) -> Path:
    return Path(os.path.abspath(os.fspath(path)))


def params_json(params: Any) -> str:
    """The text of the ``-params-file``: JSON in which ``${`` cannot be substituted by Nextflow.

    Nextflow replaces ``${name}`` in the raw text of a params file before parsing it (baseDir, projectDir,
    launchDir, ...; an unknown name aborts in strict mode), so a user's ``${launchDir}`` would become a server path.
    A backslash (``\\${``) does not help: the regex runs on the raw text, where the backslash is just another JSON
    character. Every ``$`` is therefore written as the JSON escape ``\\u0024``, which the regex cannot match and the
    JSON parser turns back into ``$``, so the literal survives. ``$`` appears only inside JSON strings, so replacing
    it in the serialised text is safe. ASCII only: the JVM may read the file with a non-UTF-8 default charset.
    """
    if not isinstance(params, dict):
        raise ValueError(f"params must be a JSON object, not {type(params).__name__}")
    try:
        text = json.dumps(params, indent=2, ensure_ascii=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"params are not JSON serialisable: {exc}") from None
    return text.replace("$", "\\u0024") + "\n"


def _render_config(spec: LaunchSpec, trace_file: Path, plugins: list[str]) -> str:
    url = spec.weblog_url
    if not isinstance(url, str) or not re.match(r"^https?://[^/\s]+", url):
        raise ValueError(f"weblog URL must be an http(s) URL, not {url!r}")
    lines = [
        f"// Generated by nfhub for run {spec.run_id}; rewritten at every launch. Holds the run's weblog secret.",
        "plugins {",
        *(f"    id {groovy_string(p)}" for p in plugins),
        "}",
        "",
        "weblog {",
        "    enabled = true",
        f"    url = {groovy_string(url)}",
    ]
    if spec.weblog_basic_token is not None:
        if ":" not in spec.weblog_basic_token:
            # nf-weblog fails the run at start otherwise (nextflow.md §1)
            raise ValueError("weblog basic token must look like 'user:password'")
        lines.append(f"    basicToken = {groovy_string(spec.weblog_basic_token)}")
    lines += [
        "}",
        "",
        "trace {",
        "    enabled = true",
        f"    file = {groovy_string(str(trace_file))}",
        "    overwrite = true",
        "    raw = true",
        f"    fields = {groovy_string(TRACE_FIELDS)}",
        "}",
        "",
    ]
    return "\n".join(lines)


def _write_private(path: Path, text: str) -> None:
    # Created 0600 from the start (never briefly world-readable), then renamed over the old file.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)
            data = text.encode("utf-8")
            while data:
                data = data[os.write(fd, data) :]
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def prepare_run(spec: LaunchSpec) -> list[str]:
    """Create the run's directories and files (params.json, nfhub.config 0600) and return the argv to launch.

    All input is validated before anything is written; a bad spec raises ValueError and changes nothing.
    """
    _check_arg("nextflow executable", spec.nextflow)
    source = _check_arg("pipeline source", spec.source)
    if spec.local:
        source = str(_abs(source))
    if not RUN_NAME_RE.match(spec.run_name) or spec.run_name.lower() == "last":
        raise ValueError(f"invalid Nextflow run name: {spec.run_name!r}")
    for profile in spec.profiles:
        if not isinstance(profile, str) or not _PROFILE_RE.match(profile) or profile.startswith("-"):
            raise ValueError(f"invalid profile name: {profile!r}")
    config_files = [str(_abs(_check_arg("config file", f))) for f in spec.config_files]
    revision = None
    if spec.revision and not spec.local:
        revision = _check_arg("revision", spec.revision)
        if any(c.isspace() for c in revision):
            raise ValueError(f"revision must not contain whitespace: {revision!r}")
    if spec.resume_session is not None and not _UUID_RE.match(spec.resume_session):
        raise ValueError(f"resume session must be a Nextflow session id (UUID): {spec.resume_session!r}")
    plugins = [WEBLOG_PLUGIN]
    extra = [*(pipeline_plugins(Path(source)) if spec.local else []), *spec.plugins]
    for plugin in extra:
        if not isinstance(plugin, str) or not _PLUGIN_RE.match(plugin):
            raise ValueError(f"invalid plugin id: {plugin!r}")
        if plugin.split("@")[0] == WEBLOG_PLUGIN:
            plugins[0] = plugin  # keep a pinned nf-weblog version if the pipeline has one
        elif plugin.split("@")[0] not in {p.split("@")[0] for p in plugins}:
            plugins.append(plugin)

    run_dir, launch_dir, work_dir = _abs(spec.run_dir), _abs(spec.launch_dir), _abs(spec.work_dir)
    params_file, config_file = run_dir / "params.json", run_dir / "nfhub.config"
    params_text = params_json(spec.params)
    config_text = _render_config(spec, run_dir / "trace.txt", plugins)

    for d in (launch_dir, run_dir, work_dir):
        d.mkdir(parents=True, exist_ok=True)
    _write_private(params_file, params_text)
    _write_private(config_file, config_text)

    argv = [spec.nextflow, "-log", str(run_dir / "nextflow.log"), "run", source]
    argv += ["-params-file", str(params_file), "-name", spec.run_name, "-work-dir", str(work_dir)]
    argv += ["-ansi-log", "false", "-c", str(config_file)]
    for f in config_files:
        argv += ["-c", f]
    if spec.profiles:
        argv += ["-profile", ",".join(spec.profiles)]
    if revision:
        argv += ["-r", revision]
    if spec.resume_session:
        argv += ["-resume", spec.resume_session]
    return argv


# ---------------------------------------------------------------------------------------------------------------
# Processes: /proc helpers, launch, adopt, terminate
# ---------------------------------------------------------------------------------------------------------------


class _ProcStat(NamedTuple):
    state: str
    ppid: int
    pgrp: int
    session: int
    start_time: int


def _read_stat(pid: int) -> _ProcStat | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    try:
        # comm (field 2) may itself contain spaces and parentheses: split after the last ')'
        rest = data[data.rindex(b")") + 2 :].split()
        return _ProcStat(rest[0].decode(), int(rest[1]), int(rest[2]), int(rest[3]), int(rest[19]))
    except (ValueError, IndexError):
        return None


def process_start_time(pid: int) -> int | None:
    """Field 22 of ``/proc/<pid>/stat`` (clock ticks since boot), or None if there is no such process."""
    st = _read_stat(pid)
    return st.start_time if st else None


def _is_live(st: _ProcStat | None, start_time: int) -> bool:
    return st is not None and st.start_time == start_time and st.state not in ("Z", "X", "x")


def _child_env(extra: dict[str, str] | None) -> dict[str, str]:
    # nfhub's own settings (secrets included) are not the pipeline's business.
    env = {k: v for k, v in os.environ.items() if not k.startswith("NFHUB_")}
    env.setdefault("NXF_ANSI_LOG", "false")
    if extra:
        env.update(extra)
    return env


def _exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def _pidfd_open(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


class RunProcess:
    """A launched (or adopted) Nextflow process; ``pgid == sid == pid`` because it leads its own session."""

    def __init__(
        self,
        pid: int,
        start_time: int,
        *,
        popen: subprocess.Popen[bytes] | None = None,
        pidfd: int | None = None,
        poll_interval: float = 0.2,
    ) -> None:
        self.pid = pid
        self.start_time = start_time
        self.poll_interval = poll_interval
        self._popen = popen
        self._pidfd = pidfd
        self._exited = False
        self._returncode: int | None = None
        self._lock: anyio.Lock | None = None

    def __repr__(self) -> str:
        kind = "adopted" if self.adopted else "child"
        return f"<RunProcess pid={self.pid} start_time={self.start_time} {kind} exited={self._exited}>"

    @property
    def adopted(self) -> bool:
        return self._popen is None

    @property
    def returncode(self) -> int | None:
        """Exit code once known (128+signal for signal deaths); None while running or when not our child."""
        return self._returncode

    def is_running(self) -> bool:
        if self._exited:
            return False
        if self._popen is not None:
            rc = self._popen.poll()
            if rc is None:
                return True
            self._exited, self._returncode = True, _exit_code(rc)
            return False
        if _is_live(_read_stat(self.pid), self.start_time):
            return True
        self._exited = True
        return False

    async def wait(self) -> int | None:
        """Wait for the process to end; its exit code, or None for an adopted process (not our child)."""
        if self._exited:
            self._close_pidfd()
            return self._returncode
        if self._lock is None:
            self._lock = anyio.Lock()
        async with self._lock:
            while self.is_running():
                if self._pidfd is not None:
                    try:
                        # a pidfd becomes readable when the process exits; no thread, no child watcher
                        await anyio.wait_readable(self._pidfd)
                        if not self.is_running():
                            break
                    except OSError:
                        self._close_pidfd()
                await anyio.sleep(self.poll_interval)
            self._close_pidfd()
        return self._returncode

    def send_signal(self, sig: int) -> bool:
        """Signal the process itself, never a recycled pid. True if the signal was delivered."""
        try:
            if self._pidfd is not None:
                signal.pidfd_send_signal(self._pidfd, sig)
            elif self._popen is not None:
                if self._popen.poll() is not None:
                    return False
                self._popen.send_signal(sig)
            else:
                if not _is_live(_read_stat(self.pid), self.start_time):
                    return False
                os.kill(self.pid, sig)
        except ProcessLookupError:
            return False
        return True

    def kill_group(self) -> None:
        """SIGKILL the whole process group, provided the group number still belongs to this run."""
        if _group_is_ours(self.pid, self.start_time):
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _close_pidfd(self) -> None:
        if self._pidfd is not None:
            fd, self._pidfd = self._pidfd, None
            os.close(fd)

    def __del__(self) -> None:
        if self._pidfd is not None:
            try:
                os.close(self._pidfd)
            except OSError:
                pass


async def launch(spec: LaunchSpec, argv: list[str]) -> RunProcess:
    """Start ``argv`` (from prepare_run) in its own session, cwd launch_dir, output appended to console.log."""
    if not argv:
        raise ValueError("empty argv")
    env = _child_env(spec.env)
    launch_dir = _abs(spec.launch_dir)
    console = _abs(spec.run_dir) / "console.log"
    try:
        fd = os.open(console, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise LaunchError(f"cannot open {console}: {exc.strerror}") from None
    try:
        popen = _spawn(argv, fd, launch_dir, env)
    finally:
        os.close(fd)
    pidfd = _pidfd_open(popen.pid)
    start_time = process_start_time(popen.pid) or 0  # our unreaped child: /proc/<pid> exists
    log.info("run %s: started Nextflow pid %d (%s)", spec.run_id, popen.pid, spec.run_name)
    return RunProcess(popen.pid, start_time, popen=popen, pidfd=pidfd)


def _spawn(argv: list[str], fd: int, cwd: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    exe = argv[0]
    if not cwd.is_dir():
        error = f"launch directory {cwd} does not exist"
    elif os.sep not in exe and shutil.which(exe, path=env.get("PATH", os.defpath)) is None:
        error = f"Nextflow executable {exe!r} not found on PATH"
    else:
        try:
            return subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=fd,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=env,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            error = f"cannot start Nextflow {exe!r}: {exc.strerror or exc}"
    # the run's console log is where users look for the reason
    os.write(fd, f"nfhub: {error}\n".encode())
    raise LaunchError(error)


def adopt(pid: int, start_time: int, run_name: str) -> RunProcess | None:
    """Re-attach to a run's Nextflow process after an nfhub restart, if it is really still that process."""
    if not _is_live(_read_stat(pid), start_time):
        return None
    pidfd = _pidfd_open(pid)
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().split(b"\0")
    except OSError:
        args = []
    name = run_name.encode()
    # checked again after pidfd_open: from then on the fd pins this very process, whatever happens to the pid
    if not _is_live(_read_stat(pid), start_time) or not any(a == name or a.endswith(b"=" + name) for a in args):
        if pidfd is not None:
            os.close(pidfd)
        return None
    log.info("adopted Nextflow pid %d (%s)", pid, run_name)
    return RunProcess(pid, start_time, pidfd=pidfd)


def _group_is_ours(pgid: int, start_time: int | None) -> bool:
    if pgid <= 1 or pgid in (os.getpid(), os.getpgrp(), os.getsid(0)):
        return False
    if start_time is None:
        return True
    # While any member of a process group exists the kernel keeps its number reserved, so a different process
    # now owning pid == pgid means our group is already empty.
    leader = _read_stat(pgid)
    return leader is None or leader.start_time == start_time


def kill_group_leftovers(pgid: int, start_time: int | None = None) -> int:
    """SIGKILL the live processes of process group (or session) ``pgid``; how many were signalled.

    With ``start_time`` (the leader's), nothing is killed if the number was recycled by another process.
    """
    if not _group_is_ours(pgid, start_time):
        return 0
    me = os.getpid()
    count = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        st = _read_stat(int(entry))
        if st is None or st.state in ("Z", "X", "x") or pgid not in (st.pgrp, st.session):
            continue
        if start_time is not None and st.start_time < start_time:
            continue
        try:
            os.kill(int(entry), signal.SIGKILL)
            count += 1
        except ProcessLookupError:
            pass
    return count


async def terminate(proc: RunProcess, grace: float) -> None:
    """SIGTERM Nextflow, give it ``grace`` seconds, then SIGKILL its whole group; no process is left behind."""
    pid = proc.pid
    if proc.is_running():
        log.info("pid %d: sending SIGTERM", pid)
        if proc.send_signal(signal.SIGTERM):
            with anyio.move_on_after(max(grace, 0.0)):
                await proc.wait()
        if proc.is_running():
            log.warning("pid %d: still running after %.1f s, sending SIGKILL to process group %d", pid, grace, pid)
            proc.kill_group()
            with anyio.move_on_after(_KILL_WAIT):
                await proc.wait()
            if proc.is_running():
                log.error("pid %d: survived SIGKILL for %.0f s", pid, _KILL_WAIT)
        else:
            log.info("pid %d: exited (code %s)", pid, proc.returncode)
    else:
        log.info("pid %d: already exited", pid)
    # Tasks that ignore SIGTERM (or were started just before the end) can outlive Nextflow itself.
    with anyio.move_on_after(_SWEEP_TIME):
        while n := kill_group_leftovers(pid, proc.start_time):
            log.warning("pid %d: killed %d leftover process(es) of its group", pid, n)
            await anyio.sleep(0.05)


# ---------------------------------------------------------------------------------------------------------------
# Nextflow's files: history, trace, console
# ---------------------------------------------------------------------------------------------------------------


def read_history(launch_dir: Path) -> list[dict]:
    """Entries of ``<launch_dir>/.nextflow/history`` in file order (nextflow.md §7); [] if there is none."""
    try:
        text = (Path(launch_dir) / ".nextflow" / "history").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    entries = []
    for line in text.splitlines():
        cols = [c for c in line.split("\t") if c]  # HistoryFile uses tokenize('\t'): empty columns vanish
        if len(cols) >= 7:
            ts, dur, name, status, rev, session, command = *cols[:6], "\t".join(cols[6:])
        elif len(cols) == 2:  # legacy lines: session id and command only
            ts, dur, name, status, rev, (session, command) = "-", "-", "-", "-", "-", cols
        else:
            continue
        entries.append(
            {
                "timestamp": ts,
                "timestamp_ms": _epoch_ms(ts),
                "duration": dur,
                "duration_ms": _duration_ms(dur),
                "run_name": name,
                "status": status if status in ("OK", "ERR") else "-",
                "revision": rev,
                "session_id": session,
                "command": command,
            }
        )
    return entries


def find_history(launch_dir: Path, run_name: str) -> dict | None:
    """The last history entry of ``run_name``, or None."""
    found = None
    for entry in read_history(launch_dir):
        if entry["run_name"] == run_name:
            found = entry
    return found


_DURATION_UNITS = {
    **dict.fromkeys(("ms", "milli", "millis"), 1),
    **dict.fromkeys(("s", "sec", "second", "seconds"), 1000),
    **dict.fromkeys(("m", "min", "minute", "minutes"), 60_000),
    **dict.fromkeys(("h", "hour", "hours"), 3_600_000),
    **dict.fromkeys(("d", "day", "days"), 86_400_000),
}
_DURATION_PART = re.compile(r"\s*(\d+(?:\.\d*)?)\s*([a-zA-Z]+)")
_MEMORY_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGTPEZ]?B)$", re.IGNORECASE)
_MEMORY_UNITS = {u: 1024**i for i, u in enumerate(("B", "KB", "MB", "GB", "TB", "PB", "EB", "ZB"))}
_NUMBER_RE = re.compile(r"^-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?$")


MISSING_TEXT = frozenset(("", "-", "null"))  # what Nextflow and its trace files write for "no value" (stripped)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip() in MISSING_TEXT)


def _number(value: Any) -> float | None:
    if _missing(value) or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    return float(text) if _NUMBER_RE.match(text) else None


# Each converter passes a plain int through as it is (weblog traces hold raw numbers): exact above 2**53 too, and
# no detour through float for the common case.


def _whole(n: float) -> int | None:
    return int(n) if math.isfinite(n) else None  # ('1e999' is a number too, and int() of it raises)


def _int(value: Any) -> int | None:
    if type(value) is int:
        return value
    n = _number(value)
    return None if n is None else _whole(n)


def _duration_ms(value: Any) -> int | None:
    """ms from a raw number or Nextflow's Duration text ('850ms', '1.2s', '3m 4s', '1d 2h', '01:02:03')."""
    if type(value) is int:
        return value
    n = _number(value)
    if n is not None:
        return _whole(n)
    if _missing(value) or not isinstance(value, str):
        return None
    text = value.strip()
    legacy = re.match(r"^(\d{1,2}):(\d{1,2}):(\d{1,2})$", text)
    if legacy:
        h, m, s = (int(g) for g in legacy.groups())
        return ((h * 60 + m) * 60 + s) * 1000
    total, pos = 0.0, 0
    while pos < len(text):
        part = _DURATION_PART.match(text, pos)
        if not part or part.group(2) not in _DURATION_UNITS:
            return None
        total += float(part.group(1)) * _DURATION_UNITS[part.group(2)]
        pos = part.end()
    return round(total)


def _epoch_ms(value: Any) -> int | None:
    """Epoch ms from a raw number (0 = not set), a trace date ('2024-01-02 10:11:12.345', local time) or ISO."""
    if type(value) is int:
        return value if value > 0 else None
    n = _number(value)
    if n is not None:
        return _whole(n) if n > 0 else None
    if isinstance(value, dict):
        return _offset_datetime_ms(value)
    if _missing(value) or not isinstance(value, str):
        return None
    text = value.strip()
    for fmt in ("%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%d %H:%M:%S"):
        try:
            return round(datetime.strptime(text, fmt).timestamp() * 1000)  # naive = local, like Nextflow's
        except ValueError:
            pass
    try:
        return round(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        return None


_MONTHS = ("JANUARY FEBRUARY MARCH APRIL MAY JUNE JULY AUGUST SEPTEMBER OCTOBER NOVEMBER DECEMBER").split()


def _offset_datetime_ms(obj: dict) -> int | None:
    # java.time.OffsetDateTime serialised as a bean by Groovy's JsonGenerator (nextflow.md §6.2, nextflow#2271)
    try:
        month = obj.get("monthValue")
        if month is None and isinstance(obj.get("month"), str):
            month = _MONTHS.index(obj["month"].upper()) + 1
        offset = obj.get("offset")
        seconds = offset.get("totalSeconds", 0) if isinstance(offset, dict) else 0
        dt = datetime(
            int(obj["year"]),
            int(month),
            int(obj["dayOfMonth"]),
            int(obj.get("hour", 0)),
            int(obj.get("minute", 0)),
            int(obj.get("second", 0)),
            int(obj.get("nano", 0)) // 1000,
            tzinfo=timezone(timedelta(seconds=int(seconds))),
        )
    except (KeyError, TypeError, ValueError):
        return None
    return round(dt.timestamp() * 1000)


def _bytes(value: Any) -> int | None:
    if type(value) is int:
        return value
    n = _number(value)
    if n is not None:
        return _whole(n)
    if _missing(value) or not isinstance(value, str):
        return None
    m = _MEMORY_RE.match(value.strip())
    return round(float(m.group(1)) * _MEMORY_UNITS[m.group(2).upper()]) if m else None


def _percent(value: Any) -> float | None:
    if isinstance(value, str) and value.strip().endswith("%"):
        value = value.strip()[:-1]
    return _number(value)


def _text(value: Any) -> str | None:
    if _missing(value):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


_INT64 = (-(2**63), 2**63 - 1)


def _fit(task: dict) -> dict:
    """Numbers a database column can hold: SQLite integers are 64-bit, so anything larger is dropped (None)."""
    for key, value in task.items():
        if type(value) is int and not _INT64[0] <= value <= _INT64[1]:
            task[key] = None
    return task


def _task(get: Callable[[str], Any]) -> dict:
    return _fit(_task_fields(get))


def _task_fields(get: Callable[[str], Any]) -> dict:
    exit_code = _int(get("exit"))
    return {
        "task_id": _int(get("task_id")),
        "hash": _text(get("hash")),
        "name": _text(get("name")),
        "process": _text(get("process")),
        "tag": _text(get("tag")),
        "status": _text(get("status")),
        "exit": None if exit_code == INT_MAX else exit_code,
        "submit": _epoch_ms(get("submit")),
        "start": _epoch_ms(get("start")),
        "complete": _epoch_ms(get("complete")),
        "duration": _duration_ms(get("duration")),
        "realtime": _duration_ms(get("realtime")),
        "cpu_percent": _percent(get("%cpu")),
        "peak_rss": _bytes(get("peak_rss")),
        "workdir": _text(get("workdir")),
        "native_id": _text(get("native_id")),
        "attempt": _int(get("attempt")),
        "error_action": _text(get("error_action")),
    }


def task_from_weblog(trace: dict) -> dict:
    """A weblog ``trace`` object (raw TraceRecord, nextflow.md §5) as a normalised task dict.

    Raises ValueError when there is no usable ``task_id``.
    """
    if not isinstance(trace, dict):
        raise ValueError("weblog trace must be an object")
    task = _task(trace.get)
    if task["task_id"] is None:
        raise ValueError(f"weblog trace without a task_id: {trace.get('task_id')!r}")
    return task


# The columns of a task row (nfhub_store's tasks table, after run_id and task_id), in order.
TASK_COLUMNS = ("hash", "name", "process", "tag", "status", "exit", "submit", "start", "complete", "duration",
                "realtime", "cpu_percent", "peak_rss", "workdir", "native_id", "attempt", "error_action")


_STATUS = TASK_COLUMNS.index("status")
_NATIVE = TASK_COLUMNS.index("native_id")
_I64 = 1 << 63


def _fast_task_row(trace: dict[str, Any]) -> list[Any] | None:
    """The task columns of a trace that holds the plain JSON types Nextflow sends, converted as
    task_from_weblog converts them, at a fraction of the cost (the applier's thread holds the
    interpreter lock while it converts, and the event loop waits for it); None for anything else."""
    g = trace.get
    texts = (g("hash"), g("name"), g("process"), g("tag"), g("workdir"), g("error_action"))
    for v in texts:
        if v is not None and (type(v) is not str or v.strip() in MISSING_TEXT):
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
    elif native is not None and (type(native) is not str or native.strip() in MISSING_TEXT):
        return None
    return [texts[0], texts[1], texts[2], texts[3], None, None if exit_code == INT_MAX else exit_code,
            submit if submit is None or submit > 0 else None, start if start is None or start > 0 else None,
            complete if complete is None or complete > 0 else None, duration, realtime, cpu, peak_rss, texts[4],
            native, attempt, texts[5]]


def task_row(traces: list[dict[str, Any]], status: str) -> list[Any]:
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
            task = task_from_weblog(trace)
        except ValueError:
            continue
        for column in list(missing):
            if task.get(column) is not None:
                row[column] = task[column]
                missing.discard(column)
        if not missing:
            break
    return row



def parse_trace(path: Path) -> list[dict]:
    """Rows of a Nextflow trace file (raw or formatted values) as normalised task dicts; [] if unreadable."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    lines = text.splitlines()
    if not lines:
        return []
    header = lines[0].split("\t")
    tasks = []
    for line in lines[1:]:
        if not line.strip():
            continue
        row = dict(zip(header, line.split("\t"), strict=False))
        task = _task(row.get)
        if task["task_id"] is not None:
            tasks.append(task)
    return tasks


def workflow_summary(metadata: dict) -> dict:
    """The useful part of a ``started``/``completed`` event's metadata (nextflow.md §6); missing keys → None/0."""
    wf: dict = {}
    if isinstance(metadata, dict):
        inner = metadata.get("workflow")
        wf = inner if isinstance(inner, dict) else metadata if "sessionId" in metadata else {}
    stats = wf.get("stats") if isinstance(wf.get("stats"), dict) else {}
    nf = wf.get("nextflow") if isinstance(wf.get("nextflow"), dict) else {}

    def count(*keys: str) -> int:
        for key in keys:
            v = _int(stats.get(key))
            if v is not None:
                return v
        return 0

    processes = []
    for p in stats.get("processes") or []:
        if isinstance(p, dict):
            processes.append(
                {
                    "name": _text(p.get("name")),
                    **{
                        k: _int(p.get(k)) or 0
                        for k in ("pending", "submitted", "running", "succeeded", "cached", "failed", "aborted")
                    },
                    "ignored": _int(p.get("ignored")) or 0,
                    "retries": _int(p.get("retries")) or 0,
                    "total": _int(p.get("totalCount")),
                }
            )
    failed, ignored, retries = count("failedCount"), count("ignoredCount"), count("retriesCount")
    eff = _int(stats.get("effectiveFailedCount"))
    success = wf.get("success")
    return {
        "session_id": _text(wf.get("sessionId")),
        "run_name": _text(wf.get("runName")),
        "success": success if isinstance(success, bool) else None,
        "exit_status": _int(wf.get("exitStatus")),
        "error_message": wf.get("errorMessage") if isinstance(wf.get("errorMessage"), str) else None,
        "error_report": wf.get("errorReport") if isinstance(wf.get("errorReport"), str) else None,
        "resume": bool(wf.get("resume")),
        "start": _epoch_ms(wf.get("start")),
        "complete": _epoch_ms(wf.get("complete")),
        "duration": _duration_ms(wf.get("duration")),
        "command_line": _text(wf.get("commandLine")),
        "project_name": _text(wf.get("projectName")),
        "revision": _text(wf.get("revision")),
        "commit_id": _text(wf.get("commitId")),
        "profile": _text(wf.get("profile")),
        "work_dir": _text(wf.get("workDir")),
        "launch_dir": _text(wf.get("launchDir")),
        "nextflow_version": _text(nf.get("version")),
        "stats": {
            "succeeded": count("succeededCount", "succeedCount"),
            "failed": failed,
            "ignored": ignored,
            "cached": count("cachedCount"),
            "aborted": count("abortedCount"),
            "retries": retries,
            "effective_failed": eff if eff is not None else max(failed - ignored - retries, 0),
            "submitted": count("submittedCount"),
            "running": count("runningCount"),
            "pending": count("pendingCount"),
            "succeed_duration": count("succeedDuration"),
            "cached_duration": count("cachedDuration"),
            "failed_duration": count("failedDuration"),
            "peak_running": count("peakRunning"),
            "processes": processes,
        },
    }


_ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-_]")


def console_tail(path: Path, lines: int = 20, max_bytes: int = 65536) -> str:
    """The last ``lines`` lines of a console log (ANSI escapes removed), for error messages; '' if none."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(size - max_bytes, 0))
            data = f.read(max_bytes)
    except OSError:
        return ""
    text = _ANSI_RE.sub("", data.decode("utf-8", errors="replace")).replace("\r\n", "\n").replace("\r", "\n")
    rows = text.split("\n")
    if size > max_bytes:
        rows = rows[1:]  # the first row was cut in the middle
    while rows and not rows[-1].strip():
        rows.pop()
    return "\n".join(row.rstrip() for row in rows[-lines:]) if lines > 0 else ""


def nextflow_version(executable: str, timeout: float = 20, env: dict[str, str] | None = None) -> str | None:
    """``X.Y.Z.build`` from ``<executable> -v``; None if it is missing, hangs or prints no version. Blocking."""
    try:
        proc = subprocess.Popen(
            [executable, "-v"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=_child_env(env),
            start_new_session=True,
        )
    except OSError:
        return None
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        log.warning("%s -v did not answer within %.0f s", executable, timeout)
        kill_group_leftovers(proc.pid)
        proc.kill()
        proc.communicate()
        return None
    m = re.search(r"nextflow version (\S+)", out.decode("utf-8", errors="replace"))
    return m.group(1) if m else None


# ---------------------------------------------------------------------------------------------------------------
# Dispatcher
# ---------------------------------------------------------------------------------------------------------------


class Dispatcher:
    """FIFO run queue: starts at most ``max_concurrent`` runs at once, each ``start(run_id)`` in its own task."""

    def __init__(self, max_concurrent: int, start: Callable[[int], Awaitable[None]]) -> None:
        if isinstance(max_concurrent, bool) or not isinstance(max_concurrent, int) or max_concurrent < 1:
            raise ValueError(f"max_concurrent must be a positive integer, not {max_concurrent!r}")
        self.max_concurrent = max_concurrent
        self._start = start
        self._queue: deque[int] = deque()
        self._active: set[int] = set()
        self._wake: anyio.Event | None = None

    def submit(self, run_id: int) -> None:
        if run_id in self._active or run_id in self._queue:
            log.debug("run %s already queued or running", run_id)
            return
        self._queue.append(run_id)
        self._notify()

    def drop(self, run_id: int) -> bool:
        try:
            self._queue.remove(run_id)
        except ValueError:
            return False
        return True

    def is_queued(self, run_id: int) -> bool:
        return run_id in self._queue

    def queued(self) -> list[int]:
        return list(self._queue)

    def active(self) -> set[int]:
        return set(self._active)

    def _notify(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def serve(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            task_status.started()
            while True:
                self._wake = anyio.Event()
                while self._queue and len(self._active) < self.max_concurrent:
                    run_id = self._queue.popleft()
                    self._active.add(run_id)
                    tg.start_soon(self._run, run_id, name=f"nfhub run {run_id}")
                await self._wake.wait()

    async def _run(self, run_id: int) -> None:
        try:
            await self._start(run_id)
        except Exception:
            log.exception("run %s: start() failed", run_id)
        finally:
            self._active.discard(run_id)
            self._notify()
