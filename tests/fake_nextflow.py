#!/usr/bin/env python3
"""A stand-in for the `nextflow` launcher (Nextflow 25.10.2 behaviour), for nfhub's tests and demos. Stdlib only.

It reproduces what nfhub relies on (see docs/nextflow.md §2-§8): CLI options, console lines, weblog events (same
envelope, order, trace fields and units, the OffsetDateTime quirk of `start`/`complete`), the trace file,
`.nextflow/history`, the task cache used by `-resume`, work dirs, published outputs, signals and exit codes.
Tasks are real child processes (one `python -S .command.run` per task, in this process's group), so SIGTERM/SIGKILL
behaviour can be tested. It never creates its own process group: whoever launches it does that. A task is reported
`process_started` once its runner has written `.command.begin` (as Nextflow's polling monitor does). On SIGTERM/SIGHUP/
SIGINT it SIGTERMs its tasks, sends ABORTED records, `completed` and `error`, waits briefly to reap them and exits 1;
a task that ignores SIGTERM is left to the caller's process-group kill.

Commands: `run`, `log`, `info`, `-v`, `-version`, `-h`. Global options before the command: `-log F`, `-c F`, `-C F`,
`-q`. `run` options: `-params-file F`, `-name N`, `-w/-work-dir D`, `-profile a,b`, `-c F`, `-r REV`, `-resume [id]`,
`-ansi-log B` (output is always plain), `-with-weblog [url]`, `-with-trace [file]`, `-o/-output-dir D`, `-qs N`,
`-main-script F`, `--param value` (nested `--a.b v`, kebab-case -> camelCase, v1 type detection unless
NXF_SYNTAX_PARSER=v2 or NXF_DISABLE_PARAMS_TYPE_DETECTION). Other known Nextflow run options are accepted and ignored.

What the pipeline does comes from `<pipeline dir>/fake_nextflow.json` (without it: one 0.1 s successful task per
`process NAME {` found in the main script):

    {
      "tasks": [                         # required: task entries, in declaration order
        {
          "process": "SAY_HELLO",        # required; may be fully qualified ("WF:SAY_HELLO")
          "each": ["a", "b"],            # one task per item; or {"lines_of": "input", "limit": "max_names"}
                                         #   (non-empty stripped lines of the file params.input, at most
                                         #   params.max_names of them; "limit" may also be a number);
                                         #   or {"param": "samples"} (a list param, or a comma-separated string)
          "when": "uppercase",           # param name: no tasks at all when that param is falsy
          "after": "OTHER_PROCESS",      # wait for OTHER_PROCESS's task with the same item (else for all of its
                                         #   tasks); skipped when that task did not succeed (e.g. ignored failure)
          "tag": "{item}",               # default "{item}" with "each", none otherwise
          "seconds": 0.1,                # run time of the task (times FAKE_NEXTFLOW_TIME_SCALE)
          "exit": 0,                     # exit status, or a list: one per attempt (the last one repeats)
          "stdout": "text", "stderr": "text",
          "error_strategy": "terminate", # terminate | finish | ignore | retry  (config withName can override)
          "max_retries": 1,
          "ignore_sigterm": false,       # the task process ignores SIGTERM (only SIGKILL stops it)
          "script": "echo hi",           # shown in .command.sh / trace `script` (not executed)
          "outputs": {"{item}.txt": "Hello {item}!\n"},   # files the task writes into its work dir on success
          "publish_dir": "{params.outdir}/hello",         # publish outputs there (relative: to the launch dir)
          "publish_mode": "copy",        # symlink (Nextflow's default) | rellink | link | copy | copyNoFollow | move
          "cpus": 1, "memory": "1 GB", "time": "1h", "container": null, "queue": null
        }
      ],
      "max_parallel": 2,                 # concurrent tasks (default: executor.cpus, -qs, or the number of cpus)
      "script_params": {"x": 1},         # params assigned in main.nf: they appear only in `completed`
      "runtime_error": "message",        # fail right after `started` like a script error
      "revisions": ["main", "1.0"]       # remote pipelines only: the valid -r values
    }

Templates ("{...}") in tag/stdout/stderr/script/outputs/publish_dir/publish_mode know `item`, `index` (1-based),
`attempt`, `process`, `tag` and `params.NAME[.SUB]`, with filters `|upper`, `|lower`, `|strip`, `|title`
(e.g. "{params.greeting|upper}"); unknown names are left as they are, a null param renders as "null" (like Groovy).
Task hashes derive from the session id, process, item, tag, script, outputs and upstream hashes (not from exit,
seconds or stderr), so `-resume` after fixing a failing task reuses the tasks that succeeded.

Config files (pipeline `nextflow.config`, launch-dir `nextflow.config`, `-c` files, `includeConfig`) are parsed as
Groovy-ish assignments: blocks or dotted names, quoted strings (with `${params.x}`/`${projectDir}`/`${launchDir}`
interpolation), numbers, `8.GB`/`2.h` units, booleans, null, lists, maps, comments, `profiles {}`,
`process { withName: X {} }`, `plugins { id 'x' }`. Used scopes: params, manifest, profiles, weblog, trace, process
(cpus, memory, time, errorStrategy, maxRetries, container, queue), executor.cpus, workDir.

Files: `.nextflow/history` (tab separated), `.nextflow/cache/<session>/db/` (LOCK, fake-cache.jsonl = succeeded
tasks, index.<runName> = every task record of the run), the log (`-log`, NXF_LOG_FILE or `.nextflow.log`, rolled
to .1...9), work dirs `<work>/ab/cdef...` with .command.sh/.command.run/.command.out/.command.err/.command.log/
.command.begin/.command.trace/.exitcode, and the trace file.

Environment: NXF_UUID, NXF_LOG_FILE, NXF_PARAMS_FILE, NXF_HOME / NXF_ASSETS (remote pipelines are looked up in
`<assets>/<owner>/<repo>`, never downloaded), NXF_OFFLINE, NXF_IGNORE_RESUME_HISTORY, NXF_SYNTAX_PARSER,
NXF_DISABLE_PARAMS_TYPE_DETECTION; FAKE_NEXTFLOW_TIME_SCALE (multiplies task seconds, default 1),
FAKE_NEXTFLOW_HTTP_TIMEOUT (seconds per weblog POST; default none, like Nextflow).

Deliberately different from Nextflow: weblog POSTs are synchronous (the run waits for each, which keeps the order
and the "completed is delivered before exit" guarantee); a failure before the session starts (bad name, script,
profile, params file, weblog URL) writes no history line; `-bg`, `-with-report/-timeline/-dag`, containers,
`failOnIgnore`, `${var}` substitution in params files and `nextflow log -t` are not implemented.
"""

from __future__ import annotations

import base64
import contextlib
import difflib
import fcntl
import getpass
import hashlib
import json
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

VERSION = "25.10.2"
BUILD = 10555
BUILD_TIME = datetime(2025, 12, 3, 9, 27)  # UTC, minute precision like the real build stamp
INT_MAX = 2147483647
RUN_NAME_RE = re.compile(r"^[a-z](?:[a-z\d]|[-_](?=[a-z\d])){0,79}$", re.IGNORECASE)
WEBLOG_URL_RE = re.compile(r"^(https|http)://[-a-zA-Z0-9+&@#/%?=~_|!:,.;]*[-a-zA-Z0-9+&@#/%=~_|]")
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.IGNORECASE)
REMOTE_RE = re.compile(r"^(?:https?://[^/]+/)?([\w.-]+)/([\w.-]+?)(?:\.git)?/?$")
DEFAULT_TRACE_FIELDS = (
    "task_id,hash,native_id,name,status,exit,submit,duration,realtime,%cpu,peak_rss,peak_vmem,rchar,wchar"
)
ERROR_STRATEGIES = ("terminate", "finish", "ignore", "retry")
PUBLISH_MODES = ("symlink", "rellink", "link", "copy", "copyNoFollow", "move")
POLL_SECONDS = 0.01
KILL_WAIT_SECONDS = 0.5

# Options of `nextflow run` that take a value, that take an optional value, and flags (CmdRun, 25.10).
RUN_VALUE_OPTS = {
    "-params-file", "-name", "-w", "-work-dir", "-profile", "-c", "-config", "-r", "-revision", "-ansi-log",
    "-o", "-output-dir", "-qs", "-queue-size", "-main-script", "-entry", "-plugins", "-lib", "-hub", "-user",
    "-cache", "-process", "-executor", "-test", "-N", "-with-notification", "-syntax-parser", "-ansi",
}
RUN_OPTIONAL_VALUE_OPTS = {
    "-with-weblog", "-with-trace", "-with-report", "-with-timeline", "-with-dag", "-with-docker",
    "-with-singularity", "-with-apptainer", "-with-podman", "-with-charliecloud", "-with-conda", "-with-spack",
    "-with-tower", "-with-wave", "-with-fusion", "-dump-hashes", "-dump-channels", "-with-cloudcache",
}
RUN_FLAGS = {
    "-latest", "-offline", "-stub", "-stub-run", "-preview", "-disable-jobs-cancellation", "-without-docker",
    "-without-podman", "-without-conda", "-without-spack", "-without-wave", "-E", "-export-sysenv",
    "-with-mpi", "-pool-size",
}
GLOBAL_VALUE_OPTS = {"-log", "-c", "-config", "-C", "-syslog", "-trace"}
MONTHS = ["JANUARY", "FEBRUARY", "MARCH", "APRIL", "MAY", "JUNE", "JULY", "AUGUST", "SEPTEMBER", "OCTOBER",
          "NOVEMBER", "DECEMBER"]
WEEKDAYS = ["MONDAY", "TUESDAY", "WEDNESDAY", "THURSDAY", "FRIDAY", "SATURDAY", "SUNDAY"]
NAME_ADJECTIVES = ["admiring", "agitated", "amazing", "angry", "awesome", "berserk", "boring", "clever", "cranky",
                   "distracted", "ecstatic", "elegant", "focused", "friendly", "gigantic", "goofy", "happy", "hungry",
                   "jolly", "kickass", "lonely", "modest", "naughty", "nostalgic", "pensive", "prickly", "sad",
                   "serene", "sharp", "silly", "small", "stoic", "tender", "tiny", "trusting", "zen"]
NAME_SURNAMES = ["almeida", "bardeen", "bose", "cajal", "curie", "darwin", "einstein", "euler", "fermi", "franklin",
                 "galileo", "hopper", "hypatia", "joliot", "kirch", "lovelace", "mclintock", "meitner", "mendel",
                 "noether", "pasteur", "pesquet", "poincare", "ramanujan", "sanger", "shannon", "tesla", "turing",
                 "volta", "watson", "wright"]

# The task runner: a tiny stdlib script each task executes as `python -S .command.run` in its work dir. It writes
# .command.out/.err, its outputs (on success), a .command.trace in Nextflow's format and .exitcode.
RUNNER = r'''# written by fake_nextflow.py: runs one fake task (spec in .command.fake)
import json, os, signal, sys, time
spec = json.load(open(".command.fake", encoding="utf-8"))
if spec["ignore_sigterm"]:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
t0 = time.monotonic()
c0 = os.times()
open(".command.begin", "w").close()
if spec["seconds"] > 0:
    time.sleep(spec["seconds"])
def put(name, text):
    os.makedirs(os.path.dirname(name) or ".", exist_ok=True)
    with open(name + ".tmp~", "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(name + ".tmp~", name)
put(".command.out", spec["stdout"])
put(".command.err", spec["stderr"])
if spec["exit"] == 0:
    for name, text in spec["outputs"]:
        put(name, text)
def kv(path, sep):
    out = {}
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                key, _, value = line.partition(sep)
                out[key.strip()] = value.strip()
    except OSError:
        pass
    return out
def num(value):
    try:
        return int(value.split()[0])
    except (ValueError, IndexError, AttributeError):
        return 0
wall = max(time.monotonic() - t0, 1e-6)
c1 = os.times()
st = kv("/proc/self/status", ":")
io = kv("/proc/self/io", ":")
mem = kv("/proc/meminfo", ":")
cpu = kv("/proc/cpuinfo", ":")
rss = num(st.get("VmRSS"))
lines = [
    "nextflow.trace/v2",
    "realtime=%d" % int(wall * 1000),
    "%%cpu=%d" % int(round((c1.user - c0.user + c1.system - c0.system) / wall * 1000)),
    "cpu_model=%s" % cpu.get("model name", ""),
    "rchar=%d" % num(io.get("rchar")), "wchar=%d" % num(io.get("wchar")),
    "syscr=%d" % num(io.get("syscr")), "syscw=%d" % num(io.get("syscw")),
    "read_bytes=%d" % num(io.get("read_bytes")), "write_bytes=%d" % num(io.get("write_bytes")),
    "%%mem=%d" % int(rss * 1000 / max(num(mem.get("MemTotal")), 1)),
    "vmem=%d" % num(st.get("VmSize")), "rss=%d" % rss,
    "peak_vmem=%d" % num(st.get("VmPeak")), "peak_rss=%d" % num(st.get("VmHWM")),
    "vol_ctxt=%d" % num(st.get("voluntary_ctxt_switches")),
    "inv_ctxt=%d" % num(st.get("nonvoluntary_ctxt_switches")),
]
put(".command.trace", "\n".join(lines) + "\n")
put(".exitcode", str(spec["exit"]))
sys.exit(spec["exit"])
'''


