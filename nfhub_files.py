"""Project files: one path resolver, streaming uploads (plain and resumable), downloads and folders.

Every user-supplied path goes through :func:`resolve_path` (or the helpers built on the same splitter). The HTTP
handlers take a :class:`ProjectFiles` context that the app builds after authentication and ownership checks.

Paths
-----
A path is relative to the project folder and uses ``/`` between names. ``""`` and ``"."`` mean the project folder;
one trailing ``/`` is ignored (``"results/"`` is ``"results"``). Refused with 400 before any file system call: a
leading ``/`` (absolute), a backslash anywhere, control characters (NUL, CR, LF, TAB, DEL, C1), an empty segment
(``a//b``), a segment over 255 UTF-8 bytes, a path over 4096 bytes, and ``..`` that climbs above the project folder.
``.`` and ``..`` inside a path are applied lexically (``a/../b`` is ``b``). The result is resolved with symlinks and
must lie inside the project folder (``os.path.commonpath``); a symlink may also point into the project's run
directories, which are readable (list, download) but never written through. Anything else is 400; a path that does
not exist, where it must, is 404.

Names that the API creates (uploaded files, new folders, including folders created on the way) must also be
portable: not ``.``/``..``, not starting with ``.`` (hidden), not starting or ending with a space or ending with a
dot, no ``< > : " | ? *``, no invisible/format characters (bidi overrides, zero-width spaces), and not a Windows device
name (``CON``, ``nul.txt``, ``COM1`` …). New names are stored NFC-normalised, so ``é`` typed either way is one file.
Existing names created by pipelines are not held to these rules: they can be listed, downloaded and deleted.

Listing: symlinks are shown as what they point to; links that dangle, loop or point outside the allowed places are
left out of the listing (they can still be deleted by name). Deleting a symlink removes the link, never its target;
deleting a folder removes its contents without following symlinks. The project folder itself cannot be deleted.

Uploads, resumable uploads, downloads
-------------------------------------
The protocol as clients see it is specified in docs/api.md ("Project files"). Here, what the code promises:
an upload streams to a temporary file in the staging folder (same file system as the project) as the multipart body
is parsed, and only a complete file is ``fsync``-ed and renamed over its target, so a reader never sees half a file
and a refused or broken upload (413, 507, a dropped connection) leaves nothing behind. A resumable upload keeps one
staging file per (target path, total) whose size is the bytes received so far, on disk only (it survives restarts);
:func:`sweep_staging` removes old ones. A download is served from the one handle it opened (a concurrent replacement
never mixes two files); a folder streams as a stored ZIP64 built on the fly in constant memory.

Not covered: an attacker who can create symlinks inside the project folder between the check and the use (the API
itself never creates symlinks; pipelines that publish links are trusted code).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import logging
import mimetypes
import os
import re
import shutil
import stat
import tempfile
import time
import unicodedata
import zipfile
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, BinaryIO, cast
from urllib.parse import quote

import anyio
import anyio.to_thread
from anyio.abc import TaskGroup
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.background import BackgroundTask
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse

log = logging.getLogger("nfhub.files")

MAX_PATH_BYTES = 4096
MAX_NAME_BYTES = 255
IO_CHUNK = 1024 * 1024  # disk writes and reads happen in pieces of this size: few syscalls and thread hops
_LINGER_BYTES = 64 * 1024 * 1024  # replaced files at least this big are freed after the answer is sent
MAX_FORM_PARTS = 16
MAX_FIELD_BYTES = 64 * 1024
FORM_OVERHEAD = 2 * 1024 * 1024  # room for boundaries, part headers and text fields beside the file
MAX_JSON_BYTES = 64 * 1024

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_WINDOWS_CHARS = frozenset('<>:"|?*')
_DEVICE_NAMES = frozenset(
    ["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"] + [f"{p}{i}" for p in ("COM", "LPT") for i in "123456789¹²³"]
)
_INVISIBLE = frozenset(["Cc", "Cf", "Cs", "Co", "Zl", "Zp"])
_DISK_FULL = frozenset([errno.ENOSPC, errno.EDQUOT, errno.EFBIG])
_COMPRESSED_TYPES = {
    "gzip": "application/gzip",
    "bzip2": "application/x-bzip2",
    "xz": "application/x-xz",
    "br": "application/x-brotli",
    "compress": "application/x-compress",
}
_SECURITY_HEADERS = {"x-content-type-options": "nosniff", "content-security-policy": "sandbox"}


class FilesError(Exception):
    """A refused request: the app answers ``status`` with ``{"error": message, "details"?: details}``."""

    def __init__(self, status: int, message: str, details: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details
        self.headers = headers


@dataclass(frozen=True)
class ProjectFiles:
    """Where one project's files live, built by the app for each request after the ownership check.

    ``root`` is the project folder (it exists); ``link_roots`` are the places outside it that symlinks may point to
    (this project's run directories), readable only; ``staging`` holds this project's pending uploads and must be on
    the same file system as ``root``; ``max_upload_bytes`` limits each file.
    """

    root: Path
    link_roots: tuple[Path, ...]
    staging: Path
    max_upload_bytes: int

    @functools.cached_property
    def real_roots(self) -> tuple[str, tuple[str, ...]]:
        """``root`` and ``link_roots`` resolved, once: every containment check (one per symlink in a listing) needs
        them."""
        return os.path.realpath(self.root), tuple(os.path.realpath(p) for p in self.link_roots)


# ---- Paths -----------------------------------------------------------------------------------------------------------


def _split(rel: object) -> list[str]:
    """Check a relative path lexically and return its names with ``.``/``..`` applied; no file system access."""
    if not isinstance(rel, str):
        raise FilesError(400, "path must be a string")
    try:
        size = len(rel.encode("utf-8"))
    except UnicodeEncodeError:
        raise FilesError(400, "path is not valid Unicode") from None
    if size > MAX_PATH_BYTES:
        raise FilesError(400, f"path is longer than {MAX_PATH_BYTES} bytes")
    if _CONTROL.search(rel):
        raise FilesError(400, "path contains control characters")
    if "\\" in rel:
        raise FilesError(400, "backslashes are not allowed in paths; use / between folder names")
    if rel.startswith("/"):
        raise FilesError(400, "absolute paths are not allowed; give a path relative to the project folder")
    if rel in ("", "."):
        return []
    parts = rel.split("/")
    if parts[-1] == "":
        parts.pop()
    names: list[str] = []
    for part in parts:
        if part == "":
            raise FilesError(400, "path contains an empty name ('//')")
        if len(part.encode("utf-8")) > MAX_NAME_BYTES:
            raise FilesError(400, f"a name in the path is longer than {MAX_NAME_BYTES} bytes")
        if part == ".":
            continue
        if part == "..":
            if not names:
                raise FilesError(400, "path leads outside the project folder")
            names.pop()
        else:
            names.append(part)
    return names


def _check_new_name(name: str) -> str:
    """Validate a name the API is about to create; returns it NFC-normalised."""
    name = unicodedata.normalize("NFC", name)
    if name in ("", ".", ".."):
        raise FilesError(400, f"invalid name {name!r}")
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise FilesError(400, f"name is longer than {MAX_NAME_BYTES} bytes")
    if name.startswith("."):
        raise FilesError(400, f"names starting with '.' (hidden files) cannot be created: {name!r}")
    if name[0].isspace() or name[-1].isspace() or name.endswith("."):
        raise FilesError(400, f"names cannot start or end with a space or end with a dot: {name!r}")
    for ch in name:
        if ch in _WINDOWS_CHARS or ch == "/" or ch == "\\":
            raise FilesError(400, f"names cannot contain {ch!r}: {name!r}")
        if unicodedata.category(ch) in _INVISIBLE:
            raise FilesError(400, f"names cannot contain invisible or control characters (U+{ord(ch):04X})")
    if name.split(".")[0].rstrip(" ").upper() in _DEVICE_NAMES:
        raise FilesError(400, f"{name!r} is a reserved device name on Windows")
    return name


def inside(path: str, base: str) -> bool:
    """Whether real path `path` is `base` or lies below it: the one containment check (both resolved first)."""
    # commonpath, not startswith: '/data/p/1-evil' starts with '/data/p/1' (CVE-2023-29159, CVE-2026-35397)
    return path == base or os.path.commonpath((path, base)) == base


def _contain(ctx: ProjectFiles, real: str, *, writable: bool) -> None:
    root, links = ctx.real_roots
    if inside(real, root):
        return
    if any(inside(real, link) for link in links):
        if writable:
            raise FilesError(400, "files produced by runs are read-only")
        return
    raise FilesError(400, "path points outside the project folder")


def _display(names: list[str]) -> str:
    return "/".join(names)


def _resolve(ctx: ProjectFiles, names: list[str], *, must_exist: bool, allow_root: bool, writable: bool) -> str:
    root = ctx.real_roots[0]
    real = os.path.realpath(os.path.join(root, *names)) if names else root
    _contain(ctx, real, writable=writable)
    if not allow_root and real == root:
        raise FilesError(400, "a path inside the project folder is required, not the folder itself")
    if must_exist:
        try:
            os.stat(real)
        except (FileNotFoundError, NotADirectoryError):
            raise FilesError(404, f"not found: {_display(names)}") from None
        except OSError as exc:
            raise _os_error(exc) from exc
    return real


def resolve_path(
    ctx: ProjectFiles, rel: str, *, must_exist: bool = False, allow_root: bool = True, writable: bool = False
) -> Path:
    """Turn a user-supplied path relative to the project folder into a real, symlink-free path, or raise FilesError.

    400 for anything malformed or leading outside the project folder (symlinks included; a symlink into
    ``ctx.link_roots`` is accepted unless ``writable``); 404 if ``must_exist`` and it does not exist; 400 for the
    project folder itself unless ``allow_root``. ``""``, ``"."`` and ``"a/.."`` mean the project folder.
    """
    return Path(_resolve(ctx, _split(rel), must_exist=must_exist, allow_root=allow_root, writable=writable))


def _resolve_new(ctx: ProjectFiles, names: list[str]) -> tuple[str, list[str]]:
    """Resolve the part of ``names`` that exists; return its real path and the missing names, checked and NFC."""
    cur = ctx.real_roots[0]
    for i, name in enumerate(names):
        nxt = os.path.join(cur, name)
        if not os.path.lexists(nxt):
            return cur, [_check_new_name(n) for n in names[i:]]
        cur = os.path.realpath(nxt)
        # check every step so that nothing outside the allowed places is even looked at
        _contain(ctx, cur, writable=False)
        if os.path.islink(cur):
            raise FilesError(400, f"symlink loop at {_display(names[: i + 1])}")
    return cur, []


def _os_error(exc: OSError) -> Exception:
    code = exc.errno
    if code in _DISK_FULL:
        return FilesError(507, "not enough disk space to store the file")
    if code == errno.ENOENT:
        return FilesError(404, "not found")
    if code in (errno.ENOTDIR, errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR):
        return FilesError(409, "a file or folder in the way: " + (exc.strerror or "conflict"))
    if code == errno.ELOOP:
        return FilesError(400, "symlink loop")
    if code == errno.ENAMETOOLONG:
        return FilesError(400, "name too long")
    if code in (errno.EACCES, errno.EPERM):
        return FilesError(403, "permission denied")
    if code == errno.EXDEV:
        return FilesError(500, "misconfigured: the staging folder must be on the project folder's file system")
    return exc


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _allowed_target(ctx: ProjectFiles, real: str) -> bool:
    root, links = ctx.real_roots
    return inside(real, root) or any(inside(real, link) for link in links)


# ---- Listing, folders, delete ----------------------------------------------------------------------------------------


def _scan(ctx: ProjectFiles, folder: str) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    with os.scandir(folder) as it:
        for entry in it:
            try:
                if entry.is_symlink():
                    target = os.path.realpath(entry.path)
                    if not _allowed_target(ctx, target):
                        continue
                    st = os.stat(target)
                else:
                    st = entry.stat(follow_symlinks=False)
            except OSError:
                continue  # dangling link, loop, vanished meanwhile
            if stat.S_ISDIR(st.st_mode):
                entries.append({"name": entry.name, "type": "folder", "size": None, "modified": _iso(st.st_mtime)})
            elif stat.S_ISREG(st.st_mode):
                entries.append({"name": entry.name, "type": "file", "size": st.st_size, "modified": _iso(st.st_mtime)})
    entries.sort(key=lambda e: e["name"])
    return entries


async def list_files(ctx: ProjectFiles, request: Request) -> Response:
    """GET ?dir= → ``{"folders": [names], "files": [names], "entries": [{"name","type","size","modified"}]}``."""
    names = _split(request.query_params.get("dir", ""))
    real = _resolve(ctx, names, must_exist=True, allow_root=True, writable=False)
    if not os.path.isdir(real):
        raise FilesError(400, f"not a folder: {_display(names)}")
    try:
        entries = await anyio.to_thread.run_sync(_scan, ctx, real)
    except OSError as exc:
        raise _os_error(exc) from exc
    return JSONResponse(
        {
            "folders": [e["name"] for e in entries if e["type"] == "folder"],
            "files": [e["name"] for e in entries if e["type"] == "file"],
            "entries": entries,
        }
    )


def _delete(ctx: ProjectFiles, names: list[str]) -> None:
    parent = _resolve(ctx, names[:-1], must_exist=True, allow_root=True, writable=True)
    target = os.path.join(parent, names[-1])
    try:
        st = os.lstat(target)
    except (FileNotFoundError, NotADirectoryError):
        raise FilesError(404, f"not found: {_display(names)}") from None
    if stat.S_ISDIR(st.st_mode):
        # rmtree never follows symlinks (links inside are unlinked) and uses fd-based traversal on Linux
        shutil.rmtree(target)
    else:
        os.unlink(target)  # a symlink is removed itself, its target stays


async def delete_path(ctx: ProjectFiles, rel: str) -> Response:
    """POST ``{"path"}`` → ``""``: delete a file, a symlink (not its target) or a folder with its contents."""
    names = _split(rel)
    if not names:
        raise FilesError(400, "the project folder itself cannot be deleted")
    try:
        await anyio.to_thread.run_sync(_delete, ctx, names)
    except OSError as exc:
        raise _os_error(exc) from exc
    return JSONResponse("")


def _mkdir(ctx: ProjectFiles, names: list[str]) -> None:
    cur, new = _resolve_new(ctx, names)
    if not new:
        if not os.path.isdir(cur):
            raise FilesError(409, f"a file with this name exists: {_display(names)}")
        return
    _contain(ctx, cur, writable=True)
    if not os.path.isdir(cur):
        raise FilesError(409, f"not a folder: {_display(names[: len(names) - len(new)])}")
    path = os.path.join(cur, *new)
    os.makedirs(path, exist_ok=True)
    _contain(ctx, os.path.realpath(path), writable=True)


async def create_folder(ctx: ProjectFiles, rel: str) -> Response:
    """POST ``{"path"}`` → ``""``: create a folder and missing parents; an existing folder is fine, a file is 409."""
    names = _split(rel)
    if not names:
        raise FilesError(400, "a folder name is required")
    try:
        await anyio.to_thread.run_sync(_mkdir, ctx, names)
    except FileExistsError:
        raise FilesError(409, f"a file with this name exists: {_display(names)}") from None
    except OSError as exc:
        raise _os_error(exc) from exc
    return JSONResponse("")


# ---- Uploads ---------------------------------------------------------------------------------------------------------


@dataclass
class _Target:
    parent: str  # real path of the folder that receives the file (may not exist yet)
    name: str
    directory: str  # relative folder as answered
    rel: str  # NFC relative path of the file: the key of a chunked upload


def _file_names(filename: str) -> list[str]:
    if not filename:
        raise FilesError(400, "the file part has no file name")
    if _CONTROL.search(filename):
        raise FilesError(400, "file name contains control characters")
    if filename.startswith("/"):
        raise FilesError(400, "file name must not be an absolute path")
    if "\\" in filename:
        raise FilesError(400, "backslashes are not allowed in file names")
    names = [_check_new_name(n) for n in filename.split("/")]
    if len(filename.encode("utf-8")) > MAX_PATH_BYTES:
        raise FilesError(400, f"file name is longer than {MAX_PATH_BYTES} bytes")
    return names


def _writable_folder(ctx: ProjectFiles, names: list[str]) -> tuple[str, list[str], list[str]]:
    """Where a file goes in folder ``names``: the real path of the part that exists (writable), its names, and the
    checked names of the folders still to create."""
    cur, new = _resolve_new(ctx, names)
    _contain(ctx, cur, writable=True)
    return cur, names[: len(names) - len(new)], new


def _file_key(folder: list[str], name: str) -> str:
    """The path a file is known by, pending uploads included: from the project folder, NFC."""
    return unicodedata.normalize("NFC", _display([*folder, name]))


def _plan(ctx: ProjectFiles, directory: str, file_names: list[str]) -> _Target:
    cur, existing, new = _writable_folder(ctx, _split(directory) + file_names[:-1])
    if os.path.exists(cur) and not os.path.isdir(cur):
        raise FilesError(409, f"not a folder: {_display(existing)}")
    parent = os.path.join(cur, *new)
    name = file_names[-1]
    if os.path.isdir(os.path.join(parent, name)):
        raise FilesError(409, f"a folder with this name exists: {_display([*existing, *new, name])}")
    return _Target(parent=parent, name=name, directory=_display(existing + new), rel=_file_key(existing + new, name))


def _commit(ctx: ProjectFiles, fd: int, src: str, target: _Target) -> str | None:
    """fsync ``src``, create the folder, rename over the target and fsync the folder (runs in a thread).

    Returns a staging name still linked to the replaced file, if any, to unlink after answering: freeing a big
    file's blocks takes long and need not delay the response."""
    os.fsync(fd)
    try:
        os.makedirs(target.parent, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise FilesError(409, f"not a folder: {target.directory}") from None
    _contain(ctx, os.path.realpath(target.parent), writable=True)
    dst = os.path.join(target.parent, target.name)
    if os.path.isdir(dst):
        raise FilesError(409, f"a folder with this name exists: {target.rel}")
    old: str | None = None
    with contextlib.suppress(OSError):
        st = os.lstat(dst)
        if stat.S_ISREG(st.st_mode) and st.st_size >= _LINGER_BYTES:
            old = os.path.join(ctx.staging, f"tmp-replaced-{os.urandom(8).hex()}.part")
            os.link(dst, old)
    try:
        os.replace(src, dst)
    except BaseException:
        _unlink_quietly(old)
        raise
    dfd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return old


def _unlink_quietly(path: str | None) -> None:
    if path:
        with contextlib.suppress(OSError):
            os.unlink(path)


def _answer(body: dict[str, Any], replaced: str | None) -> JSONResponse:
    return JSONResponse(body, background=BackgroundTask(_unlink_quietly, replaced) if replaced else None)


def _write_all(fd: int, buffers: list[memoryview], pos: int) -> None:
    done = os.pwritev(fd, buffers, pos)
    if done < sum(len(b) for b in buffers):  # short write: rare (signals, odd file systems)
        view = memoryview(b"".join(buffers))[done:]
        pos += done
        while view:
            n = os.pwrite(fd, view, pos)
            view = view[n:]
            pos += n


def _part_prefix(ctx: ProjectFiles, rel: str) -> str:
    digest = hashlib.sha256(rel.encode("utf-8")).hexdigest()[:40]
    return os.path.join(ctx.staging, f"chunk-{digest}-")


def _pending_parts(ctx: ProjectFiles, rel: str) -> list[tuple[str, int]]:
    prefix = _part_prefix(ctx, rel)
    base = os.path.basename(prefix)
    found = []
    try:
        with os.scandir(ctx.staging) as it:
            for entry in it:
                tail = entry.name[len(base) :]
                if entry.name.startswith(base) and tail.endswith(".part") and tail[:-5].isdigit():
                    found.append((entry.path, int(tail[:-5])))
    except FileNotFoundError:
        pass
    return found


def _int_field(fields: dict[str, str], name: str) -> int:
    value = fields[name]
    if not value.isascii() or not value.isdigit() or len(value) > 20:
        raise FilesError(400, f"{name} must be a non-negative integer")
    return int(value)


# keys (staging prefixes) of chunked uploads being written right now; one process, one event loop: a set is enough
_BUSY: set[str] = set()


class _Form:
    """Callbacks for python-multipart's streaming parser; file data becomes events for the async writer."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.fields: dict[str, str] = {}
        self.file_seen = False
        self.ended = False
        self._parts = 0
        self._headers: dict[bytes, bytes] = {}
        self._hfield = bytearray()
        self._hvalue = bytearray()
        self._is_file = False
        self._name = ""
        self._value = bytearray()

    def callbacks(self) -> dict[str, Callable[..., None]]:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda d, s, e: self._hfield.extend(d[s:e]),
            "on_header_value": lambda d, s, e: self._hvalue.extend(d[s:e]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def _part_begin(self) -> None:
        self._parts += 1
        if self._parts > MAX_FORM_PARTS:
            raise FilesError(400, f"too many form parts (at most {MAX_FORM_PARTS})")
        self._headers = {}

    def _header_end(self) -> None:
        self._headers[bytes(self._hfield).strip().lower()] = bytes(self._hvalue)
        self._hfield.clear()
        self._hvalue.clear()

    def _headers_finished(self) -> None:
        kind, options = parse_options_header(self._headers.get(b"content-disposition"))
        if kind != b"form-data" or b"name" not in options:
            raise FilesError(400, "every form part needs Content-Disposition: form-data with a name")
        name = _utf8(options[b"name"], "form field name")
        if b"filename" in options:
            if name != "file":
                raise FilesError(400, f"unexpected file field {name!r}; the file goes in the 'file' field")
            if self.file_seen:
                raise FilesError(400, "only one file per request")
            self.file_seen = True
            self._is_file = True
            self.events.append(("file", _utf8(options[b"filename"], "file name")))
        else:
            if name == "file":
                raise FilesError(400, "the 'file' field must be a file upload (with a file name)")
            if name in self.fields:
                raise FilesError(400, f"field {name!r} given twice")
            self._is_file = False
            self._name = name
            self._value.clear()

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._is_file:
            # data is the body chunk itself (immutable bytes) or the boundary: a view is safe to keep
            self.events.append(("data", memoryview(data)[start:end]))
        else:
            if len(self._value) + end - start > MAX_FIELD_BYTES:
                raise FilesError(400, f"form field {self._name!r} is too large")
            self._value.extend(data[start:end])

    def _part_end(self) -> None:
        if self._is_file:
            self.events.append(("end", None))
            self._is_file = False
        else:
            self.fields[self._name] = _utf8(bytes(self._value), f"field {self._name!r}")

    def _end(self) -> None:
        self.ended = True


def _utf8(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise FilesError(400, f"{what} is not valid UTF-8") from None


@dataclass
class _Upload:
    """One upload request: where the bytes go, how many came, and how to undo it."""

    ctx: ProjectFiles
    file_names: list[str] = field(default_factory=list)
    target: _Target | None = None
    offset: int | None = None
    total: int | None = None
    fd: int = -1
    path: str = ""  # temp file, or the staging part in direct mode
    direct: bool = False  # writing a chunk in place into the staging part
    key: str = ""
    pos: int = 0  # where the next byte goes in the file at `path`
    base: int = 0  # size of the staging part when this request started (direct mode)
    skip: int = 0  # bytes of this chunk that were received before (repeat), not written again
    written: int = 0  # file bytes seen in this request
    done: bool = False
    pending: list[memoryview] = field(default_factory=list)
    pending_len: int = 0
    # one write runs in a worker thread while the next piece is parsed: parsing and disk overlap, and a disk that
    # throttles writers blocks this upload, not the event loop
    task_group: TaskGroup | None = None
    writing: anyio.Event | None = None
    write_error: OSError | None = None
    replaced: str | None = None

    async def feed(self, form: _Form) -> None:
        for kind, value in form.events:
            if kind == "file":
                self._start(value, form.fields)
            elif kind == "data":
                self.pending.append(value)
                self.pending_len += len(value)
                self._count(len(value))
                if self.pending_len >= IO_CHUNK:
                    await self._flush()
            else:
                await self._flush()
                await self._wait_write()
                self.done = True
        form.events.clear()

    def _chunk_fields(self, fields: dict[str, str]) -> None:
        has_offset, has_total = "offset" in fields, "total" in fields
        if has_offset != has_total:
            raise FilesError(400, "offset and total must be given together")
        if has_offset:
            self.offset = _int_field(fields, "offset")
            self.total = _int_field(fields, "total")
            if self.total > self.ctx.max_upload_bytes:
                raise FilesError(413, f"file is larger than the limit of {self.ctx.max_upload_bytes} bytes")
            if self.offset > self.total:
                raise FilesError(400, "offset is beyond total")

    def _start(self, filename: str, fields: dict[str, str]) -> None:
        self.file_names = _file_names(filename)
        if "directory" in fields:
            self.target = _plan(self.ctx, fields["directory"], self.file_names)  # fail before writing anything
        if "offset" in fields and "total" in fields:
            self._chunk_fields(fields)
        os.makedirs(self.ctx.staging, mode=0o700, exist_ok=True)
        if self.target is not None and self.offset:
            self._open_part(self.target)
            self.direct = True
            self.skip = max(0, self.pos - self.offset)
        else:
            self.fd, self.path = tempfile.mkstemp(prefix="tmp-", suffix=".part", dir=self.ctx.staging)

    def _open_part(self, target: _Target) -> None:
        assert self.total is not None and self.offset is not None
        prefix = _part_prefix(self.ctx, target.rel)
        self._check_not_busy(prefix)
        path = f"{prefix}{self.total}.part"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        size = os.fstat(fd).st_size
        if self.offset > size:
            os.close(fd)
            if size == 0:
                with contextlib.suppress(OSError):
                    os.unlink(path)
            raise FilesError(
                409, f"chunk starts at {self.offset} but only {size} bytes were received", {"received": size}
            )
        _BUSY.add(prefix)
        self.key, self.fd, self.path, self.pos, self.base = prefix, fd, path, size, size

    def _check_not_busy(self, prefix: str) -> None:
        if prefix in _BUSY:
            raise FilesError(
                409,
                "another request is uploading this file right now; retry shortly",
                {"received": self._received_now(prefix)},
            )

    def _received_now(self, prefix: str) -> int:
        try:
            return os.stat(f"{prefix}{self.total}.part").st_size
        except OSError:
            return 0

    def _count(self, n: int) -> None:
        self.written += n
        if self.total is not None and self.offset is not None:
            if self.offset + self.written > self.total:
                raise FilesError(400, f"chunk runs past total ({self.total} bytes)")
        elif self.written > self.ctx.max_upload_bytes:
            raise FilesError(413, f"file is larger than the limit of {self.ctx.max_upload_bytes} bytes")

    async def _flush(self) -> None:
        await self._wait_write()
        buffers, self.pending, self.pending_len = self.pending, [], 0
        if self.skip:
            kept = []
            for buf in buffers:
                if self.skip >= len(buf):
                    self.skip -= len(buf)
                else:
                    kept.append(buf[self.skip :])
                    self.skip = 0
            buffers = kept
        if not buffers:
            return
        assert self.task_group is not None
        self.writing = anyio.Event()
        self.task_group.start_soon(self._write, buffers, self.pos, self.writing)
        self.pos += sum(len(b) for b in buffers)

    async def _write(self, buffers: list[memoryview], pos: int, finished: anyio.Event) -> None:
        try:
            await anyio.to_thread.run_sync(_write_all, self.fd, buffers, pos)
        except OSError as exc:
            self.write_error = exc
        finally:
            finished.set()

    async def _wait_write(self) -> None:
        if self.writing is not None:
            with anyio.CancelScope(shield=True):  # the fd must not be closed under a running write
                await self.writing.wait()
            self.writing = None
        if self.write_error is not None:
            exc, self.write_error = self.write_error, None
            raise _os_error(exc) from exc

    async def finish(self, form: _Form) -> Response:
        fields = form.fields
        if not form.file_seen:
            raise FilesError(400, "the 'file' field is missing")
        if self.target is None:
            self.target = _plan(self.ctx, fields.get("directory", ""), self.file_names)
        if self.offset is None:
            self._chunk_fields(fields)
            if self.offset is not None and self.total is not None and self.offset + self.written > self.total:
                raise FilesError(400, f"chunk runs past total ({self.total} bytes)")
        target = self.target
        answer: dict[str, Any] = {"directory": target.directory, "file": target.name}
        try:
            if self.offset is None:
                self.replaced = await anyio.to_thread.run_sync(_commit, self.ctx, self.fd, self.path, target)
                self._close()
                self.path = ""
                return _answer(answer, self.replaced)
            received = await self._finish_chunk(target)
        except OSError as exc:
            raise _os_error(exc) from exc
        assert self.total is not None
        answer.update(received=received, total=self.total, complete=received == self.total)
        return _answer(answer, self.replaced)

    async def _finish_chunk(self, target: _Target) -> int:
        assert self.total is not None and self.offset is not None
        if self.offset == 0:
            return await self._restart_chunk(target)
        if not self.direct:
            # slice arrived before its offset/total/directory fields: it sits in a temp file, copy the new tail
            tmp_fd, tmp_path = self.fd, self.path
            self.fd, self.path = -1, ""
            try:
                self._open_part(target)
                self.direct = True
                skip = max(0, self.pos - self.offset)
                if skip < self.written:
                    await anyio.to_thread.run_sync(_copy_range, tmp_fd, skip, self.written - skip, self.fd, self.pos)
                    self.pos += self.written - skip
            finally:
                os.close(tmp_fd)
                os.unlink(tmp_path)
        if self.pos == self.total:
            self.replaced = await anyio.to_thread.run_sync(_commit, self.ctx, self.fd, self.path, target)
            self.path = ""
        received = self.pos
        self._close()
        return received

    async def _restart_chunk(self, target: _Target) -> int:
        assert self.total is not None
        prefix = _part_prefix(self.ctx, target.rel)
        self._check_not_busy(prefix)
        _BUSY.add(prefix)
        self.key = prefix
        for path, _total in _pending_parts(self.ctx, target.rel):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # the first slice starts the upload over: earlier attempts are abandoned
        if self.written == self.total:
            self.replaced = await anyio.to_thread.run_sync(_commit, self.ctx, self.fd, self.path, target)
        else:
            os.replace(self.path, f"{prefix}{self.total}.part")
        self.path = ""
        self._close()
        return self.written

    def _close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.key:
            _BUSY.discard(self.key)
            self.key = ""

    async def abort(self, *, keep_progress: bool) -> None:
        """Undo this request's traces; a dropped connection keeps the contiguous bytes of a chunk (resumable)."""
        with anyio.CancelScope(shield=True):
            with contextlib.suppress(FilesError):
                await self._wait_write()
            if self.direct:
                if self.fd >= 0 and not keep_progress:
                    # bad input: the staged upload is as it was before (freeing blocks can be slow: a thread)
                    with contextlib.suppress(OSError):
                        await anyio.to_thread.run_sync(os.ftruncate, self.fd, self.base)
                self.path = ""  # the staging part is never removed here
            self._close()
            if self.path:
                await anyio.to_thread.run_sync(_unlink_quietly, self.path)
                self.path = ""


def _copy_range(src: int, src_pos: int, count: int, dst: int, dst_pos: int) -> None:
    while count > 0:
        n = os.copy_file_range(src, dst, min(count, 1 << 30), src_pos, dst_pos)
        if n == 0:
            raise OSError(errno.EIO, "short copy")
        src_pos += n
        dst_pos += n
        count -= n


def _boundary(request: Request) -> bytes:
    kind, options = parse_options_header(request.headers.get("content-type", ""))
    if kind != b"multipart/form-data":
        raise FilesError(415, "upload must be multipart/form-data")
    boundary = options.get(b"boundary")
    if not boundary:
        raise FilesError(400, "multipart boundary missing")
    return boundary


async def upload_file(ctx: ProjectFiles, request: Request) -> Response:
    """POST multipart ``file`` [, ``directory``, ``offset``, ``total``] → ``{"directory", "file"}``.

    The file streams to the staging folder and is renamed into place when complete. With ``offset`` and ``total``
    the part is one slice of a resumable upload (see the module documentation) and the answer adds ``received``,
    ``total`` and ``complete``.
    """
    boundary = _boundary(request)
    limit = ctx.max_upload_bytes + FORM_OVERHEAD
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isascii() or not length.isdigit():
            raise FilesError(400, "invalid Content-Length")
        if int(length) > limit:
            raise FilesError(413, f"file is larger than the limit of {ctx.max_upload_bytes} bytes")
    form = _Form()
    try:
        parser = MultipartParser(boundary, form.callbacks())
    except FormParserError as exc:
        raise FilesError(400, f"invalid multipart request: {exc}") from None
    upload = _Upload(ctx)
    outcome: Response | Exception
    # errors are carried out of the task group by hand: raised inside it they would arrive as an ExceptionGroup
    async with anyio.create_task_group() as task_group:
        upload.task_group = task_group
        try:
            outcome = await _receive(upload, form, parser, request, limit)
        except Exception as exc:
            outcome = exc
            await upload.abort(keep_progress=isinstance(exc, ClientDisconnect))
        except BaseException:
            await upload.abort(keep_progress=False)
            raise
    if isinstance(outcome, ClientDisconnect):
        raise FilesError(400, "upload interrupted: the client disconnected") from None
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


async def _receive(upload: _Upload, form: _Form, parser: MultipartParser, request: Request, limit: int) -> Response:
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise FilesError(413, f"file is larger than the limit of {upload.ctx.max_upload_bytes} bytes")
        try:
            parser.write(chunk)
        except FormParserError as exc:
            raise FilesError(400, f"invalid multipart body: {exc}") from None
        await upload.feed(form)
    if not form.ended or (form.file_seen and not upload.done):
        raise FilesError(400, "incomplete multipart body")
    return await upload.finish(form)


async def upload_status(ctx: ProjectFiles, request: Request) -> Response:
    """GET ?path=[&total=] → ``{"received": n, "total": t | null}`` for the pending chunked upload of that file."""
    rel = request.query_params.get("path")
    if rel is None:
        raise FilesError(400, "path is required")
    names = _split(rel)
    if not names:
        raise FilesError(400, "path must name a file")
    _, existing, new = _writable_folder(ctx, names[:-1])
    key = _file_key([*existing, *new], _check_new_name(names[-1]))
    want = request.query_params.get("total")
    if want is not None:
        want = _int_field({"total": want}, "total")
    parts = [(p, t) for p, t in _pending_parts(ctx, key) if want is None or t == want]
    best: tuple[float, int, int] | None = None
    for path, total in parts:
        try:
            st = os.stat(path)
        except OSError:
            continue
        if best is None or st.st_mtime > best[0]:
            best = (st.st_mtime, min(st.st_size, total), total)
    if best is None:
        return JSONResponse({"received": 0, "total": None})
    return JSONResponse({"received": best[1], "total": best[2]})


def sweep_staging(staging: Path, *, max_age_seconds: float = 7 * 86400, temp_age_seconds: float = 3600) -> int:
    """Remove abandoned staging files: temp files idle for ``temp_age_seconds`` (at startup pass 0), pending
    chunked uploads idle for ``max_age_seconds``. ``staging`` may be one project's folder or their parent.
    Returns the number of files removed."""
    now = time.time()
    removed = 0
    for dirpath, _dirs, files in os.walk(staging):
        for name in files:
            if not name.endswith(".part"):
                continue
            age = temp_age_seconds if name.startswith("tmp-") else max_age_seconds
            path = os.path.join(dirpath, name)
            try:
                if now - os.stat(path).st_mtime >= age:
                    os.unlink(path)
                    removed += 1
            except OSError:
                continue
    return removed


# ---- Downloads -------------------------------------------------------------------------------------------------------


def _disposition(name: str) -> str:
    fallback = "".join(c if " " <= c <= "~" and c not in '"\\' else "_" for c in name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


def _media_type(name: str) -> str:
    kind, encoding = mimetypes.guess_type(name, strict=False)
    if encoding:
        # 'x.fastq.gz' must not go out as text/plain + Content-Encoding: gzip (browsers would unpack it)
        return _COMPRESSED_TYPES.get(encoding, "application/octet-stream")
    return kind or "application/octet-stream"


def _file_response(fp: BinaryIO, st: os.stat_result, name: str, request: Request) -> FileResponse:
    """Starlette's FileResponse (ranges, ETag, 416) for a file nfhub opened itself: it is served through
    /proc/self/fd/N, which opens that very file (not whatever the path names by then), so a concurrent os.replace
    of the path cannot mix two versions. The handle is closed once the answer is out. A Range header it would refuse
    is refused here first, in nfhub's JSON error shape."""
    headers = {"content-disposition": _disposition(name), **_SECURITY_HEADERS}
    response = FileResponse(f"/proc/self/fd/{fp.fileno()}", headers=headers, media_type=_media_type(name),
                            stat_result=st, background=BackgroundTask(fp.close))
    response.chunk_size = IO_CHUNK  # larger reads: few syscalls and thread hops
    try:
        _check_range(request, response, st.st_size)
    except FilesError:
        fp.close()
        raise
    return response


def _check_range(request: Request, response: FileResponse, size: int) -> None:
    """Refuse, as FileResponse would (RFC 9110 §14), a Range it cannot serve: 400 when malformed or with no usable
    range, 416 when a range starts past the end. One it would ignore (If-Range that does not match) passes."""
    header = request.headers.get("range")
    if header is None or request.method not in ("GET", "HEAD"):
        return
    if_range = request.headers.get("if-range")
    if if_range is not None and (if_range.startswith("W/") or if_range not in (
            response.headers.get("last-modified"), response.headers.get("etag"))):
        return
    units, sep, spec = header.partition("=")
    if not sep:
        raise FilesError(400, "malformed Range header")
    if units.strip().lower() != "bytes":
        raise FilesError(400, "only byte ranges are supported")
    if spec.count(",") + 1 > FileResponse.max_ranges:
        return  # (served whole)
    ranges = []
    for part in spec.split(","):
        first, dash, last = part.strip().partition("-")
        if not dash:
            continue
        first, last = first.strip(), last.strip()
        try:
            start = int(first) if first else max(size - int(last), 0)
            end = int(last) + 1 if first and last and int(last) < size else size
        except ValueError:
            continue
        ranges.append((start, end))
    if not ranges:
        raise FilesError(400, "the Range header names no range")
    if any(not 0 <= start < size for start, _ in ranges):
        raise FilesError(416, f"the range starts past the end of the file ({size} bytes)",
                         headers={"content-range": f"bytes */{size}"})
    if any(start >= end for start, end in ranges):
        raise FilesError(400, "a range in the Range header ends before it starts")


def _open_regular(path: str) -> tuple[BinaryIO, os.stat_result]:
    # O_NONBLOCK: a FIFO planted in the folder must not hang the worker thread on open
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise FilesError(400, "not a regular file")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb"), st


class _ZipSink:
    """Write-only, tell-able, not seekable: makes zipfile stream with data descriptors."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.position = 0

    def write(self, data: bytes) -> int:
        self.buffer += data
        self.position += len(data)
        return len(data)

    def tell(self) -> int:
        return self.position

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        data = bytes(self.buffer)
        self.buffer.clear()
        return data


def _walk(ctx: ProjectFiles, top: str, arc_top: str) -> Iterator[tuple[str, str, os.stat_result]]:
    """Yield (real path, archive name, stat) for folders and regular files below ``top``, depth first, sorted.
    Symlinks are followed only into allowed places, and never into a folder that contains them (no loops)."""
    above: set[tuple[int, int]] = set()
    parent = os.path.dirname(top)
    while True:
        with contextlib.suppress(OSError):
            st = os.stat(parent)
            above.add((st.st_dev, st.st_ino))
        if parent == os.path.dirname(parent):
            break
        parent = os.path.dirname(parent)
    stack: list[tuple[str, str, frozenset[tuple[int, int]]]] = [(top, arc_top, frozenset(above))]
    while stack:
        folder, arc, ancestors = stack.pop()
        try:
            st = os.stat(folder)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in ancestors:
            continue
        ancestors = ancestors | {(st.st_dev, st.st_ino)}
        yield folder, arc + "/", st
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            continue
        subfolders = []
        for entry in entries:
            try:
                real = os.path.realpath(entry.path) if entry.is_symlink() else entry.path
                if real != entry.path and not _allowed_target(ctx, real):
                    continue
                est = os.stat(real)
            except OSError:
                continue
            name = f"{arc}/{entry.name}"
            if stat.S_ISDIR(est.st_mode):
                subfolders.append((real, name, ancestors))
            elif stat.S_ISREG(est.st_mode):
                yield real, name, est
        stack.extend(reversed(subfolders))


def _zip_chunks(ctx: ProjectFiles, top: str, arc_top: str) -> Iterator[bytes]:
    sink = _ZipSink()
    with zipfile.ZipFile(cast("IO[bytes]", sink), "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for real, name, st in _walk(ctx, top, arc_top):
            t = time.localtime(max(st.st_mtime, 315576000))  # zip dates start in 1980
            info = zipfile.ZipInfo(name, date_time=(t.tm_year, t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec))
            if name.endswith("/"):
                info.external_attr = (stat.S_IFDIR | 0o755) << 16 | 0x10
                archive.writestr(info, b"")
            else:
                try:
                    fp, st = _open_regular(real)
                except (OSError, FilesError):
                    continue
                info.external_attr = (stat.S_IFREG | 0o644) << 16
                info.file_size = st.st_size
                with fp, archive.open(info, "w", force_zip64=st.st_size > 1 << 30) as out:
                    while chunk := fp.read(IO_CHUNK):
                        out.write(chunk)
                        if len(sink.buffer) >= IO_CHUNK:
                            yield sink.take()
            if len(sink.buffer) >= IO_CHUNK:
                yield sink.take()
    yield sink.take()


async def _zip_stream(ctx: ProjectFiles, top: str, arc_top: str) -> AsyncIterator[bytes]:
    chunks = _zip_chunks(ctx, top, arc_top)
    try:
        while (chunk := await anyio.to_thread.run_sync(next, chunks, None)) is not None:
            if chunk:
                yield chunk
    finally:
        with contextlib.suppress(Exception):
            chunks.close()


async def download(ctx: ProjectFiles, request: Request) -> Response:
    """GET ?path= → the file (ranges supported), or a folder as a zip streamed on the fly."""
    rel = request.query_params.get("path")
    if rel is None:
        raise FilesError(400, "path is required")
    names = _split(rel)
    real = _resolve(ctx, names, must_exist=True, allow_root=True, writable=False)
    name = names[-1] if names else (os.path.basename(ctx.real_roots[0]) or "project")
    if os.path.isdir(real):
        headers = {"content-disposition": _disposition(f"{name}.zip"), **_SECURITY_HEADERS}
        return StreamingResponse(_zip_stream(ctx, real, name), media_type="application/zip", headers=headers)
    try:
        fp, st = await anyio.to_thread.run_sync(_open_regular, real)
    except OSError as exc:
        raise _os_error(exc) from exc
    return _file_response(fp, st, name, request)


# A user's HTML report shown in the page: scripts may run (MultiQC's plots need them) but in an opaque origin
# (sandbox without allow-same-origin: no cookies, no storage, no access to the page), and with nowhere to send
# anything (no fetch, no forms, no navigation): only its own folder's files and inline code and styles load.
VIEW_CSP = ("sandbox allow-scripts; default-src 'none'; script-src 'self' 'unsafe-inline' 'unsafe-eval'; "
            "style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; font-src 'self' data:; "
            "media-src 'self' data: blob:; connect-src 'none'; form-action 'none'; frame-ancestors 'self'; "
            "base-uri 'none'")


async def view(ctx: ProjectFiles, rel: str, request: Request) -> Response:
    """A file inline, for showing reports in the page (see VIEW_CSP); the caller checked the view ticket."""
    names = _split(rel)
    real = _resolve(ctx, names, must_exist=True, allow_root=False, writable=False)
    if os.path.isdir(real):
        raise FilesError(404, "not a file")
    try:
        fp, st = await anyio.to_thread.run_sync(_open_regular, real)
    except OSError as exc:
        raise _os_error(exc) from exc
    response = _file_response(fp, st, names[-1], request)
    response.headers["content-disposition"] = "inline"
    response.headers["content-security-policy"] = VIEW_CSP
    response.headers["cache-control"] = "private, max-age=300"
    return response


# ---- Run work folders ---------------------------------------------------------------------------------------------
# Nextflow's task folders under a project's launch dir: measured and removed here, with the same containment check.


def _tree_files(path: str) -> Iterable[os.stat_result]:
    try:
        top = os.lstat(path)
    except OSError:
        return
    if not stat.S_ISDIR(top.st_mode):
        if stat.S_ISREG(top.st_mode):
            yield top
        return
    for root, _dirs, files in os.walk(path, followlinks=False):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                yield st


def work_dir_size(path: Path) -> int:
    """Bytes of the regular files under ``path`` (hard links counted once, symlinks never followed)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for st in _tree_files(os.fspath(path)):
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            total += st.st_size
    return total


def clean_work_dir(work_dir: Path, task_workdirs: Iterable[str], keep: Iterable[Path]) -> int:
    """Remove the given task work dirs that lie inside ``work_dir``; return the bytes freed.

    A dir is skipped if it is outside ``work_dir`` (after resolving), is reached through a symlink, or holds
    the target of a kept path (``keep``: published files or folders, whose symlinks are followed to find targets).
    """
    root = os.path.realpath(work_dir)
    if not os.path.isdir(root):
        return 0
    targets: list[str] = []
    for kept in keep:
        kept_path = os.fspath(kept)
        targets.append(os.path.realpath(kept_path))
        if os.path.isdir(kept_path) and not os.path.islink(kept_path):
            for dirpath, dirnames, filenames in os.walk(kept_path, followlinks=False):
                for name in dirnames + filenames:
                    p = os.path.join(dirpath, name)
                    if os.path.islink(p):
                        targets.append(os.path.realpath(p))
    targets = [t for t in targets if inside(t, root)]

    freed = 0
    for wd in task_workdirs:
        if not isinstance(wd, str) or not os.path.isabs(wd) or "\x00" in wd:
            continue
        lexical = os.path.normpath(wd)
        # resolve the parent only: a task dir that is itself a symlink is never followed
        real = os.path.join(os.path.realpath(os.path.dirname(lexical)), os.path.basename(lexical))
        if real == root or not inside(real, root) or os.path.islink(real) or not os.path.isdir(real):
            continue
        if any(inside(t, real) for t in targets):
            log.info("clean: keeping %s (published outputs point into it)", real)
            continue
        links: dict[tuple[int, int], list[int]] = {}
        for st in _tree_files(real):
            entry = links.setdefault((st.st_dev, st.st_ino), [0, st.st_nlink, st.st_size])
            entry[0] += 1
        # shutil.rmtree never follows symlinks (and is fd-based on Linux, safe against swapped links)
        shutil.rmtree(real, ignore_errors=True)
        if os.path.lexists(real):
            log.warning("clean: could not remove all of %s", real)
            continue
        # a file hard-linked from elsewhere (publishDir mode 'link') frees nothing
        freed += sum(size for seen, nlink, size in links.values() if seen >= nlink)
        parent = os.path.dirname(real)
        if parent != root and inside(parent, root):
            try:
                os.rmdir(parent)  # the now-empty `ab/` level
            except OSError:
                pass
    return freed


__all__ = ["MAX_JSON_BYTES", "FilesError", "ProjectFiles", "clean_work_dir", "create_folder", "delete_path", "download",
           "inside", "list_files", "resolve_path", "sweep_staging", "upload_file", "upload_status", "view",
           "work_dir_size"]
