"""nfhub: a small, fast, self-hosted web service that runs Nextflow pipelines for researchers.

One process, one SQLite file, no broker. Run it with `nfhub serve` (or `make run`); `nfhub --help` lists the
commands. Settings come from defaults < a YAML file (`--config` / NFHUB_CONFIG) < NFHUB_<NAME> environment
variables < command-line flags; `nfhub check` validates them. The HTTP API is described at /api/openapi.json.

This module is the facade (the top floor): the project, files and catalog handlers, the OpenAPI document,
`create_app` and the command line. No other module imports it; README.md "How it works" shows the floors below.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import os
import posixpath
import re
import shutil
import sqlite3
import sys
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
from starlette.applications import Starlette
from starlette.requests import HTTPConnection, Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import nfhub_auth
import nfhub_catalog
import nfhub_files
import nfhub_runs
from nfhub_auth import PROJECT_SELECT, Auth, authenticate, get_project, login_user, project_access
from nfhub_config import (
    SETTINGS,
    Config,
    StartupError,
    database_path,
    load_config,
    load_secret_key,
    parse_duration,
    project_dir,
    redacted,
    runs_dir,
    uploads_dir,
)
from nfhub_http import (
    ERROR_SCHEMA,
    ID_PARAM,
    APIError,
    check_name,
    exception_handlers,
    operation,
    path_id,
    query_param,
    read_json,
    with_security_headers,
)
from nfhub_runs import RunManager, check_values, has_active_run, project_files
from nfhub_store import ACTIVE_STATES, RUN_STATES, Store, insert_user, now_iso, open_sync

VERSION = "0.1.0"
log = logging.getLogger("nfhub")

# ---- Application state --------------------------------------------------------------------------------------------


@dataclass
class Hub:
    """Everything a running nfhub holds, built by the lifespan (create_app) as app.state.hub. The floors below reach
    their own part through app.state.auth (nfhub_auth.auth_of) and app.state.runs (nfhub_runs.runs_of)."""

    config: Config
    catalog: dict[str, nfhub_catalog.Pipeline]
    store: Store
    auth: Auth
    runs: RunManager
    first_admin: dict[str, Any]


def hub_of(conn: HTTPConnection) -> Hub:
    return conn.app.state.hub


# ---- Handlers: service -------------------------------------------------------------------------------------------


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok", "version": VERSION})


STATIC_DIR = Path(__file__).resolve().parent / "static"
PAGE_CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
            "connect-src 'self'; frame-src 'self' blob:; object-src 'none'; base-uri 'none'; form-action 'self'; "
            "frame-ancestors 'none'")


async def page(request: Request) -> Response:
    """The web page: one HTML file and plain JavaScript modules from static/, no build step, no CDN."""
    return FileResponse(STATIC_DIR / "index.html", headers={"Content-Security-Policy": PAGE_CSP,
                                                            "Cache-Control": "no-cache"})


async def openapi(request: Request) -> Response:
    return JSONResponse(openapi_document(hub_of(request).config))


# ---- Handlers: projects ------------------------------------------------------------------------------------------


def project_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "name": row["name"],
        "workflow_arguments": json.loads(row["workflow_arguments"] or "{}"),
        "nextflow_project": row["nextflow_project"],
        "submitted_processes": row["submitted_processes"],
        "completed_processes": row["completed_processes"],
        "is_scheduled": row["run_status"] in ACTIVE_STATES,
        "status": row["run_status"],
        "run_id": row["run_id"],
        "owner": row["owner_name"],
        "access": row["access"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }


async def list_projects(store: Store, user: dict[str, Any]) -> list[dict[str, Any]]:
    if user["is_admin"]:
        access = "CASE WHEN p.owner_id = :uid THEN 'owner' ELSE COALESCE(s.access, 'admin') END"
        where = "1"
    else:
        access = "CASE WHEN p.owner_id = :uid THEN 'owner' ELSE s.access END"
        where = "(p.owner_id = :uid OR s.user_id IS NOT NULL)"
    sql = (PROJECT_SELECT.format(access=access)
           + f" LEFT JOIN shares s ON s.project_id = p.id AND s.user_id = :uid WHERE {where} ORDER BY p.id")
    return await store.all(sql, {"uid": user["id"]})


async def projects_list(request: Request) -> Response:
    user = await authenticate(request)
    rows = await list_projects(hub_of(request).store, user)
    return JSONResponse({"projects": [project_json(r) for r in rows]})


async def projects_count(request: Request) -> Response:
    user = await authenticate(request)
    rows = await list_projects(hub_of(request).store, user)
    return JSONResponse({"count": len(rows)})


async def projects_get(request: Request) -> Response:
    _, row = await project_access(request)
    return JSONResponse({"project": project_json(row)})


async def projects_create(request: Request) -> Response:
    user = await authenticate(request)
    data = await read_json(request)
    name = check_name(data.get("name"))
    state = hub_of(request)
    async with state.store.write() as db:
        now = now_iso()
        cur = await db.execute("INSERT INTO projects (owner_id, name, created_at, updated_at) VALUES (?, ?, ?, ?)",
                               (user["id"], name, now, now))
        project_id = int(cur.lastrowid or 0)
        # The folder is made inside the transaction: if it fails, the row is rolled back too.
        project_dir(state.config, project_id).mkdir(parents=True, exist_ok=True)
    row = await get_project(state.store, user, project_id)
    return JSONResponse({"project": project_json(row)})


async def projects_update(request: Request) -> Response:
    user, row = await project_access(request, "write")
    state = hub_of(request)
    project_id = row["id"]
    data = await read_json(request)
    if "nextflow_argumenty" in data and "workflow_arguments" not in data:  # the seed's typo, kept as an alias
        data["workflow_arguments"] = data.pop("nextflow_argumenty")
    unknown = set(data) - {"name", "nextflow_project", "workflow_arguments", "nextflow_argumenty"}
    if unknown:
        raise APIError(422, f"unknown field '{sorted(unknown)[0]}'", {k: "unknown field" for k in sorted(unknown)})
    changes: dict[str, Any] = {}
    if "name" in data:
        changes["name"] = check_name(data["name"])
    pipeline_name = row["nextflow_project"]
    if "nextflow_project" in data:
        pipeline_name = data["nextflow_project"]
        if pipeline_name is not None and (not isinstance(pipeline_name, str) or pipeline_name not in state.catalog):
            raise APIError(422, f"unknown nextflow project {pipeline_name!r}",
                           {"nextflow_project": "not in the catalog"})
        changes["nextflow_project"] = pipeline_name
        if pipeline_name != row["nextflow_project"] and "workflow_arguments" not in data:
            changes["workflow_arguments"] = "{}"  # another pipeline's arguments mean nothing here
    if "workflow_arguments" in data:
        values = data["workflow_arguments"]
        if values is None:
            values = {}
        if not isinstance(values, dict):
            raise APIError(422, "workflow_arguments must be an object", {"workflow_arguments": "must be an object"})
        if values:
            if pipeline_name is None:
                raise APIError(422, "choose a nextflow project before setting its arguments",
                               {"nextflow_project": "required for workflow_arguments"})
            check_values(state.runs, project_id, pipeline_name, values, complete=False)
        changes["workflow_arguments"] = json.dumps(values)
    async with state.store.write() as db:
        if await has_active_run(db, project_id):
            raise APIError(409, "the project has an active run; cancel it or wait for it to finish")
        if changes:
            sets = ", ".join(f"{k} = ?" for k in changes)
            await db.execute(f"UPDATE projects SET {sets}, updated_at = ? WHERE id = ?",
                             (*changes.values(), now_iso(), project_id))
    return JSONResponse({})


async def projects_delete(request: Request) -> Response:
    user, row = await project_access(request)
    state = hub_of(request)
    project_id = row["id"]
    if row["access"] not in ("owner", "admin"):
        raise APIError(403, "only the owner or an admin can delete a project")
    async with state.store.write() as db:
        if await has_active_run(db, project_id):
            raise APIError(409, "the project has an active run; cancel it first")
        await db.execute("DELETE FROM projects WHERE id = ?", (project_id,))
        # Move the folders aside inside the transaction, so a failure leaves row and files together.
        trash = state.config.data_path / "trash" / f"{project_id}-{uuid.uuid4().hex}"
        trash.mkdir(parents=True)
        for name, folder in (("files", project_dir(state.config, project_id)),
                             ("runs", runs_dir(state.config, project_id)),
                             ("uploads", uploads_dir(state.config, project_id))):
            if folder.exists():
                os.replace(folder, trash / name)
    await anyio.to_thread.run_sync(shutil.rmtree, trash, True)
    state.runs.broker.buffers.pop(project_id, None)  # nobody may replay its events any more
    return JSONResponse({})


# ---- Handlers: project files -------------------------------------------------------------------------------------


def _files_handler(handler: Callable, need: str, body_path: bool = False) -> Callable:
    """A project-files endpoint: access checked, the project's files context, then nfhub_files' handler with the
    request (or, for `body_path` handlers, the "path" of the JSON body)."""

    async def endpoint(request: Request) -> Response:
        _, project = await project_access(request, need)
        ctx = project_files(hub_of(request).config, project["id"])
        ctx.root.mkdir(parents=True, exist_ok=True)
        if not body_path:
            return await handler(ctx, request)
        data = await read_json(request, nfhub_files.MAX_JSON_BYTES)
        if not isinstance(data.get("path"), str):
            raise APIError(400, 'request body must be {"path": "<relative path>"}')
        return await handler(ctx, data["path"])

    endpoint.__name__ = handler.__name__
    return endpoint


VIEW_LIFETIME = 1800  # seconds a report view link works


def _view_ticket(key: bytes, user_id: int, project_id: int, folder: str, exp: int, jti: str, iat: int) -> str:
    payload = base64.urlsafe_b64encode(json.dumps([user_id, project_id, folder, exp, jti, iat]).encode()).rstrip(b"=")
    sig = hmac.new(key + b"/view", payload, hashlib.sha256).digest()[:18]
    return payload.decode() + "." + base64.urlsafe_b64encode(sig).decode()


def _read_view_ticket(key: bytes, ticket: str) -> tuple[int, int, str, int, str, int] | None:
    payload, _, sig = ticket.partition(".")
    expected = base64.urlsafe_b64encode(hmac.new(key + b"/view", payload.encode(), hashlib.sha256).digest()[:18])
    if not hmac.compare_digest(expected, sig.encode()):
        return None
    try:
        user_id, project_id, folder, exp, jti, iat = json.loads(
            base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, TypeError):
        return None
    return int(user_id), int(project_id), str(folder), int(exp), str(jti), int(iat)


async def view_link(request: Request) -> Response:
    """A short-lived URL that shows one file (and its folder's files, for a report's images) inline in the page."""
    user, project = await project_access(request)
    state = hub_of(request)
    project_id = project["id"]
    data = await read_json(request)
    rel = data.get("path")
    if not isinstance(rel, str) or not rel:
        raise APIError(422, "path is required", {"path": "required"})
    real = nfhub_files.resolve_path(project_files(state.config, project_id), rel, must_exist=True, allow_root=False)
    if not real.is_file():
        raise APIError(422, "only files can be viewed", {"path": "not a file"})
    folder = rel.strip("/").rpartition("/")[0]
    exp = int(time.time()) + VIEW_LIFETIME
    claims = user["claims"]
    ticket = _view_ticket(state.auth.tokens.key, user["id"], project_id, folder, exp, claims["jti"], int(claims["iat"]))
    quoted = "/".join(urllib.parse.quote(part) for part in rel.strip("/").split("/"))
    return JSONResponse({"url": f"/api/projects/{project_id}/view/{ticket}/{quoted}",
                         "expires_at": datetime.fromtimestamp(exp, UTC).isoformat().replace("+00:00", "Z")})


async def view_file(request: Request) -> Response:
    state = hub_of(request)
    project_id = path_id(request)
    found = _read_view_ticket(state.auth.tokens.key, request.path_params["ticket"])
    if found is None or found[1] != project_id or found[3] < time.time():
        raise APIError(404, "this view link is unknown or has expired")
    user_id, _, folder, _, jti, iat = found
    # Lexically normalised first, so that 'folder/../elsewhere' cannot leave the ticket's folder; the files' path
    # function then applies every other rule (symlinks included). Only the folder's own files, not sub-folders.
    rel = posixpath.normpath(request.path_params["path"])
    if rel.startswith(("/", "../")) or rel in ("..", ".") or posixpath.dirname(rel) != folder:
        raise APIError(404, "not found")
    user = None if jti in state.auth.tokens.revoked else await login_user(state.auth, user_id, iat)
    if user is None:
        raise APIError(404, "this view link is unknown or has expired")  # the login it came from has ended
    await get_project(state.store, user, project_id)  # access may have been withdrawn since
    return await nfhub_files.view(project_files(state.config, project_id), rel, request)


# ---- Handlers: pipeline catalog -------------------------------------------------------------------------------


def _pipeline(request: Request) -> nfhub_catalog.Pipeline:
    pipeline = hub_of(request).catalog.get(request.path_params["name"])
    if pipeline is None:
        raise APIError(404, "nextflow project not found")
    return pipeline


async def pipelines_list(request: Request) -> Response:
    await authenticate(request)
    return JSONResponse({"nextflow_projects": list(hub_of(request).catalog)})


async def pipelines_get(request: Request) -> Response:
    await authenticate(request)
    return JSONResponse({"nextflow_project": _pipeline(request).summary()})


async def pipelines_arguments(request: Request) -> Response:
    await authenticate(request)
    return JSONResponse({"arguments": _pipeline(request).arguments})


# ---- OpenAPI -----------------------------------------------------------------------------------------------------

_PROJECT_SCHEMA = {
    "type": "object",
    "required": ["id", "name", "workflow_arguments", "nextflow_project", "submitted_processes",
                 "completed_processes", "is_scheduled"],
    "properties": {
        "id": {"type": "integer"}, "name": {"type": "string"}, "workflow_arguments": {"type": "object"},
        "nextflow_project": {"type": ["string", "null"]}, "submitted_processes": {"type": "integer"},
        "completed_processes": {"type": "integer"}, "is_scheduled": {"type": "boolean"},
        "status": {"type": ["string", "null"], "enum": [*RUN_STATES, None]},
        "run_id": {"type": ["integer", "null"]}, "owner": {"type": "string"},
        "access": {"type": "string", "enum": ["owner", "write", "read", "admin"]},
        "created_at": {"type": "string"}, "updated_at": {"type": "string"},
    },
}


_PROJECT_OUT = {"type": "object", "properties": {"project": {"$ref": "#/components/schemas/Project"}}}


_EMPTY_STRING = {"type": "string", "enum": [""]}
_PATH_BODY = {"type": "object", "required": ["path"], "properties": {"path": {"type": "string"}}}


def _files_openapi() -> dict[str, Any]:
    entry = {"type": "object", "properties": {"name": {"type": "string"}, "type": {"enum": ["file", "folder"]},
                                              "size": {"type": ["integer", "null"]}, "modified": {"type": "string"}}}
    upload_body = {"multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary"}, "directory": {"type": "string"},
        "offset": {"type": "integer", "description": "resumable upload: where this slice starts"},
        "total": {"type": "integer", "description": "resumable upload: size of the whole file"}}}}}
    upload = operation("Upload a file (streamed; or one slice of a resumable upload, see docs/api.md)", params=[ID_PARAM],
                 response={"type": "object", "properties": {
                     "directory": {"type": "string"}, "file": {"type": "string"}, "received": {"type": "integer"},
                     "total": {"type": "integer"}, "complete": {"type": "boolean"}}},
                 errors=(400, 403, 404, 409, 413, 422, 507))
    upload["requestBody"] = {"required": True, "content": upload_body}
    download = operation("Download a file (Range supported) or a folder as a zip; a browser may pass ?token=",
                   params=[ID_PARAM, query_param("path", required=True), query_param("token")], errors=(400, 404, 416))
    download["responses"]["200"] = {"description": "the file, or <folder>.zip",
                                    "content": {"application/octet-stream": {"schema": {"type": "string",
                                                                                        "format": "binary"}}}}
    download["responses"]["206"] = {"description": "a byte range of the file"}
    return {
        "/api/projects/{id}/files": {"get": operation(
            "List one folder of the project", params=[ID_PARAM, query_param("dir", description="folder (default: root)")],
            response={"type": "object", "properties": {
                "folders": {"type": "array", "items": {"type": "string"}},
                "files": {"type": "array", "items": {"type": "string"}},
                "entries": {"type": "array", "items": entry}}}, errors=(400, 404))},
        "/api/projects/{id}/upload-file": {"post": upload},
        "/api/projects/{id}/upload-status": {"get": operation(
            "Bytes received so far of a pending resumable upload", params=[ID_PARAM, query_param("path", required=True),
                                                                            query_param("total", "integer")],
            response={"type": "object", "properties": {"received": {"type": "integer"},
                                                       "total": {"type": ["integer", "null"]}}},
            errors=(400, 403, 404))},
        "/api/projects/{id}/delete-path": {"post": operation(
            "Delete a file or a folder with its contents", params=[ID_PARAM], body=_PATH_BODY, response=_EMPTY_STRING,
            errors=(400, 403, 404))},
        "/api/projects/{id}/create-folder": {"post": operation(
            "Create a folder (parents included)", params=[ID_PARAM], body=_PATH_BODY, response=_EMPTY_STRING,
            errors=(400, 403, 404, 409))},
        "/api/projects/{id}/download": {"get": download},
        "/api/projects/{id}/view-link": {"post": operation(
            "A short-lived URL showing a file inline (HTML reports with their scripts, sandboxed; the file's folder "
            "is readable through it too, for the report's images)", params=[ID_PARAM], body=_PATH_BODY,
            response={"type": "object", "properties": {"url": {"type": "string"}, "expires_at": {"type": "string"}}},
            errors=(400, 404, 422))},
        "/api/projects/{id}/view/{ticket}/{path}": {"get": operation(
            "A file shown inline through a view link (no token: the ticket is the credential)", auth=False,
            params=[ID_PARAM, {"name": "ticket", "in": "path", "required": True, "schema": {"type": "string"}},
                    {"name": "path", "in": "path", "required": True, "schema": {"type": "string"}}],
            errors=(400, 404))},
    }


def _catalog_openapi() -> dict[str, Any]:
    name = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
    return {
        "/api/nextflow-projects": {"get": operation("Pipelines in the catalog", response={
            "type": "object", "properties": {"nextflow_projects": {"type": "array", "items": {"type": "string"}}}})},
        "/api/nextflow-projects/{name}": {"get": operation(
            "A pipeline's description and source", params=[name], response={
                "type": "object", "properties": {"nextflow_project": {"type": "object"}}}, errors=(404,))},
        "/api/nextflow-projects/{name}/arguments": {"get": operation(
            "The pipeline's argument definitions in display order", params=[name], response={
                "type": "object", "properties": {"arguments": {"type": "object"}}}, errors=(404,))},
    }


def openapi_document(config: Config) -> dict[str, Any]:
    """An OpenAPI 3 description of every endpoint; kept beside the routes so they change together."""
    paths: dict[str, Any] = {
        "/api/health": {"get": operation("Liveness and version", auth=False,
                                   response={"type": "object", "properties": {"status": {"type": "string"},
                                                                              "version": {"type": "string"}}})},
        "/api/openapi.json": {"get": operation("This document", auth=False, response={"type": "object"})},
        "/api/projects": {"get": operation("List the projects you own, share or (admins) all", response={
            "type": "object", "properties": {"projects": {"type": "array",
                                                          "items": {"$ref": "#/components/schemas/Project"}}}})},
        "/api/projects/count": {"get": operation("Count your projects", response={
            "type": "object", "properties": {"count": {"type": "integer"}}})},
        "/api/projects/create": {"post": operation("Create a project", body={
            "type": "object", "required": ["name"], "properties": {"name": {"type": "string", "maxLength": 200}}},
            response=_PROJECT_OUT, errors=(400, 413, 422))},
        "/api/projects/{id}": {"get": operation("Get a project", params=[ID_PARAM], response=_PROJECT_OUT, errors=(404,))},
        "/api/projects/{id}/update": {"post": operation(
            "Change name, pipeline or arguments (nextflow_argumenty is accepted as an alias of workflow_arguments)",
            params=[ID_PARAM], body={"type": "object", "properties": {
                "name": {"type": "string"}, "nextflow_project": {"type": ["string", "null"]},
                "workflow_arguments": {"type": "object"}, "nextflow_argumenty": {"type": "object"}}},
            response={"type": "object"}, errors=(400, 403, 404, 409, 422))},
        "/api/projects/{id}/delete": {"post": operation("Delete a project and its files", params=[ID_PARAM],
                                                  response={"type": "object"}, errors=(403, 404, 409))},
    }
    paths.update(_files_openapi())
    paths.update(_catalog_openapi())
    paths.update(nfhub_runs.openapi_paths())
    paths.update(nfhub_auth.openapi_paths())
    return {
        "openapi": "3.1.0",
        "info": {"title": "nfhub", "version": VERSION,
                 "description": "Run Nextflow pipelines from the browser. Authenticate with the x-access-token "
                                "header (a JWT from a login or `nfhub token`)."},
        "servers": [{"url": config.base_url}],
        "paths": paths,
        "components": {
            "securitySchemes": {"token": {"type": "apiKey", "in": "header", "name": "x-access-token"}},
            "schemas": {"Error": ERROR_SCHEMA, "Project": _PROJECT_SCHEMA},
        },
    }


# ---- App assembly ------------------------------------------------------------------------------------------------


def load_catalog_for(config: Config) -> dict[str, nfhub_catalog.Pipeline]:
    """The validated pipeline catalog; a problem stops startup with a message naming pipeline and argument."""
    try:
        return nfhub_catalog.load_catalog(config.pipelines)
    except nfhub_catalog.CatalogError as exc:
        raise StartupError(f"pipeline catalog {config.pipelines}: {exc}") from None


CATALOG_POLL = 2.0  # seconds between looks at the catalog file for changes


async def watch_catalog(config: Config, catalog: dict[str, nfhub_catalog.Pipeline]) -> None:
    """Reload the catalog when its file changes, in place (every holder of the dict sees the new one). A catalog that
    does not validate is refused with the same messages as at startup, and the one in use stays."""
    path = Path(config.pipelines)

    def stamp() -> tuple[int, int] | None:
        try:
            st = path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    seen = stamp()
    while True:
        await anyio.sleep(CATALOG_POLL)
        now = stamp()
        if now == seen or now is None:
            continue
        seen = now
        try:
            fresh = await anyio.to_thread.run_sync(nfhub_catalog.load_catalog, path)
        except (nfhub_catalog.CatalogError, OSError) as exc:
            log.error("pipeline catalog %s not reloaded, the previous one stays in use: %s", path, exc)
            continue
        except Exception:  # a bug must not take the server down with it
            log.exception("pipeline catalog %s not reloaded, the previous one stays in use", path)
            continue
        catalog.clear()
        catalog.update(fresh)
        log.warning("pipeline catalog %s reloaded: %d pipeline(s)", path, len(fresh))


async def ensure_first_user(store: Store) -> dict[str, Any]:
    """The first start creates the local admin account, like a fresh Jupyter server; returns the first admin."""
    user = await store.one("SELECT * FROM users WHERE is_admin = 1 ORDER BY id LIMIT 1")
    if user is None and await store.one("SELECT id FROM users LIMIT 1") is None:
        name = re.sub(r"[^A-Za-z0-9_.-]", "", os.environ.get("USER", "")) or "admin"
        await nfhub_auth.create_user(store, name, is_admin=True)
        user = await store.one("SELECT * FROM users WHERE name = ?", (name,))
    return user or {}


class FrontDoor:
    """The outermost layer of nfhub's own (a pure ASGI middleware: no task per request): adds the protective headers
    to every answer, and hands Nextflow's weblog POSTs straight to the weblog. Nextflow waits for each answer, so that
    lane skips routing and the layers below; a GET there, and every other path, goes through the routes."""

    WEBLOG = re.compile(r"/api/projects/(\d{1,18})/nextflow-log")

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] == "POST" and (match := self.WEBLOG.fullmatch(scope["path"])):
            scope["path_params"] = {"id": int(match[1])}
            await scope["app"].state.runs.weblog.endpoint(scope, receive, send)  # (adds the headers itself)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = with_security_headers(list(message.get("headers") or []))
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _weblog_route(scope: Scope, receive: Receive, send: Send) -> None:
    """The weblog route's endpoint (FrontDoor answers its POSTs before routing, with the same callable)."""
    await scope["app"].state.runs.weblog.endpoint(scope, receive, send)