class AbortOperation(Exception):
    """A failure before the session starts: message on stderr, exit 1, no events."""


class ConsoleError(Exception):
    """A failure reported on stdout as `ERROR ~ msg`, exit 1, no events."""


class ScriptError(Exception):
    """A failure after `started` (script/runtime error): completed + error events, exit 1."""


# ---- Small helpers ----------------------------------------------------------------------------------------------


def now_ms() -> int:
    return int(time.time() * 1000)


def time_scale() -> float:
    try:
        return max(float(os.environ.get("FAKE_NEXTFLOW_TIME_SCALE", "1")), 0.0)
    except ValueError:
        return 1.0


def cli_escape(arg: str) -> str:
    # Nextflow's Escape.cli: quote anything a shell would interpret (':' included).
    if arg == "":
        return "''"
    if any(c in " \t\n'\"()&|;<>*?{}[]!$`\\:#~" for c in arg):
        return "'" + arg.replace("'", "'\\''") + "'"
    return arg


def kebab_to_camel(key: str) -> str:
    return re.sub(r"-([a-zA-Z0-9])", lambda m: m.group(1).upper(), key)


def groovy_str(value: Any) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, list):
        return "[" + ", ".join(groovy_str(v) for v in value) + "]"
    if isinstance(value, dict):
        return "[" + ", ".join(f"{k}:{groovy_str(v)}" for k, v in value.items()) + "]" if value else "[:]"
    return str(value)


def fmt_duration(ms: int | float | None) -> str:
    if ms is None:
        return "-"
    ms = int(ms)
    if ms < 1000:
        return f"{ms}ms"
    if ms < 60_000:
        return f"{round(ms / 1000, 1):g}s"
    secs = round(ms / 1000)
    days, secs = divmod(secs, 86400)
    hours, secs = divmod(secs, 3600)
    mins, secs = divmod(secs, 60)
    parts = [f"{v}{u}" for v, u in ((days, "d"), (hours, "h"), (mins, "m"), (secs, "s")) if v]
    return " ".join(parts)


def fmt_memory(nbytes: int | float | None) -> str:
    if nbytes is None:
        return "-"
    if nbytes == 0:
        return "0"
    units = ["B", "KB", "MB", "GB", "TB", "PB", "EB"]
    value, i = float(nbytes), 0
    while value >= 1024 and i < len(units) - 1:
        value /= 1024
        i += 1
    return f"{round(value, 1):g} {units[i]}"


def fmt_count(n: int) -> str:
    return f"{n:,}".replace(",", "'")


