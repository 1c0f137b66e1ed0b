"""nfhub users: OpenID Connect login, local accounts, logout, personal API tokens and project sharing.

Imported by nfhub.create_app (never at nfhub's import time); it uses nfhub's storage, errors and token helpers."""

from __future__ import annotations

from typing import Any

from starlette.routing import Route

import nfhub


def routes() -> list[Route]:
    """The /api/users* and sharing routes."""
    return []


def openapi_paths() -> dict[str, Any]:
    """OpenAPI path items for the routes above."""
    return {}


async def startup(app: Any, config: nfhub.Config) -> None:
    """Called from the lifespan after the database is open (e.g. to build the OAuth registry)."""