def create_app(config: Config, *, announce_login: bool = False) -> Starlette:
    """Build the nfhub application for this configuration. Nothing starts until the ASGI lifespan runs, which opens
    the database, builds the Hub (app.state.hub, with app.state.auth and app.state.runs for the floors below),
    recovers runs and starts the task group.
    `announce_login` prints a login URL for the first admin to the terminal (`nfhub serve`)."""
    catalog = load_catalog_for(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        data = config.data_path
        for sub in ("projects", "runs", "uploads"):
            (data / sub).mkdir(parents=True, exist_ok=True)
        store = Store(database_path(config))
        await store.open()
        runs = None
        try:
            auth = await nfhub_auth.open_auth(config, store)
            first_admin = await ensure_first_user(store)
            if announce_login and first_admin:
                token, _ = auth.tokens.issue(first_admin["id"])
                # Printed to the terminal (like Jupyter), never to the log.
                print(f"\n  Open this URL to log in as '{first_admin['name']}':\n    {_login_url(config, token)}\n",
                      file=sys.stderr, flush=True)
            trash = data / "trash"
            if trash.exists():  # deletions interrupted by a crash
                await anyio.to_thread.run_sync(shutil.rmtree, trash, True)
            for staging in (data / "uploads").iterdir():  # resumable uploads abandoned long ago
                await anyio.to_thread.run_sync(lambda s=staging: nfhub_files.sweep_staging(s, temp_age_seconds=0))
            runs = RunManager(config, store, catalog)
            hub = Hub(config=config, catalog=catalog, store=store, auth=auth, runs=runs, first_admin=first_admin)
            # The typed state: handlers reach it through hub_of, nfhub_auth.auth_of and nfhub_runs.runs_of.
            app.state.hub, app.state.auth, app.state.runs = hub, auth, runs
            async with anyio.create_task_group() as tg:
                await runs.start(tg)
                tg.start_soon(watch_catalog, config, catalog)
                yield
                # Running pipelines are left running: the next start adopts them.
                tg.cancel_scope.cancel()
        finally:
            if runs is not None:
                runs.close()
            await store.close()

    routes = [
        Route("/", page, methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC_DIR, check_dir=False), name="static"),
        Route("/api/health", health, methods=["GET"]),
        Route("/api/openapi.json", openapi, methods=["GET"]),
        Route("/api/projects", projects_list, methods=["GET"]),
        Route("/api/projects/count", projects_count, methods=["GET"]),
        Route("/api/projects/create", projects_create, methods=["POST"]),
        Route("/api/projects/{id:int}", projects_get, methods=["GET"]),
        Route("/api/projects/{id:int}/update", projects_update, methods=["POST"]),
        Route("/api/projects/{id:int}/delete", projects_delete, methods=["POST"]),
        Route("/api/projects/{id:int}/files", _files_handler(nfhub_files.list_files, "read"), methods=["GET"]),
        Route("/api/projects/{id:int}/download", _files_handler(nfhub_files.download, "read"), methods=["GET"]),
        Route("/api/projects/{id:int}/upload-file", _files_handler(nfhub_files.upload_file, "write"),
              methods=["POST"]),
        Route("/api/projects/{id:int}/upload-status", _files_handler(nfhub_files.upload_status, "write"),
              methods=["GET"]),
        Route("/api/projects/{id:int}/delete-path", _files_handler(nfhub_files.delete_path, "write", True),
              methods=["POST"]),
        Route("/api/projects/{id:int}/create-folder", _files_handler(nfhub_files.create_folder, "write", True),
              methods=["POST"]),
        Route("/api/projects/{id:int}/view-link", view_link, methods=["POST"]),
        Route("/api/projects/{id:int}/view/{ticket}/{path:path}", view_file, methods=["GET"]),
        Route("/api/nextflow-projects", pipelines_list, methods=["GET"]),
        Route("/api/nextflow-projects/{name}", pipelines_get, methods=["GET"]),
        Route("/api/nextflow-projects/{name}/arguments", pipelines_arguments, methods=["GET"]),
        *nfhub_runs.routes(_weblog_route),
        *nfhub_auth.routes(),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=exception_handlers())
    app.add_middleware(FrontDoor)
    return app