def parse_memory(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return int(value)
    m = re.fullmatch(r"\s*([\d.]+)\s*\.?\s*([KMGTP]?B)\s*", str(value), re.IGNORECASE)
    if not m:
        raise ValueError(f"Not a valid memory value: {value}")
    power = "BKMGTP".index(m.group(2).upper()[0])
    return int(float(m.group(1)) * 1024**power)


def parse_duration(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return int(value)
    total = 0.0
    parts = re.findall(r"([\d.]+)\s*\.?\s*(ms|milli|s|sec|m|min|h|hour|d|day)s?\b", str(value), re.IGNORECASE)
    if not parts:
        raise ValueError(f"Not a valid duration value: {value}")
    for number, unit in parts:
        total += float(number) * _TIME_UNITS[unit.lower()]
    return int(total)


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def dig(data: Any, dotted: str, default: Any = None) -> Any:
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            return default
        data = data[part]
    return data


def offset_datetime(epoch_ms: int) -> dict[str, Any]:
    """Serialise a time the way Groovy's JsonGenerator renders a java.time.OffsetDateTime: as a bean."""
    dt = datetime.fromtimestamp(epoch_ms / 1000).astimezone()
    offset = int(dt.utcoffset().total_seconds()) if dt.utcoffset() is not None else 0
    if offset == 0:
        zone_id = "Z"
    else:
        sign = "+" if offset > 0 else "-"
        hh, rest = divmod(abs(offset), 3600)
        mm, ss = divmod(rest, 60)
        zone_id = f"{sign}{hh:02d}:{mm:02d}" + (f":{ss:02d}" if ss else "")
    return {
        "month": MONTHS[dt.month - 1],
        "offset": {
            "rules": {"transitions": [], "fixedOffset": True, "transitionRules": []},
            "totalSeconds": offset,
            "id": zone_id,
            "availableZoneIds": zone_ids(),
        },
        "second": dt.second,
        "hour": dt.hour,
        "nano": (epoch_ms % 1000) * 1_000_000,
        "year": dt.year,
        "dayOfMonth": dt.day,
        "minute": dt.minute,
        "monthValue": dt.month,
        "dayOfWeek": WEEKDAYS[dt.weekday()],
        "dayOfYear": dt.timetuple().tm_yday,
    }


_ZONE_IDS: list[str] = []


def zone_ids() -> list[str]:
    if not _ZONE_IDS:
        try:
            import zoneinfo

            _ZONE_IDS.extend(sorted(z for z in zoneinfo.available_timezones() if z not in ("localtime", "Factory")))
        except Exception:  # no tz database: Java would still list ~600 ids, a few will do
            pass
        if not _ZONE_IDS:
            _ZONE_IDS.extend(["Europe/Paris", "America/New_York", "Asia/Tokyo", "UTC", "Etc/GMT+1"])
    return _ZONE_IDS


# ---- Console and log --------------------------------------------------------------------------------------------


class Console:
    """stdout in plain (`-ansi-log false`) mode, plus the debug log file."""

    def __init__(self) -> None:
        self.quiet = False
        self.log_path: Path | None = None
        self._log: IO[str] | None = None
        self._warned: dict[str, float] = {}

    def open_log(self, path: Path) -> None:
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.exists():  # roll like Nextflow: x.log -> x.log.1 ... x.log.9
                for i in range(8, 0, -1):
                    older = Path(f"{path}.{i}")
                    if older.exists():
                        older.replace(f"{path}.{i + 1}")
                path.replace(f"{path}.1")
            self._log = open(path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the run
            self.log_path = path

    def log(self, msg: str, level: str = "DEBUG", logger: str = "nextflow.Session", thread: str = "main") -> None:
        if self._log is None:
            return
        stamp = datetime.now().strftime("%b-%d %H:%M:%S.%f")[:-3]
        with contextlib.suppress(OSError, ValueError):
            self._log.write(f"{stamp} [{thread}] {level:<5} {logger} - {msg}\n")
            self._log.flush()

    def _print(self, text: str, stream: IO[str]) -> None:
        with contextlib.suppress(OSError, ValueError):
            stream.write(text + "\n")
            stream.flush()

    def info(self, text: str) -> None:
        self.log(text, "INFO")
        if not self.quiet:
            self._print(text, sys.stdout)

    def warn(self, text: str, throttle: bool = False) -> None:
        # Nextflow's log.warn1: an identical message is printed at most once a minute.
        self.log(text, "WARN")
        if throttle:
            last = self._warned.get(text)
            if last is not None and time.monotonic() - last < 60:
                return
            self._warned[text] = time.monotonic()
        self._print(f"WARN: {text}", sys.stdout)

    def error(self, text: str) -> None:
        self.log(text, "ERROR")
        name = self.log_path.name if self.log_path else ".nextflow.log"
        self._print(f"ERROR ~ {text}\n\n -- Check '{name}' file for details", sys.stdout)

    def stderr(self, text: str) -> None:
        self.log(text, "ERROR", "nextflow.cli.Launcher")
        self._print(text, sys.stderr)


# ---- Config parsing ---------------------------------------------------------------------------------------------

_TOKEN_RE = re.compile(
    r"""
    (?P<ws>[ \t\r\f]+|\\\n)
  | (?P<nl>\n)
  | (?P<comment>//[^\n]*|/\*.*?\*/|\#![^\n]*)
  | (?P<str>'''.*?'''|\"\"\".*?\"\"\"|'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*")
  | (?P<num>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?(?:\.[A-Za-z]+)?)
  | (?P<ident>[A-Za-z_$][\w$]*(?:\.[A-Za-z_$][\w$]*)*)
  | (?P<op>[{}\[\](),;:=])
  | (?P<other>.)
    """,
    re.DOTALL | re.VERBOSE,
)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "\\": "\\", "'": "'", '"': '"', "$": "$"}
_MEM_UNITS = {"b": 0, "kb": 1, "mb": 2, "gb": 3, "tb": 4, "pb": 5}
_TIME_UNITS = {"ms": 1, "milli": 1, "s": 1000, "sec": 1000, "m": 60_000, "min": 60_000, "h": 3_600_000,
               "hour": 3_600_000, "d": 86_400_000, "day": 86_400_000}


@dataclass
class Raw:
    """A config value the fake cannot evaluate (an expression, a closure)."""

    text: str

    def __str__(self) -> str:
        return self.text


@dataclass
class Tok:
    kind: str
    text: str
    line: int


class ConfigParser:
    """Reads the Groovy-ish subset of Nextflow config files nfhub and its tests use."""

    def __init__(self, context: dict[str, Any]) -> None:
        # context: params (overrides known before parsing: CLI + params file), projectDir, launchDir
        self.context = context
        self.files: list[Path] = []

    def parse_file(self, path: Path, depth: int = 0, prefix: tuple[str, ...] = ()) -> dict[str, Any]:
        if depth > 10:
            raise AbortOperation(f"Too many nested includeConfig: {path}")
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise AbortOperation(f"Cannot read config file: {path} -- {exc.strerror}") from None
        self.files.append(path)
        result: dict[str, Any] = {}
        saved = getattr(self, "_path", path), getattr(self, "_depth", 0)
        self._path, self._depth = path, depth
        try:
            self._block(self._tokenize(text), 0, result, False, prefix)
        finally:
            self._path, self._depth = saved
        return result

    def _tokenize(self, text: str) -> list[Tok]:
        out: list[Tok] = []
        line = 1
        for m in _TOKEN_RE.finditer(text):
            kind = m.lastgroup or "other"
            value = m.group()
            if kind == "nl":
                out.append(Tok("nl", "\n", line))
            elif kind not in ("ws", "comment"):
                out.append(Tok(kind, value, line))
            line += value.count("\n")
        return out

    def _block(self, toks: list[Tok], pos: int, target: dict[str, Any], closing: bool,
               prefix: tuple[str, ...]) -> int:
        while True:
            while pos < len(toks) and toks[pos].text in ("\n", ";"):
                pos += 1
            if pos >= len(toks):
                if closing:
                    raise AbortOperation(f"Unable to parse config file: '{self._path}' -- missing closing brace")
                return pos
            tok = toks[pos]
            nxt = toks[pos + 1] if pos + 1 < len(toks) else None
            if tok.text == "}":
                if closing:
                    return pos + 1
                raise AbortOperation(
                    f"Unable to parse config file: '{self._path}' -- unexpected '}}' at line {tok.line}")
            if tok.kind in ("ident", "str") and nxt is not None:
                # a name: dotted identifiers and quoted segments (`process.'withName:X'.cpus`)
                parts, end = self._name(toks, pos)
                after = toks[end] if end < len(toks) else None
                if after is not None and after.text == "=":
                    value, pos = self._value(toks, end + 1)
                    self._assign(target, parts, value, prefix)
                    continue
                if after is not None and after.text == "{":
                    pos = self._block(toks, end + 1, self._sub(target, parts), True, prefix + parts)
                    continue
                if nxt.text == ":" and tok.text in ("withName", "withLabel"):
                    end = pos + 2
                    while end < len(toks) and toks[end].text not in ("{", "\n"):
                        end += 1
                    if end < len(toks) and toks[end].text == "{":
                        words = toks[pos + 2:end]
                        selector = "".join(self._string(t.text) if t.kind == "str" else t.text for t in words)
                        key = (f"{tok.text}:{selector.strip()}",)
                        pos = self._block(toks, end + 1, self._sub(target, key), True, prefix + key)
                        continue
                if tok.text in ("includeConfig", "id") and nxt.kind in ("str", "op"):
                    value, pos = self._value(toks, pos + 1)
                    if isinstance(value, str) and tok.text == "includeConfig":
                        self._include(value, target, prefix)
                    elif isinstance(value, str):
                        ids = target.setdefault("id", [])
                        if isinstance(ids, list):
                            ids.append(value)
                    continue
            pos = self._skip_statement(toks, pos)

    def _name(self, toks: list[Tok], pos: int) -> tuple[tuple[str, ...], int]:
        parts: list[str] = []
        while pos < len(toks) and toks[pos].kind in ("ident", "str"):
            tok = toks[pos]
            parts.extend(tok.text.split(".") if tok.kind == "ident" else [self._string(tok.text)])
            pos += 1
            if not (pos + 1 < len(toks) and toks[pos].text == "." and toks[pos + 1].kind in ("ident", "str")):
                break
            pos += 1
        return tuple(parts), pos

    def _include(self, name: str, target: dict[str, Any], prefix: tuple[str, ...]) -> None:
        path = Path(name) if os.path.isabs(name) else self._path.parent / name
        included = self.parse_file(path, self._depth + 1, prefix)
        merged = deep_merge(target, included)
        target.clear()
        target.update(merged)

    def _sub(self, target: dict[str, Any], parts: tuple[str, ...]) -> dict[str, Any]:
        node = target
        for part in parts:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        return node

    def _assign(self, target: dict[str, Any], parts: tuple[str, ...], value: Any, prefix: tuple[str, ...]) -> None:
        self._sub(target, parts[:-1])[parts[-1]] = value
        full = prefix + parts
        # `${params.x}` later in the config sees params assigned before it; CLI/params-file values still win
        if len(full) >= 2 and full[0] == "params" and full[1] not in self.context.get("overrides", {}):
            self._sub(self.context.setdefault("params", {}), full[1:-1])[full[-1]] = _plain(value)

    def _skip_statement(self, toks: list[Tok], pos: int) -> int:
        depth = 0
        while pos < len(toks):
            t = toks[pos].text
            if depth == 0 and t in ("\n", ";"):
                return pos + 1
            if t in ("{", "[", "("):
                depth += 1
            elif t in ("}", "]", ")"):
                if depth == 0:
                    return pos  # the enclosing block's brace
                depth -= 1
            pos += 1
        return pos

    def _value(self, toks: list[Tok], pos: int) -> tuple[Any, int]:
        start = pos
        depth = 0
        while pos < len(toks):
            t = toks[pos].text
            if depth == 0 and (t in ("\n", ";") or t == "}"):
                break
            if t in ("{", "[", "("):
                depth += 1
            elif t in ("}", "]", ")"):
                depth -= 1
            pos += 1
        value = self._expr(toks[start:pos])
        return value, pos

    def _expr(self, toks: list[Tok]) -> Any:
        toks = [t for t in toks if t.kind != "nl"]
        if not toks:
            return None
        if len(toks) == 2 and toks[0].text == "-" and toks[1].kind == "num":
            value = self._literal(toks[1])
            return -value if isinstance(value, (int, float)) else Raw("-" + str(value))
        if len(toks) == 1:
            return self._literal(toks[0])
        if toks[0].text == "[" and toks[-1].text == "]":
            try:
                return self._collection(toks[1:-1])
            except ValueError:
                pass
        return Raw(" ".join(t.text for t in toks))

    def _collection(self, toks: list[Tok]) -> Any:
        if len(toks) == 1 and toks[0].text == ":":
            return {}
        items: list[list[Tok]] = [[]]
        depth = 0
        for t in toks:
            if t.text in ("[", "{", "("):
                depth += 1
            elif t.text in ("]", "}", ")"):
                depth -= 1
            if depth == 0 and t.text == ",":
                items.append([])
            else:
                items[-1].append(t)
        items = [i for i in items if i]
        is_map = bool(items) and all(len(i) >= 2 and i[1].text == ":" for i in items)
        if is_map:
            out: dict[str, Any] = {}
            for i in items:
                key = self._string(i[0].text) if i[0].kind == "str" else i[0].text
                out[key] = self._expr(i[2:])
            return out
        if any(len(i) >= 2 and i[1].text == ":" for i in items):
            raise ValueError("mixed collection")
        return [self._expr(i) for i in items]

    def _literal(self, tok: Tok) -> Any:
        if tok.kind == "str":
            return self._string(tok.text)
        if tok.kind == "num":
            m = re.fullmatch(r"(\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)(?:\.([A-Za-z]+))?", tok.text)
            assert m is not None
            number = float(m.group(1)) if re.search(r"[.eE]", m.group(1)) else int(m.group(1))
            unit = (m.group(2) or "").lower()
            if not unit:
                return number
            if unit in _MEM_UNITS:
                return int(number * 1024 ** _MEM_UNITS[unit])
            if unit in _TIME_UNITS:
                return int(number * _TIME_UNITS[unit])
            return Raw(tok.text)
        if tok.kind == "ident":
            if tok.text == "true":
                return True
            if tok.text == "false":
                return False
            if tok.text == "null":
                return None
            resolved = self._lookup(tok.text)
            return resolved if resolved is not _MISSING else Raw(tok.text)
        return Raw(tok.text)

    def _lookup(self, name: str) -> Any:
        if name.startswith("params."):
            return dig(self.context.get("params", {}), name[len("params."):], _MISSING)
        if name in ("projectDir", "baseDir", "launchDir"):
            return self.context.get(name, _MISSING)
        return _MISSING

    def _string(self, text: str) -> str:
        if text[:3] in ("'''", '"""'):
            quote, body = text[:3], text[3:-3]
        else:
            quote, body = text[0], text[1:-1]
        # an escaped `\$` must survive interpolation: park it as a NUL
        body = re.sub(r"\\(.)", lambda m: "\x00" if m.group(1) == "$" else _ESCAPES.get(m.group(1), m.group(0)), body)
        if quote.startswith('"'):
            def interpolate(m: re.Match[str]) -> str:
                name = m.group(1) or m.group(2)
                value = self._lookup(name)
                return m.group(0) if value is _MISSING else groovy_str(value)

            body = re.sub(r"\$\{\s*([A-Za-z_][\w.]*)\s*\}|\$([A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)*)", interpolate, body)
        return body.replace("\x00", "$")


_MISSING = object()


def load_config(files: list[Path], profiles: list[str], context: dict[str, Any]) -> tuple[dict[str, Any], list[Path]]:
    """Parse and merge config files, then apply the selected profiles; returns (config, files read)."""
    parser = ConfigParser(context)
    merged: dict[str, Any] = {}
    known_profiles: set[str] = {"standard"}
    for path in files:
        cfg = parser.parse_file(path)
        file_profiles = cfg.pop("profiles", {}) if isinstance(cfg.get("profiles"), dict) else {}
        known_profiles.update(file_profiles)
        for name in profiles:
            if isinstance(file_profiles.get(name), dict):
                cfg = deep_merge(cfg, file_profiles[name])
        merged = deep_merge(merged, cfg)
        # later files see the params of earlier ones (CLI/params-file values still win)
        context["params"] = deep_merge(merged.get("params", {}) if isinstance(merged.get("params"), dict) else {},
                                       context.get("overrides", {}))
    for name in profiles:
        if name not in known_profiles:
            msg = f"Unknown configuration profile: '{name}'"
            close = difflib.get_close_matches(name, sorted(known_profiles - {"standard"}), n=5, cutoff=0.5)
            if close:
                msg += "\n\nDid you mean one of these?\n" + "\n".join(f"    {c}" for c in close)
            raise AbortOperation(msg)
    return merged, parser.files


# ---- History, cache ---------------------------------------------------------------------------------------------


@dataclass
class HistoryEntry:
    timestamp: str
    duration: str
    run_name: str
    status: str
    revision: str
    session_id: str
    command: str


class History:
    """`.nextflow/history` in the launch dir: one tab-separated line per run."""

    def __init__(self, launch_dir: Path) -> None:
        self.path = launch_dir / ".nextflow" / "history"

    def entries(self) -> list[HistoryEntry]:
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except OSError:
            return []
        out = []
        for line in lines:
            parts = line.split("\t")
            if len(parts) >= 7:
                out.append(HistoryEntry(*parts[:6], "\t".join(parts[6:])))
        return out

    @contextlib.contextmanager
    def _locked(self) -> Any:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+", encoding="utf-8") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield fh
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def write(self, run_name: str, session_id: str, revision: str, command: str) -> None:
        stamp = datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        with self._locked() as fh:
            fh.write("\t".join([stamp, "-", run_name, "-", revision, session_id, command]) + "\n")

    def update(self, run_name: str, session_id: str, success: bool, duration_ms: int) -> None:
        with self._locked() as fh:
            fh.seek(0)
            lines = fh.read().splitlines()
            for i, line in enumerate(lines):
                parts = line.split("\t")
                if len(parts) >= 7 and parts[2] == run_name and parts[5] == session_id:
                    parts[1] = fmt_duration(duration_ms)
                    parts[3] = "OK" if success else "ERR"
                    lines[i] = "\t".join(parts)
            fh.seek(0)
            fh.truncate()
            fh.write("".join(line + "\n" for line in lines))


class TaskCache:
    """`.nextflow/cache/<session>/db/`: which task hashes succeeded (for -resume), locked while running."""

    def __init__(self, launch_dir: Path, session_id: str, run_name: str) -> None:
        self.dir = launch_dir / ".nextflow" / "cache" / session_id / "db"
        self.session_id = session_id
        self.run_name = run_name
        self._lock: IO[str] | None = None
        self.entries: dict[str, dict[str, Any]] = {}

    def open(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.dir / "LOCK", "a", encoding="utf-8")  # noqa: SIM115 - held for the run
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            self._lock = None
            raise AbortOperation(f"Unable to acquire lock on session with ID {self.session_id}") from None
        with contextlib.suppress(OSError):
            for line in (self.dir / "fake-cache.jsonl").read_text(encoding="utf-8").splitlines():
                with contextlib.suppress(ValueError):
                    entry = json.loads(line)
                    self.entries[entry["hash"]] = entry
        (self.dir / f"index.{self.run_name}").touch()

    def put(self, full_hash: str, record: dict[str, Any], outputs: list[str]) -> None:
        entry = {"hash": full_hash, "trace": record, "outputs": outputs}
        self.entries[full_hash] = entry
        with open(self.dir / "fake-cache.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry) + "\n")

    def index(self, record: dict[str, Any]) -> None:
        with contextlib.suppress(OSError), open(self.dir / f"index.{self.run_name}", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")

    def close(self) -> None:
        if self._lock is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock, fcntl.LOCK_UN)
                self._lock.close()
            self._lock = None


# ---- Weblog -----------------------------------------------------------------------------------------------------


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class WebLog:
    """The nf-weblog observer: one POST per event, in order (synchronous here), never retried."""

    def __init__(self, url: str, basic_token: str | None, console: Console) -> None:
        if not WEBLOG_URL_RE.fullmatch(url):
            raise ConsoleError(f"Only http and https are supported -- The given URL was: {url}")
        if basic_token is not None and ":" not in basic_token:
            raise ConsoleError("Invalid auth token provided - should be 'USERNAME:PASSWORD'.")
        self.url = url
        self.auth = "Basic " + base64.b64encode(basic_token.encode()).decode() if basic_token else None
        self.console = console
        self.run_name = ""
        self.run_id = ""
        self._opener = urllib.request.build_opener(_NoRedirect())
        timeout = os.environ.get("FAKE_NEXTFLOW_HTTP_TIMEOUT")
        self.timeout = float(timeout) if timeout else None

    def send(self, event: str, trace: dict[str, Any] | None = None, metadata: dict[str, Any] | None = None) -> None:
        message: dict[str, Any] = {
            "runName": self.run_name,
            "runId": self.run_id,
            "event": event,
            "utcTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        if trace is not None:
            message["trace"] = trace
        if metadata is not None:
            message["metadata"] = metadata
        body = json.dumps(message, separators=(",", ":"), ensure_ascii=True).encode("ascii")
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"Nextflow/{VERSION}",
            "Accept": "text/html, image/gif, image/jpeg, *; q=.2, */*; q=.2",
            "Traceparent": f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01",
        }
        if self.auth:
            headers["Authorization"] = self.auth
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            kwargs = {"timeout": self.timeout} if self.timeout else {}
            with self._opener.open(request, **kwargs) as resp:
                resp.read()
                code = resp.status
            self.console.log(f"Successfully sent message to {self.url} -- received status code {code}.",
                             logger="nextflow.weblog.WebLogObserver", thread="WebLog-1")
        except urllib.error.HTTPError as exc:
            if 300 <= exc.code < 400:  # Java does not treat a 3xx as an error either
                return
            if exc.code in (404, 410):
                self.console.warn(self.url, throttle=True)  # FileNotFoundException: the message is the URL
            else:
                self.console.warn(f"Server returned HTTP response code: {exc.code} for URL: {self.url}", throttle=True)
        except (urllib.error.URLError, OSError) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            if isinstance(reason, ConnectionRefusedError):
                text = "java.net.ConnectException: Connection refused"
            elif isinstance(reason, TimeoutError):
                text = "java.net.SocketTimeoutException: Read timed out"
            else:
                text = f"java.io.IOException: {getattr(reason, 'strerror', None) or reason}"
            self.console.warn(text, throttle=True)


# ---- Trace file -------------------------------------------------------------------------------------------------

_FIELD_TYPES = {
    "task_id": "num", "hash": "str", "native_id": "str", "process": "str", "tag": "str", "name": "str",
    "status": "str", "exit": "num", "module": "str", "container": "str", "cpus": "num", "time": "time",
    "disk": "mem", "memory": "mem", "attempt": "num", "submit": "date", "start": "date", "complete": "date",
    "duration": "time", "realtime": "time", "queue": "str", "%cpu": "perc", "%mem": "perc", "rss": "mem",
    "vmem": "mem", "peak_rss": "mem", "peak_vmem": "mem", "rchar": "mem", "wchar": "mem", "syscr": "num",
    "syscw": "num", "read_bytes": "mem", "write_bytes": "mem", "vol_ctxt": "num", "inv_ctxt": "num", "env": "str",
    "workdir": "str", "script": "str", "scratch": "str", "error_action": "str", "hostname": "str",
    "cpu_model": "str",
}


class TraceFile:
    """The `trace {}` report: a header line, then one row per finished (or cached/aborted) task."""

    def __init__(self, path: Path, fields: list[str], sep: str, raw: bool) -> None:
        self.path = path
        self.fields = fields
        self.sep = sep
        self.raw = raw
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(path, "w", encoding="utf-8")  # noqa: SIM115 - written row by row during the run
        self._fh.write(sep.join(fields) + "\n")
        self._fh.flush()

    def _fmt(self, name: str, value: Any) -> str:
        kind = _FIELD_TYPES.get(name, "str")
        if value is None or (name == "exit" and value == INT_MAX):
            return "-"
        if self.raw:
            return str(value).replace("\n", " ").replace(self.sep, " ") if kind == "str" else str(value)
        if kind == "date":
            return datetime.fromtimestamp(value / 1000).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] if value else "-"
        if kind == "time":
            return fmt_duration(value)
        if kind == "mem":
            return fmt_memory(value)
        if kind == "perc":
            return f"{value:.1f}%"
        if isinstance(value, list):
            return ",".join(str(v) for v in value) or "-"
        return str(value).replace("\n", " ").replace(self.sep, " ")

    def write(self, record: dict[str, Any]) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._fh.write(self.sep.join(self._fmt(f, record.get(f)) for f in self.fields) + "\n")
            self._fh.flush()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._fh.close()


# ---- Pipeline -----------------------------------------------------------------------------------------------------


@dataclass
class Pipeline:
    display: str
    script_file: Path
    project_dir: Path
    project_name: str
    repository: str | None = None
    commit_id: str | None = None
    revision: str | None = None

    @property
    def script_id(self) -> str:
        try:
            return hashlib.md5(self.script_file.read_bytes()).hexdigest()
        except OSError:
            return hashlib.md5(str(self.script_file).encode()).hexdigest()

    @property
    def revision_id(self) -> str:
        return self.commit_id or self.script_id


def main_script_name(project_dir: Path, main_script: str | None) -> str:
    if main_script:
        return main_script
    cfg = project_dir / "nextflow.config"
    if cfg.is_file():
        with contextlib.suppress(AbortOperation):
            parsed = ConfigParser({"params": {}, "projectDir": str(project_dir)}).parse_file(cfg)
            name = dig(parsed, "manifest.mainScript")
            if isinstance(name, str) and name:
                return name
    return "main.nf"


def resolve_pipeline(source: str, revision: str | None, main_script: str | None, launch_dir: Path) -> Pipeline:
    path = Path(source) if os.path.isabs(source) else launch_dir / source
    if path.is_file():
        if revision:
            raise AbortOperation("Revision option cannot be used when running a local script")
        return Pipeline(source, path.resolve(), path.resolve().parent, path.name)
    if path.is_dir():
        if revision:
            raise AbortOperation("Revision option cannot be used when running a local script")
        script = path.resolve() / main_script_name(path, main_script)
        if not script.is_file():
            raise AbortOperation(f"Cannot find script file: {script}")
        shown = str(Path(source) / script.name)
        return Pipeline(shown, script, path.resolve(), script.name)
    m = REMOTE_RE.match(source)
    looks_local = source.startswith((".", "/", "~")) or source.endswith(".nf") or "/" not in source
    if m is None or looks_local:
        raise AbortOperation(f"Cannot find script file: {source}")
    owner, repo = m.group(1), m.group(2)
    home = Path(os.environ.get("NXF_HOME") or Path.home() / ".nextflow")
    assets = Path(os.environ.get("NXF_ASSETS") or home / "assets")
    project_dir = assets / owner / repo
    project_name = f"{owner}/{repo}"
    url = f"https://github.com/{project_name}"
    if not project_dir.is_dir():
        raise AbortOperation(
            f"Unknown project `{project_name}` -- NOTE: automatic download from remote repositories is disabled")
    spec = read_spec(project_dir)
    allowed = spec.get("revisions") if isinstance(spec, dict) else None
    rev = revision or "main"
    if revision and isinstance(allowed, list) and revision not in allowed:
        raise AbortOperation(
            f"Cannot find revision `{revision}` -- Make sure that it exists in the remote repository `{url}`")
    script = project_dir / main_script_name(project_dir, main_script)
    if not script.is_file():
        raise AbortOperation(f"Cannot find script file: {script}")
    commit = hashlib.sha1(f"{project_name}@{rev}".encode()).hexdigest()
    return Pipeline(url, script, project_dir, project_name, url, commit, rev)


def read_spec(project_dir: Path) -> dict[str, Any] | None:
    path = project_dir / "fake_nextflow.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return {"__error__": f"Invalid {path}: {exc}"}
    return data if isinstance(data, dict) else {"__error__": f"Invalid {path}: the top level must be an object"}


# ---- Tasks --------------------------------------------------------------------------------------------------------

_TEMPLATE_RE = re.compile(r"\{(item|index|attempt|process|tag|params(?:\.[A-Za-z_][\w-]*)+)((?:\|[a-z]+)*)\}")
_FILTERS = {"upper": str.upper, "lower": str.lower, "strip": str.strip, "title": str.title}
_TASK_KEYS = {
    "process", "each", "when", "after", "tag", "seconds", "exit", "stdout", "stderr", "error_strategy",
    "max_retries", "ignore_sigterm", "script", "outputs", "publish_dir", "publish_mode", "cpus", "memory", "time",
    "container", "queue",
}


def render(text: str, ctx: dict[str, Any], params: dict[str, Any]) -> str:
    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        value = dig(params, name[len("params."):]) if name.startswith("params.") else ctx.get(name)
        out = groovy_str(value)
        for flt in filter(None, m.group(2).split("|")):
            out = _FILTERS[flt](out)
        return out

    return _TEMPLATE_RE.sub(sub, text)


@dataclass
class Task:
    spec: dict[str, Any]
    process: str
    item: Any
    index: int | None
    tag: str | None
    name: str
    deps: list[Task]
    attempt: int = 1
    state: str = "PENDING"  # PENDING RUNNING COMPLETED FAILED ABORTED CACHED SKIPPED
    task_id: int = 0
    hash: str = ""
    workdir: Path = Path()
    proc: subprocess.Popen[bytes] | None = None
    submit_ms: int = 0
    start_ms: int = 0
    complete_ms: int = 0
    exit: int = INT_MAX
    error_action: str | None = None
    successor: Task | None = None
    record: dict[str, Any] = field(default_factory=dict)
    script: str = ""
    outputs: list[tuple[str, str]] = field(default_factory=list)
    stdout: str = ""
    stderr: str = ""
    bad_output: str | None = None

    @property
    def hash_log(self) -> str:
        return f"{self.hash[:2]}/{self.hash[2:8]}"

    def final(self) -> Task:
        task = self
        while task.successor is not None:
            task = task.successor
        return task


def validate_spec(spec: dict[str, Any]) -> None:
    if "__error__" in spec:
        raise ScriptError(spec["__error__"])
    tasks = spec.get("tasks")
    if not isinstance(tasks, list):
        raise ScriptError("fake_nextflow.json: `tasks` must be a list")
    for i, entry in enumerate(tasks):
        where = f"fake_nextflow.json: tasks[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("process"), str) or not entry["process"]:
            raise ScriptError(f"{where}: `process` (a non-empty string) is required")
        unknown = set(entry) - _TASK_KEYS
        if unknown:
            raise ScriptError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        strategy = entry.get("error_strategy", "terminate")
        if strategy not in ERROR_STRATEGIES:
            raise ScriptError(f"{where}: error_strategy must be one of {', '.join(ERROR_STRATEGIES)}")
        exits = entry.get("exit", 0)
        exit_list = isinstance(exits, list) and exits and all(isinstance(e, int) for e in exits)
        if not (isinstance(exits, int) or exit_list):
            raise ScriptError(f"{where}: exit must be an integer or a non-empty list of integers")
        if not isinstance(entry.get("seconds", 0.1), (int, float)):
            raise ScriptError(f"{where}: seconds must be a number")
        if not isinstance(entry.get("outputs", {}), dict):
            raise ScriptError(f"{where}: outputs must be an object")
        for key in ("tag", "stdout", "stderr", "script", "publish_dir", "publish_mode"):
            value = entry.get(key)
            if value is not None and not isinstance(value, str):
                raise ScriptError(f"{where}: {key} must be a string")
            for m in re.finditer(r"\|([a-z]+)\}", value or ""):
                if m.group(1) not in _FILTERS:
                    raise ScriptError(f"{where}: unknown template filter |{m.group(1)}")


def expand_items(entry: dict[str, Any], params: dict[str, Any], launch_dir: Path) -> list[Any] | None:
    each = entry.get("each")
    if each is None:
        return None
    if isinstance(each, list):
        return list(each)
    if isinstance(each, dict) and "lines_of" in each:
        name = each["lines_of"]
        value = dig(params, name)
        if value in (None, "", False):
            raise ScriptError(f"Missing required parameter: --{name}")
        path = Path(str(value)).expanduser()
        path = path if path.is_absolute() else launch_dir / path
        try:
            lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        except (OSError, UnicodeDecodeError):
            raise ScriptError(f"No files match pattern `{path.name}` at path: {path.parent}/") from None
        items: list[Any] = [line for line in lines if line]
        limit = each.get("limit")
        if isinstance(limit, str):
            limit = dig(params, limit)
        if isinstance(limit, int) and not isinstance(limit, bool) and limit >= 0:
            items = items[:limit]
        return items
    if isinstance(each, dict) and "param" in each:
        value = dig(params, each["param"])
        if value is None:
            return []
        if isinstance(value, list):
            return value
        return [v.strip() for v in str(value).split(",") if v.strip()]
    raise ScriptError("fake_nextflow.json: `each` must be a list, {\"lines_of\": param} or {\"param\": name}")


def default_spec(script_file: Path) -> dict[str, Any]:
    try:
        text = script_file.read_text(encoding="utf-8")
    except OSError:
        text = ""
    names = re.findall(r"^\s*process\s+([A-Za-z_]\w*)\s*\{", text, re.MULTILINE)
    return {"tasks": [{"process": n, "seconds": 0.1} for n in dict.fromkeys(names)]}


# ---- Workflow stats -----------------------------------------------------------------------------------------------

_PROGRESS_KEYS = ("pending", "submitted", "running", "succeeded", "cached", "failed", "aborted", "stored", "ignored",
                  "retries")


class Stats:
    """WorkflowStats + one ProgressRecord per process, serialised like the real getters."""

    def __init__(self) -> None:
        self.procs: dict[str, dict[str, Any]] = {}
        self.succeed_ms = 0
        self.failed_ms = 0
        self.cached_ms = 0
        self.load_cpus = 0
        self.load_memory = 0
        self.peak_running = 0
        self.peak_cpus = 0
        self.peak_memory = 0
        self.change = now_ms()

    def _proc(self, task: Task) -> dict[str, Any]:
        if task.process not in self.procs:
            rec: dict[str, Any] = {k: 0 for k in _PROGRESS_KEYS}
            rec.update(index=len(self.procs) + 1, name=task.process, loadCpus=0, loadMemory=0, peakRunning=0,
                       peakCpus=0, peakMemory=0, errored=False, terminated=False)
            self.procs[task.process] = rec
        rec = self.procs[task.process]
        rec.update(hash=task.hash_log, workDir=str(task.workdir), taskName=task.name)
        self.change = now_ms()
        return rec

    def submitted(self, task: Task) -> None:
        rec = self._proc(task)
        rec["submitted"] += 1

    def running(self, task: Task) -> None:
        rec = self._proc(task)
        rec["submitted"] -= 1
        rec["running"] += 1
        cpus, mem = task.record.get("cpus") or 1, task.record.get("memory") or 0
        rec["loadCpus"] += cpus
        rec["loadMemory"] += mem
        rec["peakRunning"] = max(rec["peakRunning"], rec["running"])
        rec["peakCpus"] = max(rec["peakCpus"], rec["loadCpus"])
        rec["peakMemory"] = max(rec["peakMemory"], rec["loadMemory"])
        self.load_cpus += cpus
        self.load_memory += mem
        self.peak_running = max(self.peak_running, sum(p["running"] for p in self.procs.values()))
        self.peak_cpus = max(self.peak_cpus, self.load_cpus)
        self.peak_memory = max(self.peak_memory, self.load_memory)

    def finished(self, task: Task, outcome: str) -> None:
        # outcome: succeeded | failed | ignored | retried | aborted
        rec = self._proc(task)
        if task.start_ms == 0:  # aborted before it began running
            rec["submitted"] -= 1
            rec["aborted"] += 1
            return
        rec["running"] -= 1
        cpus, mem = task.record.get("cpus") or 1, task.record.get("memory") or 0
        rec["loadCpus"] -= cpus
        rec["loadMemory"] -= mem
        self.load_cpus -= cpus
        self.load_memory -= mem
        cpu_time = int(task.record.get("realtime") or 0) * cpus
        if outcome == "succeeded":
            rec["succeeded"] += 1
            self.succeed_ms += cpu_time
        elif outcome == "aborted":
            rec["aborted"] += 1
        else:
            rec["failed"] += 1
            self.failed_ms += cpu_time
            if outcome == "ignored":
                rec["ignored"] += 1
            elif outcome == "retried":
                rec["retries"] += 1
            else:
                rec["errored"] = True

    def cached(self, task: Task) -> None:
        rec = self._proc(task)
        rec["cached"] += 1
        self.cached_ms += int(task.record.get("realtime") or 0) * (task.record.get("cpus") or 1)

    def terminate(self) -> None:
        for rec in self.procs.values():
            rec["terminated"] = True

    def to_json(self) -> dict[str, Any]:
        tot = {k: sum(p[k] for p in self.procs.values()) for k in _PROGRESS_KEYS}
        effective_failed = tot["failed"] - tot["ignored"] - tot["retries"]
        base = tot["succeeded"] + tot["cached"] + tot["ignored"] + effective_failed

        def pct(n: int) -> float:
            return round(n * 100 / base, 2) if base else 0.0

        cpu_ms = self.succeed_ms + self.failed_ms + self.cached_ms
        processes = []
        for rec in self.procs.values():
            total = sum(rec[k] for k in _PROGRESS_KEYS if k not in ("ignored", "retries"))
            completed = rec["succeeded"] + rec["failed"] + rec["cached"] + rec["stored"]
            processes.append({
                "index": rec["index"], "name": rec["name"], "hash": rec["hash"], "workDir": rec["workDir"],
                "taskName": rec["taskName"], **{k: rec[k] for k in _PROGRESS_KEYS},
                "terminated": rec["terminated"], "errored": rec["errored"], "loadCpus": rec["loadCpus"],
                "loadMemory": rec["loadMemory"], "peakRunning": rec["peakRunning"], "peakCpus": rec["peakCpus"],
                "peakMemory": rec["peakMemory"], "totalCount": total, "completedCount": completed,
            })
        return {
            "succeededCount": tot["succeeded"],
            "succeedCount": tot["succeeded"],
            "failedCount": tot["failed"],
            "ignoredCount": tot["ignored"],
            "cachedCount": tot["cached"],
            "retriesCount": tot["retries"],
            "abortedCount": tot["aborted"],
            "pendingCount": tot["pending"],
            "submittedCount": tot["submitted"],
            "runningCount": tot["running"],
            "effectiveFailedCount": effective_failed,
            "totalCount": sum(p["totalCount"] for p in processes),
            "succeedCountFmt": fmt_count(tot["succeeded"]),
            "cachedCountFmt": fmt_count(tot["cached"]),
            "failedCountFmt": fmt_count(tot["failed"]),
            "ignoredCountFmt": fmt_count(tot["ignored"]),
            "succeedPct": pct(tot["succeeded"]),
            "cachedPct": pct(tot["cached"]),
            "ignoredPct": pct(tot["ignored"]),
            "effectiveFailedPct": pct(effective_failed),
            "succeedDuration": self.succeed_ms,
            "failedDuration": self.failed_ms,
            "cachedDuration": self.cached_ms,
            "computeTimeFmt": "(a few seconds)" if cpu_ms < 180_000 else f"{cpu_ms / 3_600_000:.1f}",
            "loadCpus": self.load_cpus,
            "loadMemory": self.load_memory,
            "loadMemoryFmt": fmt_memory(self.load_memory),
            "peakRunning": self.peak_running,
            "peakCpus": self.peak_cpus,
            "peakMemory": self.peak_memory,
            "peakMemoryFmt": fmt_memory(self.peak_memory),
            "progressLength": len(processes),
            "changeTimestamp": self.change,
            "processes": processes,
        }


# ---- Command line ---------------------------------------------------------------------------------------------


@dataclass
class RunOptions:
    pipeline: str | None = None
    script_args: list[str] = field(default_factory=list)
    params_file: str | None = None
    name: str | None = None
    work_dir: str | None = None
    profile: str | None = None
    configs: list[str] = field(default_factory=list)
    revision: str | None = None
    resume: str | None = None  # None: no resume; "last" or a session id
    weblog: str | None = None  # "-" = enabled without a URL
    trace: str | None = None
    output_dir: str | None = None
    queue_size: int | None = None
    main_script: str | None = None
    cli_params: dict[str, Any] = field(default_factory=dict)


def parse_param_value(raw: str | None) -> Any:
    if raw is None:
        return True
    if os.environ.get("NXF_SYNTAX_PARSER") == "v2" or os.environ.get("NXF_DISABLE_PARAMS_TYPE_DETECTION"):
        return raw
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    if re.fullmatch(r"-?\d+", raw):
        return int(raw)
    if re.fullmatch(r"-?(\d+\.\d*|\.\d+)([eE][+-]?\d+)?|-?\d+[eE][+-]?\d+", raw):
        return float(raw)
    return raw


def set_cli_param(params: dict[str, Any], key: str, value: Any) -> None:
    parts = [kebab_to_camel(p.replace("\x00", ".")) for p in key.replace("\\.", "\x00").split(".")]
    node = params
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


def parse_run_args(args: list[str]) -> RunOptions:
    opts = RunOptions()
    i = 0

    def value_of(opt: str) -> str:
        nonlocal i
        if i + 1 >= len(args):
            raise AbortOperation(f"Missing value for option: {opt}")
        i += 1
        return args[i]

    def optional_value() -> str | None:
        nonlocal i
        if i + 1 < len(args) and not args[i + 1].startswith("-"):
            i += 1
            return args[i]
        return None

    while i < len(args):
        arg = args[i]
        if arg.startswith("--") and len(arg) > 2:
            key, eq, val = arg[2:].partition("=")
            if not eq:
                nxt = args[i + 1] if i + 1 < len(args) else None
                if nxt is not None and (not nxt.startswith("-") or re.fullmatch(r"-\d+(\.\d+)?", nxt) or " " in nxt):
                    val = nxt
                    i += 1
                else:
                    val = None  # type: ignore[assignment]
            set_cli_param(opts.cli_params, key, parse_param_value(val))
        elif arg in ("-params-file",):
            opts.params_file = value_of(arg)
        elif arg == "-name":
            opts.name = value_of(arg)
        elif arg in ("-w", "-work-dir"):
            opts.work_dir = value_of(arg)
        elif arg == "-profile":
            opts.profile = value_of(arg)
        elif arg in ("-c", "-config"):
            opts.configs.append(value_of(arg))
        elif arg in ("-r", "-revision"):
            opts.revision = value_of(arg)
        elif arg in ("-o", "-output-dir"):
            opts.output_dir = value_of(arg)
        elif arg in ("-qs", "-queue-size"):
            raw = value_of(arg)
            if not raw.isdigit():
                raise AbortOperation(f"Invalid value for option {arg}: {raw}")
            opts.queue_size = int(raw)
        elif arg == "-main-script":
            opts.main_script = value_of(arg)
        elif arg == "-resume":
            nxt = args[i + 1] if i + 1 < len(args) else ""
            if nxt == "last" or UUID_RE.match(nxt):
                opts.resume = nxt
                i += 1
            else:
                opts.resume = "last"
        elif arg == "-with-weblog":
            opts.weblog = optional_value() or "-"
        elif arg == "-with-trace":
            opts.trace = optional_value() or "-"
        elif arg == "-bg":
            raise AbortOperation("Option -bg is not supported by fake_nextflow")
        elif arg in RUN_VALUE_OPTS:
            value_of(arg)
        elif arg in RUN_OPTIONAL_VALUE_OPTS:
            optional_value()
        elif arg in RUN_FLAGS or re.match(r"^-(e|process|executor)\.", arg):
            pass
        elif arg == "-":
            opts.pipeline = opts.pipeline or arg
        elif arg.startswith("-"):
            raise AbortOperation(
                f"Unknown option: {arg} -- Check the available commands and options and syntax with 'help'")
        elif opts.pipeline is None:
            opts.pipeline = arg
        else:
            opts.script_args.append(arg)
        i += 1
    return opts


def read_params_file(name: str, launch_dir: Path) -> dict[str, Any]:
    path = Path(name) if os.path.isabs(name) else launch_dir / name
    ext = path.suffix.lower().lstrip(".")
    if ext not in ("json", "yml", "yaml"):
        raise AbortOperation(
            f"Not a valid params file extension: {name} -- It must be one of the following: json,yml,yaml")
    if not path.is_file():
        raise AbortOperation(f"Specified params file does not exist: {path}")
    try:
        text = path.read_text(encoding="utf-8")
        if ext == "json":
            data = json.loads(text)
        else:
            try:
                import yaml  # type: ignore[import-untyped]
            except ImportError:
                raise AbortOperation(f"Cannot parse params file: {path} - Cause: YAML needs PyYAML, which this "
                                     "python lacks (fake_nextflow)") from None
            data = yaml.safe_load(text)
    except AbortOperation:
        raise
    except Exception as exc:
        raise AbortOperation(f"Cannot parse params file: {path} - Cause: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise AbortOperation(f"Cannot parse params file: {path} - Cause: the file content must be a map")
    return {kebab_to_camel(str(k)): v for k, v in data.items()}


# ---- The run --------------------------------------------------------------------------------------------------


class FakeRun:
    """One `nextflow run` session."""

    def __init__(self, console: Console, argv: list[str], global_configs: list[str], only_configs: list[str] | None,
                 opts: RunOptions) -> None:
        self.console = console
        self.argv = argv
        self.global_configs = global_configs
        self.only_configs = only_configs
        self.opts = opts
        self.launch_dir = Path.cwd()
        self.history = History(self.launch_dir)
        self.signal_name: str | None = None
        self.sigint_count = 0
        self.tasks: list[Task] = []
        self.next_task_id = 1
        self.stats = Stats()
        self.weblog: WebLog | None = None
        self.trace: TraceFile | None = None
        self.cache: TaskCache | None = None
        self.resume = False
        self.fault: Task | None = None
        self.finishing = False
        self.complete_ms: int | None = None

    # -- start-up (no events yet) --

    def _check_name(self) -> str:
        ignore_history = os.environ.get("NXF_IGNORE_RESUME_HISTORY", "").lower() == "true"
        name = self.opts.name
        if name == "last":
            raise AbortOperation("Not a valid run name: `last`")
        if name is not None and not RUN_NAME_RE.fullmatch(name):
            raise AbortOperation(f"Not a valid run name: `{name}` -- It must match the pattern {RUN_NAME_RE.pattern}")
        used = set() if ignore_history else {e.run_name for e in self.history.entries()}
        if name is None:
            if ignore_history:
                raise AbortOperation("Missing workflow run name")
            while True:
                name = f"{random.choice(NAME_ADJECTIVES)}_{random.choice(NAME_SURNAMES)}"
                if name not in used:
                    return name
        if name in used:
            raise AbortOperation(f"Run name `{name}` has been already used -- Specify a different one")
        return name

    def _session_id(self) -> str:
        resume = self.opts.resume
        if resume is None:
            return os.environ.get("NXF_UUID") or str(uuid.uuid4())
        entries = self.history.entries()
        if resume == "last":
            if not entries:
                self.console.warn("It appears you have never run this project before -- Option `-resume` is ignored")
                return os.environ.get("NXF_UUID") or str(uuid.uuid4())
            self.resume = True
            return entries[-1].session_id
        if not any(e.session_id == resume for e in entries):
            raise AbortOperation(f"Can't find a run with the specified id: {resume} -- Execution can't be resumed")
        self.resume = True
        return resume

    def _build_config(self) -> None:
        overrides = self.params_file_values
        overrides = deep_merge(overrides, self.opts.cli_params)
        files: list[Path] = []
        if self.only_configs is not None:
            names = self.only_configs
        else:
            for candidate in (self.pipeline.project_dir / "nextflow.config", self.launch_dir / "nextflow.config"):
                if candidate.is_file() and candidate.resolve() not in [f.resolve() for f in files]:
                    files.append(candidate)
            names = self.global_configs + self.opts.configs
        for name in names:
            path = Path(name) if os.path.isabs(name) else self.launch_dir / name
            if not path.is_file():
                raise AbortOperation(f"The specified configuration file does not exist: {path} -- check the name or "
                                     "choose another file")
            files.append(path)
        profiles = [p for p in (self.opts.profile or "").split(",") if p]
        context = {"params": dict(overrides), "overrides": overrides, "projectDir": str(self.pipeline.project_dir),
                   "baseDir": str(self.pipeline.project_dir), "launchDir": str(self.launch_dir)}
        self.config, self.config_files = load_config(files, profiles, context)
        config_params = self.config.get("params") if isinstance(self.config.get("params"), dict) else {}
        self.params: dict[str, Any] = deep_merge(_plain(config_params), overrides)

    def _build_weblog(self) -> None:
        weblog = self.config.get("weblog") if isinstance(self.config.get("weblog"), dict) else {}
        enabled = weblog.get("enabled") is True
        url = weblog.get("url")
        if self.opts.weblog is not None:
            self.console.warn("The command line option '-with-weblog' is deprecated - consider enabling this feature "
                              "by setting 'weblog.enabled=true' in your configuration file")
            enabled = True
            if self.opts.weblog != "-":
                url = self.opts.weblog
        if not enabled:
            return
        token = weblog.get("basicToken")
        self.weblog = WebLog(str(url) if url is not None else "http://localhost",
                             str(token) if token is not None else None, self.console)

    def _build_trace(self) -> None:
        cfg = self.config.get("trace") if isinstance(self.config.get("trace"), dict) else {}
        enabled = cfg.get("enabled") is True or self.opts.trace is not None
        if not enabled:
            return
        name = self.opts.trace if self.opts.trace not in (None, "-") else cfg.get("file")
        if not name:
            stamp = datetime.now()
            millis = (stamp.hour * 3600 + stamp.minute * 60 + stamp.second) * 1000 + stamp.microsecond // 1000
            name = f"trace-{stamp:%Y%m%d}-{millis}.txt"
        path = Path(str(name)) if os.path.isabs(str(name)) else self.launch_dir / str(name)
        if path.exists() and cfg.get("overwrite") is not True:
            self.console.warn(f"Failed to create trace file: {path} -- Trace file already exists: {path}")
            return
        fields_raw = cfg.get("fields")
        fields = [f.strip() for f in str(fields_raw or DEFAULT_TRACE_FIELDS).split(",") if f.strip()]
        sep = cfg.get("sep") if isinstance(cfg.get("sep"), str) and cfg.get("sep") else "\t"
        self.trace = TraceFile(path, fields, sep, cfg.get("raw") is True)

    def start(self) -> int:
        opts = self.opts
        if opts.pipeline is None:
            raise AbortOperation("No project name was specified")
        self.run_name = self._check_name()
        self.console.info(f"N E X T F L O W  ~  version {VERSION}")
        self.pipeline = resolve_pipeline(opts.pipeline, opts.revision, opts.main_script, self.launch_dir)
        params_file = opts.params_file or os.environ.get("NXF_PARAMS_FILE")
        self.params_file_values = read_params_file(params_file, self.launch_dir) if params_file else {}
        self._build_config()
        self.session_id = self._session_id()
        work = opts.work_dir or self.config.get("workDir") or "work"
        self.work_dir = Path(str(work)) if os.path.isabs(str(work)) else self.launch_dir / str(work)
        out = opts.output_dir or self.config.get("outputDir") or "results"
        self.output_dir = Path(str(out)) if os.path.isabs(str(out)) else self.launch_dir / str(out)
        self._build_weblog()
        self.cache = TaskCache(self.launch_dir, self.session_id, self.run_name)
        self.cache.open()
        try:
            return self._run()
        finally:
            self.cache.close()

    # -- the session --

    def _install_signals(self) -> None:
        def handler(signum: int, _frame: Any) -> None:
            # Only flags and raw writes here: buffered IO is not reentrant and the main thread may be mid-write.
            if signum == signal.SIGINT:
                self.sigint_count += 1
                lines = {1: b"\n", 2: b"One more CTRL+C to force exit\n"}
                with contextlib.suppress(OSError):
                    os.write(1, lines.get(self.sigint_count, b"Adieu\n"))
                if self.sigint_count >= 3:
                    os._exit(1)
            if self.signal_name is None:
                self.signal_name = signal.Signals(signum).name

        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(sig, handler)

    def _run(self) -> int:
        self.start_ms = now_ms()
        self.history.write(self.run_name, self.session_id, self.pipeline.revision_id, self._command_line())
        self._install_signals()
        if self.weblog is not None:
            self.weblog.run_name = self.run_name
            self.weblog.run_id = self.session_id
        self._build_trace()
        self.console.log(f"Session UUID: {self.session_id}")
        self.console.log(f"Run name: {self.run_name}")
        self.console.log(f"Work-dir: {self.work_dir}")
        revision = self.pipeline.revision_id[:10]
        suffix = f" [{self.pipeline.revision}]" if self.pipeline.revision else ""
        self.console.info(f"Launching `{self.pipeline.display}` [{self.run_name}] DSL2 - revision: {revision}{suffix}")
        self._send("started", metadata=self._metadata(final=False))
        try:
            self._plan()
            self._loop()
        except ScriptError as exc:
            return self._finish_script_error(str(exc))
        return self._finish()

    def _command_line(self) -> str:
        return " ".join(["nextflow", *(cli_escape(a) for a in self.argv)])

    def _send(self, event: str, trace: dict[str, Any] | None = None, metadata: dict[str, Any] | None = None) -> None:
        self.console.log(f"weblog event: {event}", logger="nextflow.weblog.WebLogObserver")
        if self.weblog is not None:
            self.weblog.send(event, trace=trace, metadata=metadata)

    def _metadata(self, final: bool) -> dict[str, Any]:
        params = self.params
        if final:
            params = deep_merge(_plain(self.spec.get("script_params") or {}) if hasattr(self, "spec") else {}, params)
        manifest = {
            "author": None, "contributors": [], "defaultBranch": None, "description": None, "docsUrl": None,
            "doi": None, "gitmodules": None, "homePage": None, "icon": None, "license": None,
            "mainScript": "main.nf", "name": None, "nextflowVersion": None, "organization": None,
            "recurseSubmodules": False, "version": None,
        }
        cfg_manifest = self.config.get("manifest")
        if isinstance(cfg_manifest, dict):
            manifest.update({k: _plain(v) for k, v in cfg_manifest.items()})
        done = final and self.complete_ms is not None
        workflow = {
            "runName": self.run_name,
            "sessionId": self.session_id,
            "commandLine": self._command_line(),
            "scriptId": self.pipeline.script_id,
            "scriptFile": str(self.pipeline.script_file),
            "scriptName": self.pipeline.script_file.name,
            "projectDir": str(self.pipeline.project_dir),
            "projectName": self.pipeline.project_name,
            "repository": self.pipeline.repository,
            "commitId": self.pipeline.commit_id,
            "revision": self.pipeline.revision,
            "launchDir": str(self.launch_dir),
            "workDir": str(self.work_dir),
            "outputDir": str(self.output_dir),
            "homeDir": str(Path.home()),
            "userName": _user_name(),
            "profile": self.opts.profile or "standard",
            "configFiles": [str(p.resolve()) for p in self.config_files],
            "container": {},
            "containerEngine": None,
            "nextflow": {"version": VERSION, "build": BUILD, "timestamp": BUILD_TIME.strftime("%Y-%m-%dT%H:%M:00Z"),
                         "enable": {"dsl": 2}},
            "manifest": manifest,
            "start": offset_datetime(self.start_ms),
            "complete": offset_datetime(self.complete_ms) if done and self.complete_ms else None,
            "duration": (self.complete_ms - self.start_ms) if done and self.complete_ms else None,
            "success": self.success if done else False,
            "exitStatus": self.exit_status if done else None,
            "errorMessage": self.error_message if done else None,
            "errorReport": self.error_report if done else None,
            "resume": self.resume,
            "stubRun": False,
            "preview": False,
            "failOnIgnore": False,
            "wave": {"enabled": False},
            "fusion": {"enabled": False, "version": None},
            "stats": self.stats.to_json() if final else Stats().to_json(),
        }
        return {"parameters": params, "workflow": workflow}

    # -- planning --

    def _plan(self) -> None:
        spec = read_spec(self.pipeline.project_dir)
        self.spec: dict[str, Any] = spec if spec is not None else default_spec(self.pipeline.script_file)
        validate_spec(self.spec)
        self.params_for_templates = deep_merge(_plain(self.spec.get("script_params") or {}), self.params)
        if self.spec.get("runtime_error"):
            raise ScriptError(str(self.spec["runtime_error"]))
        by_process: dict[str, list[Task]] = {}
        process_cfg = self.config.get("process") if isinstance(self.config.get("process"), dict) else {}
        for entry in self.spec["tasks"]:
            when = entry.get("when")
            if when is not None and not dig(self.params_for_templates, str(when)):
                continue
            entry = self._apply_process_config(entry, process_cfg)
            items = expand_items(entry, self.params_for_templates, self.launch_dir)
            upstream = entry.get("after")
            upstream_names = [upstream] if isinstance(upstream, str) else list(upstream or [])
            expanded: list[tuple[Any, int | None]] = [(None, None)] if items is None else [
                (item, i + 1) for i, item in enumerate(items)]
            for item, index in expanded:
                ctx = {"item": item, "index": index, "attempt": 1, "process": entry["process"]}
                tag_tpl = entry.get("tag", "{item}" if items is not None else None)
                tag = render(tag_tpl, ctx, self.params_for_templates) if tag_tpl is not None else None
                if tag is not None:
                    name = f"{entry['process']} ({tag})"
                elif index is not None:
                    name = f"{entry['process']} ({index})"
                else:
                    name = entry["process"]
                deps: list[Task] = []
                for up in upstream_names:
                    candidates = by_process.get(up, [])
                    same = [t for t in candidates if items is not None and t.item == item]
                    deps.extend(same or candidates)
                task = Task(entry, entry["process"], item, index, tag, name, deps)
                self.tasks.append(task)
                by_process.setdefault(entry["process"], []).append(task)

    def _apply_process_config(self, entry: dict[str, Any], process_cfg: dict[str, Any]) -> dict[str, Any]:
        # config wins over the pipeline (like process directives): generic `process {}`, then withName selectors
        mapping = {"cpus": "cpus", "memory": "memory", "time": "time", "errorStrategy": "error_strategy",
                   "maxRetries": "max_retries", "container": "container", "queue": "queue"}
        scopes = [process_cfg]
        simple = entry["process"].split(":")[-1]
        for key, value in process_cfg.items():
            if key.startswith("withName:") and isinstance(value, dict):
                pattern = key[len("withName:"):].strip()
                with contextlib.suppress(re.error):
                    if re.fullmatch(pattern, entry["process"]) or re.fullmatch(pattern, simple):
                        scopes.append(value)
        out = dict(entry)
        for scope in scopes:
            for src, dst in mapping.items():
                value = scope.get(src)
                if value is None or isinstance(value, Raw):
                    continue
                if dst == "error_strategy" and value not in ERROR_STRATEGIES:
                    continue
                out[dst] = value
        return out

    # -- execution loop --

    def _max_parallel(self) -> int:
        for value in (self.spec.get("max_parallel"), self.opts.queue_size, dig(self.config, "executor.cpus"),
                      dig(self.config, "executor.queueSize")):
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
        return os.cpu_count() or 1

    def _loop(self) -> None:
        limit = self._max_parallel()
        while True:
            if self.signal_name:
                self._abort(self.signal_name)
                return
            for task in [t for t in self.tasks if t.state in ("SUBMITTED", "RUNNING")]:
                exited = task.proc is not None and task.proc.poll() is not None
                if task.state == "SUBMITTED" and (exited or (task.workdir / ".command.begin").exists()):
                    self._started(task)  # like Nextflow's polling monitor: running once .command.begin exists
                if task.state == "RUNNING" and exited:
                    self._complete(task)
                    if self.fault is not None and not self.finishing:
                        self._abort_fault()
                        return
                if self.signal_name:
                    break
            if self.signal_name:
                continue
            running = sum(1 for t in self.tasks if t.state in ("SUBMITTED", "RUNNING"))
            if not self.finishing:
                for task in self.tasks:
                    if self.signal_name or task.state != "PENDING":
                        continue
                    deps = [d.final() for d in task.deps]
                    if any(d.state in ("PENDING", "SUBMITTED", "RUNNING") for d in deps):
                        continue
                    if any(d.state not in ("COMPLETED", "CACHED") for d in deps):
                        task.state = "SKIPPED"
                        continue
                    if self._try_cached(task):
                        continue
                    if running >= limit:
                        break
                    self._submit(task)
                    running += 1
            if self.signal_name:
                continue
            if running == 0 and (self.finishing or not any(t.state == "PENDING" for t in self.tasks)):
                return
            time.sleep(POLL_SECONDS)

    def _hash_for(self, task: Task, tries: int) -> str:
        upstream = sorted(d.final().hash for d in task.deps)
        key = [self.session_id, task.process, task.item, task.tag, task.script, task.outputs, upstream, tries]
        return hashlib.md5(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()

    def _prepare(self, task: Task) -> None:
        ctx = {"item": task.item, "index": task.index, "attempt": task.attempt, "process": task.process,
               "tag": task.tag}
        params = self.params_for_templates
        spec = task.spec
        default_script = f"# fake task {task.name}\nsleep {spec.get('seconds', 0.1)}"
        task.script = render(spec.get("script") or default_script, ctx, params)
        task.stdout = render(spec.get("stdout") or "", ctx, params)
        task.stderr = render(spec.get("stderr") or "", ctx, params)
        task.outputs = []
        for name_tpl, content_tpl in (spec.get("outputs") or {}).items():
            name = render(str(name_tpl), ctx, params)
            parts = Path(name).parts
            if not name or os.path.isabs(name) or ".." in parts or name.startswith("."):
                task.bad_output = name
                continue
            task.outputs.append((name, render(str(content_tpl), ctx, params)))

    def _try_cached(self, task: Task) -> bool:
        self._prepare(task)
        tries = 0
        while True:
            full = self._hash_for(task, tries)
            workdir = self.work_dir / full[:2] / full[2:]
            entry = self.cache.entries.get(full) if (self.resume and self.cache is not None) else None
            if entry is not None and workdir.is_dir() and all((workdir / o).exists() for o in entry["outputs"]):
                task.hash, task.workdir = full, workdir
                self._cached(task, entry)
                return True
            if not workdir.exists():
                task.hash, task.workdir = full, workdir
                return False
            tries += 1

    def _cached(self, task: Task, entry: dict[str, Any]) -> None:
        task.task_id = self._new_task_id()
        task.state = "CACHED"
        record = dict(entry["trace"])
        record["task_id"] = task.task_id
        record["status"] = "CACHED"
        task.record = record
        task.exit = int(record.get("exit", 0))
        self.console.info(f"[{task.hash_log}] Cached process > {task.name}")
        self.stats.cached(task)
        self._publish(task)
        if self.trace is not None:
            self.trace.write(record)
        if self.cache is not None:
            self.cache.index(record)

    def _new_task_id(self) -> int:
        task_id = self.next_task_id
        self.next_task_id += 1
        return task_id

    def _base_record(self, task: Task, status: str) -> dict[str, Any]:
        spec = task.spec
        record: dict[str, Any] = {
            "task_id": task.task_id,
            "status": status,
            "hash": task.hash_log,
            "name": task.name,
            "exit": task.exit,
            "submit": task.submit_ms,
            "start": task.start_ms,
            "process": task.process,
            "tag": task.tag,
            "module": [],
            "container": spec.get("container"),
            "attempt": task.attempt,
            "script": task.script,
            "scratch": None,
            "workdir": str(task.workdir),
            "queue": spec.get("queue"),
            "cpus": spec.get("cpus", 1),
            "memory": parse_memory(spec.get("memory")),
            "disk": None,
            "time": parse_duration(spec.get("time")),
            "env": None,
        }
        if task.proc is not None:
            record["native_id"] = task.proc.pid
        return record

    def _submit(self, task: Task) -> None:
        spec = task.spec
        task.task_id = self._new_task_id()
        task.workdir.mkdir(parents=True, exist_ok=True)
        exits = spec.get("exit", 0)
        exit_code = exits if isinstance(exits, int) else exits[min(task.attempt, len(exits)) - 1]
        stderr = task.stderr
        if task.bad_output is not None:
            exit_code = 1
            stderr = f"Invalid output file name: {task.bad_output}\n"
        runner_spec = {
            "seconds": float(spec.get("seconds", 0.1)) * time_scale(),
            "exit": exit_code,
            "stdout": task.stdout,
            "stderr": stderr,
            "outputs": task.outputs,
            "ignore_sigterm": bool(spec.get("ignore_sigterm", False)),
        }
        (task.workdir / ".command.sh").write_text(f"#!/bin/bash -ue\n{task.script}\n", encoding="utf-8")
        (task.workdir / ".command.run").write_text(RUNNER, encoding="utf-8")
        (task.workdir / ".command.fake").write_text(json.dumps(runner_spec), encoding="utf-8")
        verb = "Submitted" if task.attempt == 1 else "Re-submitted"
        self.console.info(f"[{task.hash_log}] {verb} process > {task.name}")
        task.submit_ms = now_ms()
        # A task that ignores SIGTERM must do so from its first instruction: set it before exec (it survives exec).
        ignore_term = runner_spec["ignore_sigterm"]
        with open(task.workdir / ".command.log", "wb") as log:
            task.proc = subprocess.Popen(
                [sys.executable, "-S", ".command.run"], cwd=task.workdir, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=(lambda: signal.signal(signal.SIGTERM, signal.SIG_IGN)) if ignore_term else None)
        task.state = "SUBMITTED"
        task.record = self._base_record(task, "SUBMITTED")
        self.stats.submitted(task)
        self._send("process_submitted", trace=task.record)

    def _started(self, task: Task) -> None:
        task.state = "RUNNING"
        task.start_ms = now_ms()
        task.record = self._base_record(task, "RUNNING")
        self.stats.running(task)
        self._send("process_started", trace=task.record)

    def _complete(self, task: Task) -> None:
        assert task.proc is not None
        task.complete_ms = now_ms()
        code = task.proc.returncode
        try:
            task.exit = int((task.workdir / ".exitcode").read_text().strip())
        except (OSError, ValueError):
            task.exit = code if code >= 0 else 128 - code
        ok = task.exit == 0
        task.state = "COMPLETED" if ok else "FAILED"
        strategy = task.spec.get("error_strategy", "terminate")
        max_retries = task.spec.get("max_retries", 1)
        if not ok and strategy == "retry" and task.attempt > max_retries:
            strategy = "terminate"
        task.error_action = None if ok else strategy.upper()
        record = self._base_record(task, task.state)
        record["error_action"] = task.error_action
        record["complete"] = task.complete_ms
        record["duration"] = task.complete_ms - task.submit_ms
        metrics = _read_command_trace(task.workdir / ".command.trace")
        record["realtime"] = metrics.pop("realtime", task.complete_ms - task.start_ms)
        record.update(metrics)
        record["native_id"] = task.proc.pid  # the local executor appends it last
        task.record = record
        if ok:
            self._publish(task)
            if self.cache is not None:
                self.cache.put(task.hash, record, [name for name, _ in task.outputs])
        outcome = "succeeded" if ok else {"ignore": "ignored", "retry": "retried"}.get(strategy, "failed")
        self.stats.finished(task, outcome)
        if self.trace is not None:
            self.trace.write(record)
        if self.cache is not None:
            self.cache.index(record)
        self._send("process_completed", trace=record)
        if ok:
            return
        status_text = (f"[{task.hash_log}] NOTE: Process `{task.name}` terminated with an error exit status "
                       f"({task.exit})")
        if strategy == "ignore":
            self.console.info(f"{status_text} -- Error is ignored")
        elif strategy == "retry":
            self.console.info(f"{status_text} -- Execution is retried ({task.attempt})")
            retry = Task(task.spec, task.process, task.item, task.index, task.tag, task.name, task.deps,
                         attempt=task.attempt + 1)
            task.successor = retry
            self.tasks.insert(self.tasks.index(task) + 1, retry)
        elif strategy == "finish":
            if self.fault is None:
                self.fault = task
                self.finishing = True
                self.console.info("Execution cancelled -- Finishing pending tasks before exit")
                self._send("error", trace=record)
        else:
            if self.fault is None:
                self.fault = task
                self.console.error(self._error_report(task))

    def _publish(self, task: Task) -> None:
        spec = task.spec
        if not spec.get("publish_dir"):
            return
        ctx = {"item": task.item, "index": task.index, "attempt": task.attempt, "process": task.process,
               "tag": task.tag}
        target = Path(render(spec["publish_dir"], ctx, self.params_for_templates))
        target = target if target.is_absolute() else self.launch_dir / target
        mode = render(spec.get("publish_mode") or "symlink", ctx, self.params_for_templates)
        if mode not in PUBLISH_MODES:
            self.console.warn(f"Unknown publish mode: {mode} -- using symlink")
            mode = "symlink"
        for name, _content in task.outputs:
            source = task.workdir / name
            dest = target / name
            try:
                dest.parent.mkdir(parents=True, exist_ok=True)
                tmp = dest.with_name(f".{dest.name}.publish~")
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
                if mode == "symlink":
                    tmp.symlink_to(source)
                elif mode == "rellink":
                    tmp.symlink_to(os.path.relpath(source, dest.parent))
                elif mode == "link":
                    os.link(source, tmp)
                elif mode == "move":
                    shutil.move(source, tmp)
                else:
                    shutil.copy2(source, tmp, follow_symlinks=mode != "copyNoFollow")
                os.replace(tmp, dest)
            except OSError as exc:
                self.console.warn(f"Failed to publish file: {source}; to: {dest} [{mode}] -- {exc}")

    def _error_report(self, task: Task) -> str:
        out = _tail(task.workdir / ".command.out")
        err = _tail(task.workdir / ".command.err")
        script = "\n".join("  " + line for line in task.script.splitlines())
        return (
            f"Error executing process > '{task.name}'\n\n"
            f"Caused by:\n  Process `{task.name}` terminated with an error exit status ({task.exit})\n\n\n"
            f"Command executed:\n\n{script}\n\n"
            f"Command exit status:\n  {task.exit}\n\n"
            f"Command output:\n{_indent(out) or '  (empty)'}\n\n"
            f"Command error:\n{_indent(err) or '  (empty)'}\n\n"
            f"Work dir:\n  {task.workdir}\n\n"
            "Tip: you can replicate the issue by changing to the process work dir and entering the command "
            "`bash .command.run`"
        )

    # -- endings --

    def _kill_running(self) -> list[Task]:
        running = [t for t in self.tasks if t.state in ("SUBMITTED", "RUNNING")]
        if not running:
            return []
        self.console.warn(f"Killing running tasks ({len(running)})")
        for task in running:
            if task.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    task.proc.send_signal(signal.SIGTERM)
        for task in running:
            task.state = "ABORTED"
            record = self._base_record(task, "ABORTED")
            task.record = record
            self.stats.finished(task, "aborted")
            if self.trace is not None:
                self.trace.write(record)
            if self.cache is not None:
                self.cache.index(record)
            self._send("process_completed", trace=record)
        return running

    def _reap(self, killed: list[Task]) -> None:
        # Reap what the SIGTERM stopped; a task ignoring SIGTERM stays behind for the caller's process-group kill.
        deadline = time.monotonic() + KILL_WAIT_SECONDS
        for task in killed:
            if task.proc is None:
                continue
            with contextlib.suppress(subprocess.TimeoutExpired):
                task.proc.wait(timeout=max(deadline - time.monotonic(), 0.01))

    def _set_outcome(self, success: bool, exit_status: int | None, message: str | None, report: str | None) -> None:
        self.complete_ms = now_ms()
        self.success = success
        self.exit_status = exit_status
        self.error_message = message
        self.error_report = report
        self.stats.terminate()

    def _task_message(self, task: Task) -> str | None:
        for name in (".command.err", ".command.out"):
            text = _tail(task.workdir / name)
            if text:
                return text
        return None

    def _abort_fault(self) -> None:
        task = self.fault
        assert task is not None
        self._set_outcome(False, task.exit, self._task_message(task), self._error_report(task))
        killed = self._kill_running()
        self._send("completed", metadata=self._metadata(final=True))
        self._send("error")
        self._reap(killed)

    def _abort(self, signal_name: str) -> None:
        self.console.log(f"Session aborted -- Cause: {signal_name}")
        self._set_outcome(False, None, signal_name, signal_name)
        killed = self._kill_running()
        self._send("completed", metadata=self._metadata(final=True))
        self._send("error")
        self._reap(killed)

    def _finish_script_error(self, message: str) -> int:
        killed = self._kill_running()
        self._set_outcome(False, None, message, message)
        self.console.error(message)
        self._send("completed", metadata=self._metadata(final=True))
        self._send("error")
        self._reap(killed)
        return self._close()

    def _finish(self) -> int:
        if self.complete_ms is None:  # a normal end (success, ignore, finish)
            if self.fault is not None:
                task = self.fault
                self._set_outcome(False, task.exit, self._task_message(task), self._error_report(task))
                self._send("completed", metadata=self._metadata(final=True))
                self.console.error(self._error_report(task))
            else:
                self._set_outcome(True, 0, None, None)
                self._send("completed", metadata=self._metadata(final=True))
        return self._close()

    def _close(self) -> int:
        if self.trace is not None:
            self.trace.close()
        duration = (self.complete_ms or now_ms()) - self.start_ms
        self.history.update(self.run_name, self.session_id, self.success, duration)
        self.console.log(f"Execution complete -- Goodbye (success: {self.success})")
        return 0 if self.success else 1


def _plain(value: Any) -> Any:
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _user_name() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


def _tail(path: Path, lines: int = 100) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def _read_command_trace(path: Path) -> dict[str, Any]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return {}
    raw: dict[str, str] = {}
    for line in lines[1:]:
        key, sep, value = line.partition("=")
        if sep:
            raw[key] = value
    out: dict[str, Any] = {}

    def as_int(key: str) -> int:
        try:
            return int(raw.get(key, "0"))
        except ValueError:
            return 0

    if "realtime" in raw:
        out["realtime"] = as_int("realtime")
    out["%cpu"] = as_int("%cpu") / 10.0
    out["cpu_model"] = raw.get("cpu_model", "")
    for key in ("rchar", "wchar", "syscr", "syscw", "read_bytes", "write_bytes"):
        out[key] = as_int(key)
    out["%mem"] = as_int("%mem") / 10.0
    for key in ("vmem", "rss", "peak_vmem", "peak_rss"):
        out[key] = as_int(key) * 1024  # the file holds KB
    out["vol_ctxt"] = as_int("vol_ctxt")
    out["inv_ctxt"] = as_int("inv_ctxt")
    return out


# ---- Other commands ---------------------------------------------------------------------------------------------


def cmd_log(args: list[str], console: Console) -> int:
    history = History(Path.cwd())
    entries = history.entries()
    quiet = "-q" in args or "-quiet" in args
    fields: str | None = None
    target: str | None = None
    i = 0
    while i < len(args):
        if args[i] in ("-f", "-fields") and i + 1 < len(args):
            fields = args[i + 1]
            i += 1
        elif not args[i].startswith("-"):
            target = args[i]
        i += 1
    if target is None:
        if quiet:
            for e in entries:
                print(e.run_name)
            return 0
        header = ["TIMESTAMP", "DURATION", "RUN NAME", "STATUS", "REVISION ID", "SESSION ID", "COMMAND"]
        rows = [[e.timestamp, e.duration, e.run_name, e.status, e.revision[:10], e.session_id, e.command]
                for e in entries]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(6)]
        for row in [header, *rows]:
            print("\t".join(c.ljust(widths[i]) if i < 6 else c for i, c in enumerate(row)))
        return 0
    match = [e for e in entries if target in (e.run_name, e.session_id)] or (
        entries[-1:] if target == "last" else [])
    if not match:
        console.stderr(f"Missing execution log for run: {target}")
        return 1
    entry = match[-1]
    index = Path.cwd() / ".nextflow" / "cache" / entry.session_id / "db" / f"index.{entry.run_name}"
    names = [f.strip() for f in (fields or "workdir").split(",") if f.strip()]
    with contextlib.suppress(OSError):
        for line in index.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            print("\t".join("-" if record.get(n) is None else str(record.get(n)) for n in names))
    return 0


def cmd_info() -> int:
    print(f"  Version: {VERSION} build {BUILD}")
    print(f"  Created: {BUILD_TIME:%d-%m-%Y %H:%M} UTC ")
    print(f"  System: {platform.system()} {platform.release()}")
    print(f"  Runtime: Groovy 4.0.28 on fake_nextflow (Python {platform.python_version()})")
    print("  Encoding: UTF-8 (UTF-8)")
    return 0


def cmd_version_splash() -> int:
    print()
    print("      N E X T F L O W")
    print(f"      version {VERSION} build {BUILD}")
    print(f"      created {BUILD_TIME:%d-%m-%Y %H:%M} UTC ")
    print("      cite doi:10.1038/nbt.3820")
    print("      http://nextflow.io")
    print()
    return 0


USAGE = """Usage: nextflow [options] COMMAND [arg...]

Options:
  -C            Use the specified configuration file(s) overriding any defaults
  -c, -config   Add the specified file to configuration set
  -log          Set nextflow log file path
  -q, -quiet    Do not print information messages
  -v, -version  Print the program version

Commands:
  info   Print project and system runtime information
  log    Print executions log and runtime info
  run    Execute a pipeline project
"""


def main(argv: list[str] | None = None) -> int:
    """Entry point: `fake_nextflow.py [global options] COMMAND [args]`; returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    console = Console()
    global_configs: list[str] = []
    only_configs: list[str] | None = None
    log_file: str | None = None
    i = 0
    while i < len(args) and args[i].startswith("-"):
        arg = args[i]
        if arg in ("-v",):
            print(f"nextflow version {VERSION}.{BUILD}")
            return 0
        if arg in ("-version", "--version"):
            return cmd_version_splash()
        if arg in ("-h", "-help", "--help"):
            print(USAGE)
            return 0
        if arg in ("-q", "-quiet"):
            console.quiet = True
        elif arg.startswith("-D") or arg in ("-bg", "-self-update"):
            if arg == "-bg":
                console.stderr("Option -bg is not supported by fake_nextflow")
                return 1
        elif arg in GLOBAL_VALUE_OPTS:
            if i + 1 >= len(args):
                console.stderr(f"Missing value for option: {arg}")
                return 1
            value = args[i + 1]
            if arg == "-log":
                log_file = value
            elif arg in ("-c", "-config"):
                global_configs.append(value)
            elif arg == "-C":
                only_configs = (only_configs or []) + [value]
            i += 1
        else:
            console.stderr(f"Unknown option: {arg} -- Check the available commands and options and syntax with 'help'")
            return 1
        i += 1
    if i >= len(args):
        print(USAGE)
        return 0
    command, rest = args[i], args[i + 1:]
    if command == "info":
        return cmd_info()
    if command == "log":
        return cmd_log(rest, console)
    if command != "run":
        console.stderr(f"Unknown command: {command}")
        return 1
    log_path = Path(log_file or os.environ.get("NXF_LOG_FILE") or ".nextflow.log")
    console.open_log(log_path if log_path.is_absolute() else Path.cwd() / log_path)
    console.log("$> " + " ".join(["nextflow", *(cli_escape(a) for a in args)]), logger="nextflow.cli.Launcher")
    try:
        opts = parse_run_args(rest)
        run = FakeRun(console, args, global_configs, only_configs, opts)
        return run.start()
    except AbortOperation as exc:
        console.stderr(str(exc))
        return 1
    except ConsoleError as exc:
        console.error(str(exc))
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
