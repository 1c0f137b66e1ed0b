"""nfhub's HTTP vocabulary: the one error shape and the one place that renders it, the body reader, the checks of
names and ids every handler uses, the protective headers, and the helpers that describe operations in OpenAPI.

Floor 2: imports only Starlette and the leaves (their error classes are registered beside APIError)."""

from __future__ import annotations

import json
import logging
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive

import nfhub_catalog
import nfhub_files

log = logging.getLogger("nfhub")

MAX_JSON_BYTES = 1 << 20
MAX_NAME_LENGTH = 200
MAX_SQLITE_INT = 2**63 - 1

# ---- Errors -------------------------------------------------------------------------------------------------------


class APIError(Exception):
    """A refused request: answered `status` with {"error": message, "details"?: details} by error_response."""

    def __init__(self, status: int, message: str, details: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details
        self.headers = headers


def error_body(message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    """The one JSON error shape: {"error": message, "details"?: {field: message}}."""
    body: dict[str, Any] = {"error": message}
    if details:
        body["details"] = details
    return body


def error_response(status: int, message: str, details: dict[str, Any] | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """The one place that renders an error."""
    return JSONResponse(error_body(message, details), status_code=status, headers=headers)


async def _refused(request: Request, exc: Exception) -> Response:
    # APIError and the leaves' own errors (nfhub_files.FilesError, nfhub_catalog.ArgumentsError) have the same shape.
    return error_response(exc.status, exc.message, getattr(exc, "details", None),  # type: ignore[attr-defined]
                          getattr(exc, "headers", None))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = {404: "not found", 405: "method not allowed"}.get(exc.status_code, str(exc.detail).lower())
    return error_response(exc.status_code, message, headers=exc.headers)


async def _internal_error(request: Request, exc: Exception) -> Response:
    # The traceback goes to the log only; request headers (tokens) are never logged.
    log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal error")


def exception_handlers() -> dict[Any, Any]:
    """Starlette's exception_handlers: every error of every route ends in error_response."""
    return {APIError: _refused, nfhub_files.FilesError: _refused, nfhub_catalog.ArgumentsError: _refused,
            HTTPException: _http_error, Exception: _internal_error}


# ---- Request bodies -----------------------------------------------------------------------------------------------


async def read_body(receive: Receive, limit: int, content_length: str | bytes | None = None,
                    what: str = "request body") -> bytes:
    """The whole body of an ASGI request, refused with 413 as soon as it is known to exceed `limit` bytes (from its
    Content-Length, else while it arrives). The one body reader: JSON handlers and the weblog use it."""
    if content_length is not None and content_length.isdigit() and int(content_length) > limit:
        raise APIError(413, f"{what} larger than {limit} bytes")
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise APIError(413, f"{what} larger than {limit} bytes")
            chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def read_json(request: Request, limit: int = MAX_JSON_BYTES) -> dict[str, Any]:
    """The request's JSON object ({} for an empty body); 400 when it is not one, 413 past `limit` bytes."""
    body = await read_body(request.receive, limit, request.headers.get("content-length"))
    if not body.strip():
        return {}
    try:
        data = json.loads(body)
        # JSON allows lone UTF-16 surrogates ("\ud800") that no UTF-8 text (a file name, the database) can hold.
        json.dumps(data, ensure_ascii=False).encode()
    except (ValueError, RecursionError):
        raise APIError(400, "request body is not valid JSON (or not valid Unicode)") from None
    if not isinstance(data, dict):
        raise APIError(400, "request body must be a JSON object")
    return data


# ---- Checks -------------------------------------------------------------------------------------------------------


def check_name(value: Any, field: str = "name") -> str:
    """A display name (projects, tokens, users): a non-empty string without control characters, at most
    MAX_NAME_LENGTH characters; 422 naming `field` otherwise."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise APIError(422, f"{field} is required", {field: "required"})
    if not isinstance(value, str):
        raise APIError(422, f"{field} must be a string", {field: "must be a string"})
    name = value.strip()
    if len(name) > MAX_NAME_LENGTH:
        raise APIError(422, f"{field} is longer than {MAX_NAME_LENGTH} characters",
                       {field: f"at most {MAX_NAME_LENGTH} characters"})
    if any(ord(c) < 32 or 0x7F <= ord(c) < 0xA0 for c in name):
        raise APIError(422, f"{field} contains control characters", {field: "no control characters"})
    return name


def path_id(request: Request, name: str = "id") -> int:
    """An integer path parameter (routes declare them {name:int}), capped to what SQLite can hold: a larger one
    finds nothing instead of overflowing."""
    return min(int(request.path_params[name]), MAX_SQLITE_INT)


# ---- Headers ------------------------------------------------------------------------------------------------------

# On every answer. Same-origin framing only: the page shows HTML reports in a sandboxed iframe of its own.
SECURITY_HEADERS = ((b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
                    (b"x-frame-options", b"SAMEORIGIN"), (b"content-security-policy", b"frame-ancestors 'self'"))
SECURITY_HEADER_NAMES = frozenset(name for name, _ in SECURITY_HEADERS)


def with_security_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """`headers` plus each protective header the response does not set itself."""
    present = {name for name, _ in headers if name in SECURITY_HEADER_NAMES}
    return [*headers, *(h for h in SECURITY_HEADERS if h[0] not in present)]


# ---- OpenAPI ------------------------------------------------------------------------------------------------------

ERROR_SCHEMA = {"type": "object", "required": ["error"], "additionalProperties": False,
                "properties": {"error": {"type": "string"}, "details": {"type": "object"}}}
ID_PARAM = {"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}
EMPTY_OBJECT = {"type": "object"}


def operation(summary: str, *, auth: bool = True, body: dict | None = None, response: dict | None = None,
              errors: tuple[int, ...] = (), params: list[dict] | None = None,
              content_type: str = "application/json", status: str = "200") -> dict[str, Any]:
    """One OpenAPI operation: its summary, the token it needs, its body and answer, and its error statuses (each in
    the one error shape)."""
    op: dict[str, Any] = {"summary": summary, "responses": {
        status: {"description": "OK", **({"content": {content_type: {"schema": response}}} if response else {})}}}
    if auth:
        op["security"] = [{"token": []}]
        errors = (401, *errors)
    for code in sorted(set(errors)):
        op["responses"][str(code)] = {"description": "error",
                                      "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    if params:
        op["parameters"] = params
    return op


def query_param(name: str, kind: str = "string", required: bool = False, description: str = "") -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "schema": {"type": kind},
            **({"description": description} if description else {})}