def http_options(config: Config) -> dict[str, Any]:
    """uvicorn's HTTP parser for this configuration (the `http` setting). httptools is the fast one but caps no
    header or URL size (uvicorn#157, httptools#87); h11 is pure Python and takes a cap. `auto` takes httptools where
    only this machine can connect (a loopback address) and h11 with a 64 KiB cap elsewhere. docs/admin.md says more."""
    choice = config.http
    if choice == "auto":
        loopback = config.host in ("localhost", "::1") or config.host.startswith("127.")
        choice = "httptools" if loopback and _has_httptools() else "h11"
    if choice == "h11":
        return {"http": "h11", "h11_max_incomplete_event_size": MAX_HEADER_BYTES}
    return {"http": "httptools"}


MAX_HEADER_BYTES = 64 * 1024  # request line and headers together, where the h11 parser serves


def _has_httptools() -> bool:
    try:
        import httptools  # noqa: F401
    except ImportError:
        return False
    return True


# ---- CLI ---------------------------------------------------------------------------------------------------------


def _login_url(config: Config, token: str) -> str:
    return f"{config.base_url}/?token={token}"


def _print_banner(config: Config) -> None:
    exe = shutil.which(config.nextflow) if os.sep not in config.nextflow else (
        config.nextflow if os.access(config.nextflow, os.X_OK) else None)
    print(f"nfhub {VERSION} serving on {config.base_url}", file=sys.stderr)
    print(f"  data: {config.data_path}   pipelines: {Path(config.pipelines).resolve()}", file=sys.stderr)
    if exe:
        print(f"  nextflow: {exe}", file=sys.stderr)
    else:
        print(f"  WARNING: no Nextflow executable '{config.nextflow}' found: runs will fail until it is installed.\n"
              "  Install it with:  curl -s https://get.nextflow.io | bash && mv nextflow ~/.local/bin/  (needs Java 17+)\n"
              "  or point the 'nextflow' setting (NFHUB_NEXTFLOW) at it.", file=sys.stderr)


