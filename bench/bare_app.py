"""The yardstick for `make bench`: the least a bare Starlette app can do for each kind of request nfhub answers.

Run by bench.py as `uvicorn bare_app:app --loop uvloop --http httptools`; BENCH_BARE_DIR is where uploads land and
where `download.bin` is served from.
"""

from __future__ import annotations

import os
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

DIR = Path(os.environ.get("BENCH_BARE_DIR", "."))


async def small_json(request: Request) -> Response:
    return JSONResponse({"status": "ok", "version": "0.1.0"})


async def weblog(request: Request) -> Response:
    await request.body()
    return Response(status_code=200)


async def upload(request: Request) -> Response:
    # Blocking writes on the event loop: the simplest thing that streams a body to disk. ?fsync=1 adds the same
    # durability nfhub gives an upload (fsync before answering), so the two do the same work.
    size = 0
    with open(DIR / "upload.bin", "wb") as fh:
        async for chunk in request.stream():
            fh.write(chunk)
            size += len(chunk)
        if request.query_params.get("fsync") == "1":
            os.fsync(fh.fileno())
    return JSONResponse({"received": size})


async def download(request: Request) -> Response:
    return FileResponse(DIR / "download.bin")


app = Starlette(routes=[
    Route("/json", small_json, methods=["GET"]),
    Route("/weblog", weblog, methods=["POST"]),
    Route("/upload", upload, methods=["POST"]),
    Route("/download", download, methods=["GET"]),
])
