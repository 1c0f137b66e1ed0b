"""Unit and live-HTTP tests for nfhub_files: path safety, uploads (plain, chunked), downloads, folders, deletes.

The handlers are mounted on a tiny Starlette app with a fixed ProjectFiles context. Attacks go through the
TestClient and, where a client would normalise or refuse them, as raw bytes over a socket to a live uvicorn that
runs this module as a script (``python tests/test_files_unit.py <config json>``).
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import io
import json
import os
import resource
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
import unicodedata
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import nfhub_files as nf  # noqa: E402

BOUNDARY = "----nfhubTestBoundary7MA4YWxkTrZu0gW"
MiB = 1024 * 1024


# ---- App, layout, helpers --------------------------------------------------------------------------------------------


def make_app(ctx: nf.ProjectFiles) -> Starlette:
    def wrap(handler: Any, body_path: bool = False) -> Any:
        async def endpoint(request: Request) -> Response:
            try:
                if body_path:  # (nfhub reads the {"path"} body for these)
                    return await handler(ctx, json.loads(await request.body())["path"])
                return await handler(ctx, request)
            except nf.FilesError as exc:
                body: dict[str, Any] = {"error": exc.message}
                if exc.details:
                    body["details"] = exc.details
                return JSONResponse(body, status_code=exc.status, headers=exc.headers)

        return endpoint

    return Starlette(
        routes=[
            Route("/files", wrap(nf.list_files)),
            Route("/upload-file", wrap(nf.upload_file), methods=["POST"]),
            Route("/upload-status", wrap(nf.upload_status)),
            Route("/delete-path", wrap(nf.delete_path, True), methods=["POST"]),
            Route("/create-folder", wrap(nf.create_folder, True), methods=["POST"]),
            Route("/download", wrap(nf.download)),
        ]
    )


@dataclass
class Layout:
    data: Path
    root: Path
    runs: Path
    staging: Path
    outside: Path

    def ctx(self, max_upload_bytes: int = 64 * MiB) -> nf.ProjectFiles:
        return nf.ProjectFiles(self.root, (self.runs,), self.staging, max_upload_bytes)


def make_layout(base: Path) -> Layout:
    """The data directory of DESIGN.md plus neighbours an attacker would like to reach."""
    data = base / "data"
    lay = Layout(data, data / "projects" / "1", data / "runs" / "1", data / "uploads" / "1", base / "outside")
    lay.root.mkdir(parents=True)
    lay.staging.mkdir(parents=True)  # nfhub_files creates it on demand; made here so snapshots compare equal
    (lay.runs / "work" / "ab").mkdir(parents=True)
    (lay.runs / "work" / "ab" / "out.txt").write_bytes(b"published by a run\n")
    (lay.runs / "run1" / "nfhub.config").parent.mkdir()
    (lay.runs / "run1" / "nfhub.config").write_text("secret weblog token")
    for sibling in ("1-evil", "10", "12"):
        (data / "projects" / sibling).mkdir(parents=True)
        (data / "projects" / sibling / "secret").write_text(f"secret of {sibling}")
    (data / "runs" / "2").mkdir(parents=True)
    (data / "runs" / "2" / "other.txt").write_text("another project's run")
    lay.outside.mkdir()
    (lay.outside / "passwd").write_text("root:x:0:0")
    (lay.outside / "f.txt").write_text("outside")
    return lay


@pytest.fixture
def lay(tmp_path: Path) -> Layout:
    return make_layout(tmp_path)


@pytest.fixture
def client(lay: Layout) -> Iterator[TestClient]:
    with TestClient(make_app(lay.ctx())) as c:
        yield c


def snapshot(top: Path, skip: Path | None = None) -> dict[str, tuple[str, str]]:
    """Everything below ``top`` (not following symlinks): type and content hash or link target."""
    out: dict[str, tuple[str, str]] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        if skip is not None and Path(dirpath) == skip.parent:
            dirnames[:] = [d for d in dirnames if Path(dirpath, d) != skip]
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, top)
            if os.path.islink(path):
                out[rel] = ("link", os.readlink(path))
            elif os.path.isdir(path):
                out[rel] = ("dir", "")
            else:
                out[rel] = ("file", hashlib.sha256(Path(path).read_bytes()).hexdigest())
    return out


def form(*parts: tuple[str, bytes | str, bytes | str | None], boundary: str = BOUNDARY, close: bool = True) -> bytes:
    """A multipart/form-data body; parts are (name, value, filename or None), in the given order."""
    out = bytearray()
    for name, value, filename in parts:
        out += f"--{boundary}\r\n".encode()
        disposition = f'Content-Disposition: form-data; name="{name}"'.encode()
        if filename is not None:
            raw = filename.encode() if isinstance(filename, str) else filename
            disposition += b'; filename="' + raw + b'"'
        out += disposition + b"\r\n"
        if filename is not None:
            out += b"Content-Type: application/octet-stream\r\n"
        out += b"\r\n" + (value.encode() if isinstance(value, str) else value) + b"\r\n"
    if close:
        out += f"--{boundary}--\r\n".encode()
    return bytes(out)


CT = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}


def upload(client: TestClient, filename: str | bytes, data: bytes, directory: str | None = "", **fields: Any) -> Any:
    parts: list[tuple[str, bytes | str, bytes | str | None]] = []
    if directory is not None:
        parts.append(("directory", directory, None))
    parts += [(k, str(v), None) for k, v in fields.items()]
    parts.append(("file", data, filename))
    return client.post("/upload-file", content=form(*parts), headers=CT)


def staging_files(lay: Layout) -> list[str]:
    return sorted(os.listdir(lay.staging)) if lay.staging.exists() else []


def wait_for(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


# ---- Live server -----------------------------------------------------------------------------------------------------


class LiveServer:
    def __init__(self, lay: Layout, max_upload_bytes: int, fsize_limit: int | None = None) -> None:
        cfg = {"root": str(lay.root), "links": [str(lay.runs)], "staging": str(lay.staging), "max": max_upload_bytes}

        def limits() -> None:
            if fsize_limit is not None:
                resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_limit, fsize_limit))

        self.log = open(lay.data / f"server-{time.monotonic_ns()}.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, __file__, json.dumps(cfg)], stdout=subprocess.PIPE, stderr=self.log, preexec_fn=limits
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 30)
        line = self.proc.stdout.readline() if ready else b""
        if not line.strip().isdigit():
            self.stop()
            raise RuntimeError(f"server did not start: {line!r}")
        self.port = int(line)

    def conn(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)

    def rss_mib(self) -> tuple[int, int]:
        """(current RSS, peak RSS since the last reset) of the server process, in MiB."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        values = {line.split(":")[0]: int(line.split()[1]) // 1024 for line in status.splitlines() if line[:2] == "Vm"}
        return values["VmRSS"], values["VmHWM"]

    def reset_peak(self) -> None:
        Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()
        self.log.close()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, Layout]]:
    lay = make_layout(tmp_path_factory.mktemp("live"))
    server = LiveServer(lay, max_upload_bytes=256 * MiB)
    yield server, lay
    server.stop()