def cmd_serve(args: argparse.Namespace, config: Config) -> int:
    import uvicorn

    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(config, announce_login=True)
    _print_banner(config)
    uvicorn.run(app, host=config.host, port=config.port, log_level=config.log_level, access_log=False,
                timeout_graceful_shutdown=5, **http_options(config))
    return 0


def cmd_user_add(args: argparse.Namespace, config: Config) -> int:
    import getpass

    try:
        name = check_name(args.name)
    except APIError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    password = None
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif sys.stdin.isatty():
        password = getpass.getpass(f"Password for {name} (empty: token login only): ")
        if password and getpass.getpass("Repeat: ") != password:
            print("error: the passwords differ", file=sys.stderr)
            return 2
    if password is not None and password and len(password) < 8:
        print("error: a password needs at least 8 characters", file=sys.stderr)
        return 2
    conn = open_sync(database_path(config))
    try:
        insert_user(conn, name, password_hash=nfhub_auth.hash_password(password) if password else None,
                    is_admin=args.admin)
    except sqlite3.IntegrityError:
        print(f"error: a user named '{name}' already exists", file=sys.stderr)
        return 1
    finally:
        conn.close()
    print(f"created user '{name}'" + (" (admin)" if args.admin else ""))
    return 0


def cmd_token(args: argparse.Namespace, config: Config) -> int:
    conn = open_sync(database_path(config))
    try:
        row = conn.execute("SELECT id FROM users WHERE name = ?", (args.name,)).fetchone()
    finally:
        conn.close()
    if row is None:
        print(f"error: no user named '{args.name}' (create one with: nfhub user add {args.name})", file=sys.stderr)
        return 1
    lifetime = parse_duration(args.lifetime, "--lifetime") if args.lifetime else config.token_seconds
    if lifetime > max(config.token_seconds, config.max_token_seconds):
        print("error: --lifetime is longer than max_token_lifetime", file=sys.stderr)
        return 2
    tokens = nfhub_auth.Tokens(load_secret_key(config), config.token_seconds, config.max_token_seconds)
    token, _ = tokens.issue(row["id"], lifetime)
    print(token)
    return 0