def raw_http(port: int, request: bytes, *, half_close: bool = False) -> tuple[int, dict[str, str], bytes]:
    """Send bytes exactly as given; read the answer until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        try:
            sock.sendall(request)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered early (413, 507) and closed: its answer is still there to read
        raw = bytearray()
        try:
            while chunk := sock.recv(65536):
                raw += chunk
        except ConnectionResetError:
            if not raw:
                raise
    head, _, body = bytes(raw).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)}
    return int(lines[0].split()[1]), headers, body


def raw_get(port: int, target: str) -> tuple[int, dict[str, str], bytes]:
    return raw_http(port, f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())


def raw_post(port: int, target: str, body: bytes, content_type: str = CT["content-type"]) -> tuple[int, Any]:
    head = f"POST {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: {content_type}\r\n"
    status, _, answer = raw_http(port, head.encode() + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    return status, json.loads(answer) if answer else None


# ---- The attack catalogue (security.md §1.3) -------------------------------------------------------------------------

# refused with 400 by every carrier
REFUSED = [
    "../",
    "../../etc/passwd",
    "a/../../x",
    "....//....//etc/passwd",
    "../1-evil/secret",
    "../10/secret",
    "../12/secret",
    "x/../../1-evil/secret",
    "/etc/passwd",
    "//etc/passwd",
    "///etc",
    "\\..\\..\\win.ini",
    "..\\\\..\\\\x",
    "C:\\Windows\\win.ini",
    "\\\\attacker\\share\\x",
    "//attacker/share",
    "a\x00.txt",
    "a\x00b",
    "a\nb",
    "a\rb",
    "a\tb",
    "a\x7fb",
    "a\x85b",
    "é" * 128,
    "a" * 256,
    "a/" * 3000,
]
# only names: looking them up finds nothing (404) or a literal file; creating them is refused by the name rules
REFUSED_AS_NEW = [
    "..;/x",
    "..%2f",
    "..%5c",
    "..%c0%af",
    "..%00/",
    "C:foo",
    "\u202etxt.exe",
    "a\u200bb",
    " ",
    "a.",
    "a ",
    ".ssh",
    ".git/config",
    "a/.hidden",
    ".bashrc",
    "CON",
    "con",
    "NUL",
    "COM1",
    "LPT9",
    "CON.txt",
    "CON ",
    "dir/NUL",
    "AUX.tar.gz",
    "x\ufeff",
    "a\u2028b",
]
# plain (if odd) names after the single decoding HTTP does: created literally, inside the project
LITERAL = ["%2e%2e%2f", "%2e%2e/", "%252e%252e%252f", "a%00.txt", "．．／etc", "‥", "．．", "e\u0301.txt"]
# the project folder itself
ROOTS = ["", ".", "./", "a/..", "a/b/../.."]


@pytest.mark.parametrize("rel", REFUSED)
def test_resolve_refuses(lay: Layout, rel: str) -> None:
    (lay.root / "a").mkdir()
    with pytest.raises(nf.FilesError) as info:
        nf.resolve_path(lay.ctx(), rel)
    assert info.value.status == 400


@pytest.mark.parametrize("rel", REFUSED_AS_NEW + LITERAL)
def test_resolve_literal_names_stay_inside(lay: Layout, rel: str) -> None:
    root = os.path.realpath(lay.root)
    result = str(nf.resolve_path(lay.ctx(), rel))
    assert os.path.commonpath([result, root]) == root
    with pytest.raises(nf.FilesError) as info:
        nf.resolve_path(lay.ctx(), rel, must_exist=True)
    assert info.value.status == 404


@pytest.mark.parametrize("rel", ROOTS)
def test_resolve_root_forms(lay: Layout, rel: str) -> None:
    assert nf.resolve_path(lay.ctx(), rel) == Path(os.path.realpath(lay.root))
    with pytest.raises(nf.FilesError) as info:
        nf.resolve_path(lay.ctx(), rel, allow_root=False)
    assert info.value.status == 400


def test_resolve_lengths_and_normalisation(lay: Layout) -> None:
    ctx = lay.ctx()
    root = Path(os.path.realpath(lay.root))
    assert nf.resolve_path(ctx, "a" * 255) == root / ("a" * 255)
    assert nf.resolve_path(ctx, "x/" * 2047 + "y") == root.joinpath(*["x"] * 2047, "y")  # 4095 bytes
    assert nf.resolve_path(ctx, "a/./b/../c/") == root / "a" / "c"
    with pytest.raises(nf.FilesError):
        nf.resolve_path(ctx, "x/" * 2048 + "y")  # 4097 bytes
    with pytest.raises(nf.FilesError):
        nf.resolve_path(ctx, "a//b")
    with pytest.raises(nf.FilesError):
        nf.resolve_path(ctx, "\ud800")  # lone surrogate from JSON
    with pytest.raises(nf.FilesError):
        nf.resolve_path(ctx, 5)  # type: ignore[arg-type]


def make_links(lay: Layout) -> None:
    root = lay.root
    (root / "etc").symlink_to("/etc")
    (root / "a").symlink_to(lay.outside)
    (root / "sib").symlink_to(lay.data / "projects" / "1-evil")
    (root / "otherrun").symlink_to(lay.data / "runs" / "2")
    (root / "results").symlink_to(lay.runs / "work" / "ab")
    (root / "out.txt").symlink_to(lay.runs / "work" / "ab" / "out.txt")
    (root / "loop").symlink_to("loop")
    (root / "gone").symlink_to(root / "nothing-here")
    (root / "dangling").symlink_to("/nonexistent/x")
    (root / "self").symlink_to(".")
    (root / "up").symlink_to("..")


def test_resolve_symlinks(lay: Layout) -> None:
    make_links(lay)
    ctx = lay.ctx()
    for rel in ("etc/passwd", "etc", "a/f.txt", "a", "sib/secret", "otherrun/other.txt", "dangling", "up/10"):
        with pytest.raises(nf.FilesError) as info:
            nf.resolve_path(ctx, rel)
        assert info.value.status == 400, rel
    assert nf.resolve_path(ctx, "out.txt", must_exist=True) == Path(os.path.realpath(lay.runs / "work/ab/out.txt"))
    assert nf.resolve_path(ctx, "results/out.txt", must_exist=True).read_bytes() == b"published by a run\n"
    with pytest.raises(nf.FilesError) as info:
        nf.resolve_path(ctx, "results/new.txt", writable=True)
    assert info.value.status == 400 and "read-only" in info.value.message
    with pytest.raises(nf.FilesError) as info:
        nf.resolve_path(ctx, "loop", must_exist=True)
    assert info.value.status == 400
    with pytest.raises(nf.FilesError) as info:
        nf.resolve_path(ctx, "gone", must_exist=True)
    assert info.value.status == 404
    with pytest.raises(nf.FilesError):
        nf.resolve_path(ctx, "self", allow_root=False)


# ---- The catalogue through every carrier -----------------------------------------------------------------------------


def carriers(client: TestClient, rel: str) -> dict[str, int]:
    statuses = {
        "list dir": client.get("/files", params={"dir": rel}).status_code,
        "download path": client.get("/download", params={"path": rel}).status_code,
        "status path": client.get("/upload-status", params={"path": rel}).status_code,
        "delete path": client.post("/delete-path", json={"path": rel}).status_code,
        "mkdir path": client.post("/create-folder", json={"path": rel}).status_code,
        "upload directory": upload(client, "ok.txt", b"x", directory=rel).status_code,
    }
    # python-multipart keeps only the last name of an IE-style 'C:\x\y' file name: tested separately
    if not rel.startswith("C:\\"):
        statuses["upload filename"] = upload(client, rel.encode("utf-8", "surrogatepass"), b"x").status_code
    return statuses


def test_catalogue_every_carrier(lay: Layout, client: TestClient) -> None:
    (lay.root / "a").mkdir()
    (lay.root / "a" / "keep.txt").write_text("keep")
    before_outside = snapshot(lay.data.parent, skip=lay.root)
    for rel in REFUSED:
        assert set(carriers(client, rel).values()) == {400}, (rel, carriers(client, rel))
    for rel in REFUSED_AS_NEW:
        got = carriers(client, rel)
        assert got["mkdir path"] == 400 and got["upload directory"] == 400 and got["upload filename"] == 400, rel
        assert got["download path"] in (400, 404) and got["list dir"] in (400, 404), rel
    for rel in ROOTS:
        got = carriers(client, rel)
        assert got["delete path"] == 400 and got["mkdir path"] == 400, rel
        assert got["list dir"] == 200 and got["upload directory"] == 200, rel
    assert snapshot(lay.data.parent, skip=lay.root) == before_outside
    assert lay.root.is_dir() and (lay.root / "a" / "keep.txt").read_text() == "keep"
    assert not [n for n in staging_files(lay) if n.startswith("tmp-")]
    stored = {str(p.relative_to(lay.root)) for p in lay.root.rglob("*")}
    assert stored <= {"a", "a/keep.txt", "ok.txt"}, stored


@pytest.mark.parametrize("rel", LITERAL)
def test_literal_names_created_inside(lay: Layout, client: TestClient, rel: str) -> None:
    before = snapshot(lay.data.parent, skip=lay.root)
    assert client.post("/create-folder", json={"path": rel}).status_code == 200
    assert upload(client, "f.txt", b"data", directory=rel).json()["directory"] == unicodedata.normalize(
        "NFC", rel.rstrip("/")
    )
    target = lay.root / unicodedata.normalize("NFC", rel.rstrip("/")) / "f.txt"
    assert target.read_bytes() == b"data"
    assert client.get("/download", params={"path": f"{rel.rstrip('/')}/f.txt"}).status_code in (200, 404)
    assert snapshot(lay.data.parent, skip=lay.root) == before


def test_ie_style_filenames_keep_only_the_last_name(lay: Layout, client: TestClient) -> None:
    assert upload(client, "C:\\Windows\\win.ini", b"w").json() == {"directory": "", "file": "win.ini"}
    assert upload(client, "\\\\attacker\\share\\x", b"x").status_code == 400
    assert sorted(os.listdir(lay.root)) == ["win.ini"]


def test_symlink_escapes_through_http(lay: Layout, client: TestClient) -> None:
    make_links(lay)
    before = snapshot(lay.data.parent, skip=lay.root)
    for rel in ("etc/passwd", "a/f.txt", "sib/secret", "otherrun/other.txt", "up/10/secret"):
        assert client.get("/download", params={"path": rel}).status_code == 400, rel
        assert client.post("/delete-path", json={"path": rel}).status_code == 400, rel
    for rel in ("etc", "a", "results", "loop", "up"):
        assert upload(client, "x.txt", b"x", directory=rel).status_code == 400, rel
        assert client.post("/create-folder", json={"path": f"{rel}/new"}).status_code == 400, rel
    assert client.get("/files", params={"dir": "etc"}).status_code == 400
    assert client.get("/files", params={"dir": "loop"}).status_code == 400
    assert client.get("/download", params={"path": "loop"}).status_code == 400
    assert client.get("/download", params={"path": "gone"}).status_code == 404
    assert client.get("/download", params={"path": "dangling"}).status_code == 400
    assert snapshot(lay.data.parent, skip=lay.root) == before

    # links into this project's run directories are readable, never written through
    assert client.get("/download", params={"path": "out.txt"}).content == b"published by a run\n"
    assert client.get("/download", params={"path": "results/out.txt"}).content == b"published by a run\n"
    assert client.get("/files", params={"dir": "results"}).json()["files"] == ["out.txt"]
    assert client.post("/delete-path", json={"path": "results/out.txt"}).status_code == 400
    assert client.post("/create-folder", json={"path": "results"}).status_code == 200  # exists: fine

    # deleting a link removes the link only
    for rel in ("etc", "a", "results", "out.txt", "dangling", "loop", "self", "up"):
        assert client.post("/delete-path", json={"path": rel}).status_code == 200, rel
        assert not os.path.lexists(lay.root / rel)
    assert snapshot(lay.data.parent, skip=lay.root) == before
    assert lay.root.is_dir()


def test_listing(lay: Layout, client: TestClient) -> None:
    make_links(lay)
    (lay.root / "b.txt").write_bytes(b"12345")
    (lay.root / "A folder").mkdir()
    os.mkfifo(lay.root / "fifo")
    got = client.get("/files").json()
    assert got["folders"] == ["A folder", "results", "self"]  # 'self' -> '.' stays inside the project
    assert got["files"] == ["b.txt", "out.txt"]
    entries = {e["name"]: e for e in got["entries"]}
    assert list(entries) == sorted(entries)
    assert entries["b.txt"]["size"] == 5 and entries["b.txt"]["type"] == "file"
    assert entries["out.txt"]["size"] == len(b"published by a run\n")  # the link shows its target
    assert entries["results"]["type"] == "folder" and entries["results"]["size"] is None
    assert time.strptime(entries["b.txt"]["modified"], "%Y-%m-%dT%H:%M:%SZ")
    # links that dangle, loop or leave the allowed places are not listed
    assert not {"etc", "a", "sib", "otherrun", "loop", "gone", "dangling", "up", "fifo"} & set(entries)
    assert client.get("/files", params={"dir": "b.txt"}).status_code == 400
    assert client.get("/files", params={"dir": "missing"}).status_code == 404


# ---- Uploads ---------------------------------------------------------------------------------------------------------


def test_upload_creates_parents_and_replaces_atomically(lay: Layout, client: TestClient) -> None:
    r = upload(client, "reads.fastq", b"v1", directory="raw/run 1")
    assert r.status_code == 200 and r.json() == {"directory": "raw/run 1", "file": "reads.fastq"}
    target = lay.root / "raw" / "run 1" / "reads.fastq"
    inode = target.stat().st_ino
    with open(target, "rb") as reader:  # a reader holding the old file keeps seeing it whole
        assert upload(client, "reads.fastq", b"version 2", directory="raw/run 1").status_code == 200
        assert reader.read() == b"v1"
    assert target.read_bytes() == b"version 2" and target.stat().st_ino != inode
    assert staging_files(lay) == []


def test_upload_field_order_and_folder_uploads(lay: Layout, client: TestClient) -> None:
    body = form(("file", b"late", "a.txt"), ("directory", "after", None))
    assert client.post("/upload-file", content=body, headers=CT).json() == {"directory": "after", "file": "a.txt"}
    assert (lay.root / "after" / "a.txt").read_bytes() == b"late"
    r = upload(client, "sample/lane1/r1.fq", b"r1", directory="up")
    assert r.json() == {"directory": "up/sample/lane1", "file": "r1.fq"}
    assert (lay.root / "up" / "sample" / "lane1" / "r1.fq").read_bytes() == b"r1"
    assert upload(client, "empty.txt", b"").status_code == 200 and (lay.root / "empty.txt").read_bytes() == b""
    assert upload(client, "nodir.txt", b"n", directory=None).json() == {"directory": "", "file": "nodir.txt"}


def test_upload_nfc_names(lay: Layout, client: TestClient) -> None:
    nfc, nfd = "\u00e9.txt", "e\u0301.txt"
    assert upload(client, nfc, b"one").status_code == 200
    assert upload(client, nfd, b"two").json()["file"] == nfc
    assert os.listdir(lay.root) == [nfc] and (lay.root / nfc).read_bytes() == b"two"


def test_upload_conflicts(lay: Layout, client: TestClient) -> None:
    (lay.root / "plain.txt").write_text("file")
    (lay.root / "folder").mkdir()
    before = snapshot(lay.root)
    assert upload(client, "x.txt", b"x", directory="plain.txt").status_code == 409
    assert upload(client, "x.txt", b"x", directory="plain.txt/sub").status_code == 409
    assert upload(client, "folder", b"x").status_code == 409
    body = form(("file", b"x", "x.txt"), ("directory", "plain.txt/late", None))
    assert client.post("/upload-file", content=body, headers=CT).status_code == 409
    assert snapshot(lay.root) == before and staging_files(lay) == []


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (form(("directory", "d", None)), CT["content-type"], 400),  # no file
        (form(("file", b"x", None)), CT["content-type"], 400),  # file without a file name
        (form(("file", b"x", "")), CT["content-type"], 400),  # browser: no file chosen
        (form(("file", b"x", "a.txt"), ("file", b"y", "b.txt")), CT["content-type"], 400),
        (form(("other", b"x", "a.txt")), CT["content-type"], 400),
        (form(("directory", "a", None), ("directory", "b", None), ("file", b"x", "a.txt")), CT["content-type"], 400),
        (form(*[(f"f{i}", "v", None) for i in range(20)], ("file", b"x", "a.txt")), CT["content-type"], 400),
        (form(("note", "n" * (70 * 1024), None), ("file", b"x", "a.txt")), CT["content-type"], 400),
        (form(("file", b"x" * 5000, "a.txt"), close=False), CT["content-type"], 400),  # truncated body
        (b"garbage without boundaries", CT["content-type"], 400),
        (form(("file", b"x", "a.txt")), "application/json", 415),
        (form(("file", b"x", "a.txt")), "multipart/form-data", 400),  # no boundary
        (form(("file", b"x", "a.txt")), "multipart/form-data; boundary=" + "b" * 300, 400),
        (form(("directory", b"\xff\xfe", None), ("file", b"x", "a.txt")), CT["content-type"], 400),
    ],
)
def test_upload_bad_forms(lay: Layout, client: TestClient, body: bytes, content_type: str, status: int) -> None:
    r = client.post("/upload-file", content=body, headers={"content-type": content_type})
    assert r.status_code == status and r.json()["error"]
    assert os.listdir(lay.root) == [] and staging_files(lay) == []


def test_upload_limit_by_content_length_and_by_counting(lay: Layout) -> None:
    with TestClient(make_app(lay.ctx(max_upload_bytes=MiB))) as client:
        (lay.root / "big.bin").write_bytes(b"old")
        assert upload(client, "big.bin", b"x" * (MiB + 1)).status_code == 413  # one byte over

        def chunks() -> Iterator[bytes]:  # no Content-Length: the byte counter must trip
            body = form(("file", b"y" * (4 * MiB), "big.bin"))
            for i in range(0, len(body), 65536):
                yield body[i : i + 65536]

        r = client.post("/upload-file", content=chunks(), headers=CT)
        assert r.status_code == 413
        assert (lay.root / "big.bin").read_bytes() == b"old" and staging_files(lay) == []
        assert upload(client, "big.bin", b"z" * MiB).status_code == 200  # exactly the limit is fine


def test_upload_disk_full(lay: Layout, client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    (lay.root / "data.bin").write_bytes(b"old")
    real_pwritev = os.pwritev
    calls = []

    def pwritev(fd: int, buffers: Any, pos: int) -> int:
        """The disk fills up at 2 MiB: what fits is written, then ENOSPC."""
        calls.append(pos)
        data = b"".join(buffers)
        if pos + len(data) > 2 * MiB:
            os.pwrite(fd, data[: max(0, 2 * MiB - pos)], pos)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwritev(fd, buffers, pos)

    monkeypatch.setattr(os, "pwritev", pwritev)
    r = upload(client, "data.bin", os.urandom(5 * MiB))
    assert r.status_code == 507 and "disk space" in r.json()["error"]
    assert calls  # it failed while writing
    assert (lay.root / "data.bin").read_bytes() == b"old" and staging_files(lay) == []

    # a chunk that hits a full disk leaves the staged upload as it was
    monkeypatch.setattr(os, "pwritev", real_pwritev)
    first = os.urandom(MiB)
    assert upload(client, "c.bin", first, offset=0, total=4 * MiB).json()["received"] == MiB
    calls.clear()
    monkeypatch.setattr(os, "pwritev", pwritev)
    assert upload(client, "c.bin", os.urandom(3 * MiB), offset=MiB, total=4 * MiB).status_code == 507
    monkeypatch.setattr(os, "pwritev", real_pwritev)
    assert client.get("/upload-status", params={"path": "c.bin"}).json() == {"received": MiB, "total": 4 * MiB}


# ---- Chunked (resumable) uploads -------------------------------------------------------------------------------------


def test_chunked_upload_repeats_gaps_and_bad_chunks(lay: Layout, client: TestClient) -> None:
    data = os.urandom(3 * MiB + 123)
    total = len(data)
    pieces = [(off, data[off : off + MiB]) for off in range(0, total, MiB)]

    def send(off: int, piece: bytes, **extra: Any) -> Any:
        return upload(client, "big.bam", piece, directory="raw", offset=off, total=total, **extra)

    def status() -> Any:
        return client.get("/upload-status", params={"path": "raw/big.bam"}).json()

    assert status() == {"received": 0, "total": None}
    r = send(*pieces[0])
    assert r.json() == {"directory": "raw", "file": "big.bam", "received": MiB, "total": total, "complete": False}
    assert not (lay.root / "raw").exists()  # nothing appears before the last byte
    assert send(*pieces[1]).json()["received"] == 2 * MiB
    assert send(*pieces[1]).json()["received"] == 2 * MiB  # repeated chunk: idempotent
    assert send(MiB + 10, data[MiB + 10 : 2 * MiB + 10]).json()["received"] == 2 * MiB + 10  # overlapping
    r = send(3 * MiB, data[3 * MiB :])  # gap
    assert r.status_code == 409 and r.json()["details"] == {"received": 2 * MiB + 10}
    staged = snapshot(lay.staging)
    for bad in (
        dict(offset=-1, total=total),
        dict(offset="1e3", total=total),
        dict(offset=" 5", total=total),
        dict(offset="５", total=total),
        dict(offset=2 * MiB + 10, total="x"),
        dict(offset=total + 1, total=total),
    ):
        r = upload(client, "big.bam", b"z", directory="raw", **bad)
        assert r.status_code == 400, bad
    r = upload(client, "big.bam", b"z", directory="raw", offset=0)  # offset without total
    assert r.status_code == 400
    r = send(2 * MiB + 10, data[2 * MiB + 10 :] + b"past the end")
    assert r.status_code == 400 and "past total" in r.json()["error"]
    r = upload(client, "big.bam", b"z", directory="raw", offset=0, total=65 * MiB)
    assert r.status_code == 413
    assert snapshot(lay.staging) == staged and status() == {"received": 2 * MiB + 10, "total": total}

    # fields after the file part: the slice is staged aside and copied in
    body = form(
        ("file", data[2 * MiB + 10 : 3 * MiB], "big.bam"),
        ("directory", "raw", None),
        ("offset", str(2 * MiB + 10), None),
        ("total", str(total), None),
    )
    assert client.post("/upload-file", content=body, headers=CT).json()["received"] == 3 * MiB
    r = send(*pieces[3])
    assert r.json() == {"directory": "raw", "file": "big.bam", "received": total, "total": total, "complete": True}
    assert (lay.root / "raw" / "big.bam").read_bytes() == data
    assert status() == {"received": 0, "total": None} and staging_files(lay) == []
    # the final chunk repeated after completion (its answer was lost): told to start over, the file is intact
    r = send(*pieces[3])
    assert r.status_code == 409 and r.json()["details"] == {"received": 0}
    assert (lay.root / "raw" / "big.bam").read_bytes() == data and staging_files(lay) == []


def test_chunked_offset_zero_starts_over_and_other_forms(lay: Layout, client: TestClient) -> None:
    old, new = b"A" * 1000, b"B" * 1000
    assert upload(client, "f.bin", old[:600], offset=0, total=1000).json()["received"] == 600
    assert upload(client, "f.bin", new[:300], offset=0, total=1000).json()["received"] == 300
    assert client.get("/upload-status", params={"path": "f.bin", "total": 1000}).json()["received"] == 300
    assert client.get("/upload-status", params={"path": "f.bin", "total": 999}).json()["received"] == 0
    assert upload(client, "f.bin", new[300:], offset=300, total=1000).json()["complete"] is True
    assert (lay.root / "f.bin").read_bytes() == new
    # a one-slice upload, an empty file, fields after the file with offset 0
    assert upload(client, "one.bin", b"abc", offset=0, total=3).json()["complete"] is True
    assert upload(client, "zero.bin", b"", offset=0, total=0).json()["complete"] is True
    body = form(("file", b"xyz", "late.bin"), ("offset", "0", None), ("total", "6", None))
    assert client.post("/upload-file", content=body, headers=CT).json()["received"] == 3
    assert upload(client, "late.bin", b"uvw", offset=3, total=6).json()["complete"] is True
    assert (lay.root / "late.bin").read_bytes() == b"xyzuvw" and (lay.root / "zero.bin").read_bytes() == b""
    assert staging_files(lay) == []


def test_chunked_upload_survives_server_kill(tmp_path: Path) -> None:
    lay = make_layout(tmp_path)
    data = os.urandom(3 * MiB + 7)
    total = len(data)

    def send(server: LiveServer, off: int, end: int) -> tuple[int, Any]:
        body = form(
            ("directory", "raw", None),
            ("offset", str(off), None),
            ("total", str(total), None),
            ("file", data[off:end], "resume.bin"),
        )
        return raw_post(server.port, "/upload-file", body)

    first = LiveServer(lay, max_upload_bytes=64 * MiB)
    try:
        assert send(first, 0, MiB)[1]["received"] == MiB
        assert send(first, MiB, 2 * MiB)[1]["received"] == 2 * MiB
    finally:
        first.stop(signal.SIGKILL)
    second = LiveServer(lay, max_upload_bytes=64 * MiB)
    try:
        status, _, body = raw_get(second.port, "/upload-status?path=raw/resume.bin")
        assert status == 200 and json.loads(body) == {"received": 2 * MiB, "total": total}
        assert send(second, MiB, 2 * MiB)[1]["received"] == 2 * MiB  # the chunk whose answer was lost, again
        assert send(second, 2 * MiB, total)[1]["complete"] is True
    finally:
        second.stop()
    assert (lay.root / "raw" / "resume.bin").read_bytes() == data
    assert staging_files(lay) == []


# ---- Live HTTP: raw requests, big streams, memory --------------------------------------------------------------------


def test_raw_traversal_over_the_wire(live: tuple[LiveServer, Layout]) -> None:
    server, lay = live
    before = snapshot(lay.data.parent, skip=lay.root)
    for target in (
        "/files?dir=..%2F..%2Fetc",
        "/download?path=..%2F..%2Fetc%2Fpasswd",
        "/download?path=../../etc/passwd",
        "/download?path=%2Fetc%2Fpasswd",
        "/download?path=..%5C..%5Cwin.ini",
        "/download?path=a%00.txt",
        "/download?path=..%2F1-evil%2Fsecret",
        "/files?dir=a%0Ab",
        "/upload-status?path=..%2Fx",
    ):
        status, _, body = raw_get(server.port, target)
        assert status == 400, target
        assert b"root:" not in body and b"secret" not in body
    for target in ("/download?path=%252e%252e%252fetc", "/download?path=..%252F..%252Fetc"):
        status, _, body = raw_get(server.port, target)  # decoded once: a literal, missing name
        assert status == 404, target
    for rel in ("../../etc/passwd", "/etc/passwd", "a/../../x"):
        for carrier in ("/delete-path", "/create-folder"):
            status, answer = raw_post(server.port, carrier, json.dumps({"path": rel}).encode(), "application/json")
            assert status == 400 and answer["error"], (carrier, rel)
    assert snapshot(lay.data.parent, skip=lay.root) == before


@pytest.mark.parametrize(
    ("filename", "status"),
    [
        (b"../../etc/passwd", 400),
        (b"/etc/passwd", 400),
        (b"a\x00b", 400),
        (b"a\r\nX-Injected: 1", 400),
        (b"..", 400),
        (b"\xe2\x80\xaetxt.exe", 400),  # U+202E
        (b"caf\xc3\xa9.txt", 200),
    ],
)
def test_raw_multipart_filenames(live: tuple[LiveServer, Layout], filename: bytes, status: int) -> None:
    server, lay = live
    before = snapshot(lay.data.parent, skip=lay.root)
    got, answer = raw_post(server.port, "/upload-file", form(("directory", "names", None), ("file", b"x", filename)))
    assert got == status, answer
    if status == 200:
        assert (lay.root / "names" / filename.decode()).read_bytes() == b"x"
    assert snapshot(lay.data.parent, skip=lay.root) == before
    assert not [n for n in staging_files(lay) if n.startswith("tmp-")]


def test_raw_filename_star_is_ignored(live: tuple[LiveServer, Layout]) -> None:
    server, lay = live
    body = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="ok.txt"; '
        f"filename*=utf-8''..%2F..%2Fevil.sh\r\n\r\nbody\r\n--{BOUNDARY}--\r\n"
    ).encode()
    status, answer = raw_post(server.port, "/upload-file", body)
    assert status == 200 and answer == {"directory": "", "file": "ok.txt"}
    assert not list(lay.data.parent.rglob("evil.sh"))


def test_raw_content_length_checks(live: tuple[LiveServer, Layout]) -> None:
    server, lay = live
    head = f"POST /upload-file HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: {CT['content-type']}\r\n"
    # far over the limit: refused from the header alone, before any body byte is sent
    status, _, body = raw_http(server.port, (head + f"Content-Length: {10**12}\r\n\r\n").encode(), half_close=True)
    assert status == 413 and json.loads(body)["error"]
    for bad in ("-1", "abc"):
        status, _, _ = raw_http(server.port, (head + f"Content-Length: {bad}\r\n\r\n").encode(), half_close=True)
        assert status == 400
    assert not [n for n in staging_files(lay) if n.startswith("tmp-")]


def test_raw_client_disconnect_leaves_nothing(live: tuple[LiveServer, Layout]) -> None:
    server, lay = live
    body = form(("directory", "cut", None), ("file", os.urandom(8 * MiB), "cut.bin"))
    head = (
        f"POST /upload-file HTTP/1.1\r\nHost: x\r\nContent-Type: {CT['content-type']}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(head + body[: len(body) // 2])
        wait_for(lambda: any(n.startswith("tmp-") for n in staging_files(lay)))  # the server is writing
    wait_for(lambda: not any(n.startswith("tmp-") for n in staging_files(lay)))
    assert not (lay.root / "cut").exists()


def test_200mb_streamed_upload_constant_memory(live: tuple[LiveServer, Layout]) -> None:
    # ~1-2 s: the issue asks for a 200 MB upload; the body is generated, never held in memory
    server, lay = live
    size = 200 * MiB
    pre = form(("directory", "big", None), close=False) + (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="reads.bam"\r\n\r\n'.encode()
    )
    post = f"\r\n--{BOUNDARY}--\r\n".encode()
    block = os.urandom(MiB)
    digest = hashlib.sha256()

    def body() -> Iterator[bytes]:
        yield pre
        for i in range(size // MiB):
            piece = i.to_bytes(8, "big") + block[8:]
            digest.update(piece)
            yield piece
        yield post

    rss_before, _ = server.rss_mib()
    server.reset_peak()
    conn = server.conn()
    length = str(len(pre) + size + len(post))
    conn.request("POST", "/upload-file", body=body(), headers={**CT, "Content-Length": length})
    answer = conn.getresponse()
    assert answer.status == 200 and json.loads(answer.read()) == {"directory": "big", "file": "reads.bam"}
    conn.close()
    _, peak = server.rss_mib()
    assert peak - rss_before < 64, f"server RSS grew by {peak - rss_before} MiB"
    stored = lay.root / "big" / "reads.bam"
    assert stored.stat().st_size == size
    check = hashlib.sha256()
    with open(stored, "rb") as fh:
        while piece := fh.read(8 * MiB):
            check.update(piece)
    assert check.hexdigest() == digest.hexdigest()
    stored.unlink()


def test_disk_limit_efbig_gives_507(tmp_path: Path) -> None:
    lay = make_layout(tmp_path)
    server = LiveServer(lay, max_upload_bytes=64 * MiB, fsize_limit=4 * MiB)  # writes past 4 MiB fail with EFBIG
    try:
        (lay.root / "keep.bin").write_bytes(b"old")
        status, answer = raw_post(server.port, "/upload-file", form(("file", os.urandom(8 * MiB), "keep.bin")))
        assert status == 507 and "disk space" in answer["error"]
        assert (lay.root / "keep.bin").read_bytes() == b"old" and staging_files(lay) == []
        status, _ = raw_post(server.port, "/upload-file", form(("file", b"small", "keep.bin")))
        assert status == 200 and (lay.root / "keep.bin").read_bytes() == b"small"
    finally:
        server.stop()


def test_download_never_mixes_versions(live: tuple[LiveServer, Layout]) -> None:
    server, lay = live
    versions = [bytes([i]) * (2 * MiB + 4096 * i) for i in range(12)]  # sizes differ: a stale length shows
    (lay.root / "hot.bin").write_bytes(versions[0])
    done = threading.Event()
    errors: list[str] = []

    def writer() -> None:
        try:
            for version in versions[1:]:
                status, _ = raw_post(server.port, "/upload-file", form(("file", version, "hot.bin")))
                if status != 200:
                    errors.append(f"upload {status}")
        finally:
            done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    reads = 0
    while not done.is_set() or reads < 3:
        conn = server.conn()
        conn.request("GET", "/download?path=hot.bin")
        answer = conn.getresponse()
        body = answer.read()
        conn.close()
        assert answer.status == 200 and int(answer.headers["content-length"]) == len(body)
        assert body in versions, "a download mixed two versions"
        reads += 1
    thread.join()
    assert not errors and (lay.root / "hot.bin").read_bytes() == versions[-1]


# ---- Downloads -------------------------------------------------------------------------------------------------------


def test_download_headers(lay: Layout, client: TestClient) -> None:
    (lay.root / "notes.txt").write_bytes(b"0123456789" * 10)
    (lay.root / "reads.fastq.gz").write_bytes(b"\x1f\x8b fake")
    (lay.root / 'we"ird;n\u00e4me.html').write_bytes(b"<script>alert(1)</script>")
    r = client.get("/download", params={"path": "notes.txt"})
    assert r.status_code == 200 and r.content == b"0123456789" * 10
    assert r.headers["content-type"].startswith("text/plain")
    assert r.headers["content-length"] == "100" and r.headers["accept-ranges"] == "bytes"
    assert r.headers["content-disposition"] == "attachment; filename=\"notes.txt\"; filename*=UTF-8''notes.txt"
    assert r.headers["etag"] and r.headers["last-modified"]
    assert r.headers["x-content-type-options"] == "nosniff" and r.headers["content-security-policy"] == "sandbox"
    assert client.get("/download", params={"path": "reads.fastq.gz"}).headers["content-type"] == "application/gzip"
    r = client.get("/download", params={"path": 'we"ird;n\u00e4me.html'})
    assert r.headers["content-disposition"] == (
        "attachment; filename=\"we_ird;n_me.html\"; filename*=UTF-8''we%22ird%3Bn%C3%A4me.html"
    )
    assert r.headers["content-security-policy"] == "sandbox"
    etag = client.get("/download", params={"path": "notes.txt"}).headers["etag"]
    assert client.get("/download", params={"path": "notes.txt"}, headers={"if-none-match": etag}).status_code in (
        200,
        304,
    )


def test_download_ranges(lay: Layout, client: TestClient) -> None:
    data = bytes(range(100))
    (lay.root / "r.bin").write_bytes(data)

    def get(range_header: str) -> Any:
        return client.get("/download", params={"path": "r.bin"}, headers={"range": range_header})

    r = get("bytes=10-19")
    assert r.status_code == 206 and r.content == data[10:20] and r.headers["content-range"] == "bytes 10-19/100"
    r = get("bytes=-5")
    assert r.status_code == 206 and r.content == data[95:] and r.headers["content-range"] == "bytes 95-99/100"
    r = get("bytes=90-")
    assert r.status_code == 206 and r.content == data[90:]
    r = get("bytes=200-300")
    assert r.status_code == 416 and r.headers["content-range"] == "bytes */100"
    r = get("bytes=0-1,50-51")
    assert r.status_code == 206 and r.headers["content-type"].startswith("multipart/byteranges")
    assert data[0:2] in r.content and data[50:52] in r.content


def test_download_refusals(lay: Layout, client: TestClient) -> None:
    os.mkfifo(lay.root / "fifo")  # opening a FIFO would hang a naive server
    assert client.get("/download", params={"path": "fifo"}).status_code == 400
    assert client.get("/download", params={"path": "missing.txt"}).status_code == 404
    assert client.get("/download").status_code == 400
    assert client.get("/upload-status").status_code == 400


def test_download_folder_as_zip(lay: Layout, client: TestClient) -> None:
    make_links(lay)
    (lay.root / "res" / "deep" / "er").mkdir(parents=True)
    (lay.root / "res" / "empty").mkdir()
    (lay.root / "res" / "a.txt").write_text("A")
    (lay.root / "res" / "deep" / "er" / "b.bin").write_bytes(os.urandom(3 * MiB + 5))
    (lay.root / "res" / "published").symlink_to(lay.runs / "work" / "ab" / "out.txt")
    (lay.root / "res" / "workdir").symlink_to(lay.runs / "work")
    (lay.root / "res" / "escape").symlink_to(lay.outside)
    (lay.root / "res" / "back").symlink_to("..")  # into the project: allowed, but no endless recursion
    os.mkfifo(lay.root / "res" / "fifo")
    r = client.get("/download", params={"path": "res"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    assert r.headers["content-disposition"] == "attachment; filename=\"res.zip\"; filename*=UTF-8''res.zip"
    archive = zipfile.ZipFile(io.BytesIO(r.content))
    assert archive.testzip() is None
    names = set(archive.namelist())
    assert {"res/", "res/empty/", "res/a.txt", "res/deep/er/b.bin", "res/published", "res/workdir/ab/out.txt"} <= names
    assert archive.read("res/deep/er/b.bin") == (lay.root / "res" / "deep" / "er" / "b.bin").read_bytes()
    assert archive.read("res/published") == b"published by a run\n"
    assert not [n for n in names if "escape" in n or "fifo" in n or "passwd" in n or "nfhub.config" in n]
    assert "res/back/" not in names  # 'back' -> '..' contains itself: not followed round and round
    root_zip = zipfile.ZipFile(io.BytesIO(client.get("/download", params={"path": ""}).content))
    assert "1/res/a.txt" in root_zip.namelist() and "1/out.txt" in root_zip.namelist()
    assert not [n for n in root_zip.namelist() if n.startswith(("1/etc/", "1/a/", "1/sib/"))]


def test_zip_stream_constant_memory(lay: Layout) -> None:
    folder = lay.root / "many"
    folder.mkdir()
    block = os.urandom(4 * MiB)
    for i in range(12):
        (folder / f"part{i}.bin").write_bytes(block)
    tracemalloc.start()
    try:
        size = 0
        for chunk in nf._zip_chunks(lay.ctx(), str(folder), "many"):
            size += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert size > 48 * MiB
    assert peak < 8 * MiB, f"zip streaming peaked at {peak / MiB:.1f} MiB for a 48 MiB folder"


# ---- Folders, deletes, staging ---------------------------------------------------------------------------------------


def test_create_folder(lay: Layout, client: TestClient) -> None:
    assert client.post("/create-folder", json={"path": "a/b/c"}).json() == ""
    assert (lay.root / "a" / "b" / "c").is_dir()
    assert client.post("/create-folder", json={"path": "a/b/c/"}).status_code == 200  # existing: fine
    (lay.root / "a" / "f.txt").write_text("f")
    assert client.post("/create-folder", json={"path": "a/f.txt"}).status_code == 409
    assert client.post("/create-folder", json={"path": "a/f.txt/sub"}).status_code == 409
    assert sorted(p.name for p in lay.root.rglob("*")) == ["a", "b", "c", "f.txt"]


def test_delete(lay: Layout, client: TestClient) -> None:
    (lay.root / "d" / "sub").mkdir(parents=True)
    (lay.root / "d" / "sub" / "x.txt").write_text("x")
    (lay.root / "d" / "out").symlink_to(lay.outside)  # rmtree must unlink this, not empty /outside
    (lay.root / "d" / "run").symlink_to(lay.runs / "work")
    (lay.root / "f.txt").write_text("f")
    before = snapshot(lay.data.parent, skip=lay.root)
    assert client.post("/delete-path", json={"path": "f.txt"}).json() == ""
    assert client.post("/delete-path", json={"path": "d"}).status_code == 200
    assert os.listdir(lay.root) == []
    assert snapshot(lay.data.parent, skip=lay.root) == before
    assert client.post("/delete-path", json={"path": "d"}).status_code == 404
    for rel in ROOTS + ["/"]:
        assert client.post("/delete-path", json={"path": rel}).status_code == 400
    assert lay.root.is_dir()


def test_sweep_staging(lay: Layout) -> None:
    old = time.time() - 10 * 86400
    for name in ("tmp-old.part", "chunk-old-10.part", "tmp-new.part", "chunk-new-10.part", "unrelated.txt"):
        (lay.staging / name).write_text("x")
    for name in ("tmp-old.part", "chunk-old-10.part"):
        os.utime(lay.staging / name, (old, old))
    assert nf.sweep_staging(lay.staging.parent) == 2
    assert staging_files(lay) == ["chunk-new-10.part", "tmp-new.part", "unrelated.txt"]
    assert nf.sweep_staging(lay.staging, temp_age_seconds=0) == 1
    assert staging_files(lay) == ["chunk-new-10.part", "unrelated.txt"]


# ---- Entry point for the live server ---------------------------------------------------------------------------------


def _serve(config: str) -> None:
    import uvicorn

    cfg = json.loads(config)
    ctx = nf.ProjectFiles(Path(cfg["root"]), tuple(Path(p) for p in cfg["links"]), Path(cfg["staging"]), cfg["max"])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)  # connections queue from now on: the parent may connect as soon as it reads the port
    print(sock.getsockname()[1], flush=True)
    uvicorn.Server(uvicorn.Config(make_app(ctx), log_level="warning", lifespan="off")).run(sockets=[sock])


if __name__ == "__main__":
    _serve(sys.argv[1])