def cmd_check(args: argparse.Namespace, config: Config) -> int:
    import shutil
    import subprocess

    problems = 0
    print("settings:")
    for key, value in redacted(config).items():
        print(f"  {key}: {json.dumps(value)}")
    try:
        catalog = load_catalog_for(config)
        print(f"catalog {config.pipelines}: {len(catalog)} pipeline(s): {', '.join(catalog)}")
    except StartupError as exc:
        print(f"catalog: ERROR {exc}")
        problems += 1
    exe = shutil.which(config.nextflow)
    if not exe:
        print(f"nextflow: ERROR '{config.nextflow}' not found; install Nextflow or set the 'nextflow' setting")
        problems += 1
    else:
        try:
            out = subprocess.run([exe, "-v"], capture_output=True, text=True, timeout=60).stdout.strip()
        except (OSError, subprocess.TimeoutExpired) as exc:
            out = f"(could not run it: {exc})"
            problems += 1
        print(f"nextflow: {exe}: {out}")
    return 1 if problems else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nfhub", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Settings (YAML file, or environment NFHUB_<NAME>):\n" + "\n".join(
                                         f"  {k:<20} {s.help}" for k, s in SETTINGS.items()))
    parser.add_argument("--config", help="YAML settings file (default: $NFHUB_CONFIG)")
    parser.add_argument("--version", action="version", version=f"nfhub {VERSION}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="start the web service")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8000)")
    serve.add_argument("--config", dest="config_sub", help="YAML settings file")
    user = sub.add_parser("user", help="manage local accounts")
    user_sub = user.add_subparsers(dest="user_command", required=True)
    add = user_sub.add_parser("add", help="create a local account")
    add.add_argument("name")
    add.add_argument("--admin", action="store_true", help="give the account admin rights")
    add.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    add.add_argument("--config", dest="config_sub", help="YAML settings file")
    token = sub.add_parser("token", help="print an access token (JWT) for an existing user")
    token.add_argument("name")
    token.add_argument("--lifetime", help="e.g. 30m, 12h, 7d (default: token_lifetime)")
    token.add_argument("--config", dest="config_sub", help="YAML settings file")
    check = sub.add_parser("check", help="validate settings and catalog, report the Nextflow executable")
    check.add_argument("--config", dest="config_sub", help="YAML settings file")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {"host": getattr(args, "host", None), "port": getattr(args, "port", None)}
    try:
        config = load_config(getattr(args, "config_sub", None) or args.config, overrides)
        if args.command == "serve":
            return cmd_serve(args, config)
        if args.command == "user":
            return cmd_user_add(args, config)
        if args.command == "token":
            return cmd_token(args, config)
        return cmd_check(args, config)
    except StartupError as exc:
        print(f"nfhub: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
