"""The house's rules, read from the source with `ast`: floors (a module imports only lower floors), no module
imports the facade, leaves import no sibling, the worker knows no Starlette, and no private internals of a
dependency are used. A new module must be given its floor here, or this test fails."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Bottom up. A module may import nfhub modules of lower floors only.
FLOORS = {
    "nfhub_store": 1, "nfhub_worker": 1, "nfhub_catalog": 1, "nfhub_files": 1,
    "nfhub_config": 2, "nfhub_http": 2,
    "nfhub_auth": 3, "nfhub_weblog": 3,
    "nfhub_runs": 4,
    "nfhub": 5,
}
# Attributes of dependencies' objects that are theirs alone (aiosqlite's connection internals, uvicorn's protocol).
PRIVATE_ATTRIBUTES = {"_conn", "_execute", "_tx", "_running", "_connection"}
PRIVATE_MODULES = ("uvicorn.protocols", "uvicorn.lifespan", "starlette._", "aiosqlite.core")
WEB_DEPENDENCIES = ("starlette", "uvicorn", "aiosqlite", "httptools", "h11")


@functools.cache
def _modules() -> dict[str, ast.Module]:
    return {p.stem: ast.parse(p.read_text(encoding="utf-8"), str(p)) for p in sorted(ROOT.glob("nfhub*.py"))}


def _imports(tree: ast.Module) -> list[tuple[str, int]]:
    """Every module an import statement names, anywhere in the file (functions included)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.module, node.lineno))
    return found


def test_every_module_has_a_floor() -> None:
    assert set(_modules()) == set(FLOORS), "give each nfhub*.py module its floor in FLOORS (and the README)"


@pytest.mark.parametrize("name", sorted(FLOORS))
def test_imports_only_lower_floors(name: str) -> None:
    tree = _modules()[name]
    for module, line in _imports(tree):
        top = module.split(".")[0]
        if top in FLOORS:
            assert top != "nfhub" or name == "nfhub", f"{name}.py:{line} imports the facade nfhub"
            assert FLOORS[top] < FLOORS[name], (
                f"{name}.py:{line} imports {top} (floor {FLOORS[top]}); floor {FLOORS[name]} imports only lower floors")


def test_the_worker_knows_no_starlette() -> None:
    for module, line in _imports(_modules()["nfhub_worker"]):
        assert not module.startswith(("starlette", "uvicorn")), f"nfhub_worker.py:{line} imports {module}"


@pytest.mark.parametrize("name", sorted(FLOORS))
def test_no_private_internals_of_dependencies(name: str) -> None:
    tree = _modules()[name]
    for module, line in _imports(tree):
        assert not module.startswith(PRIVATE_MODULES), f"{name}.py:{line} imports {module}, a dependency's internals"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in PRIVATE_ATTRIBUTES:
            raise AssertionError(f"{name}.py:{node.lineno} reaches into .{node.attr}")
    # No subclass of a web dependency's class: overriding its methods ties nfhub to its private behaviour.
    theirs = {alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
              and node.module.split(".")[0] in WEB_DEPENDENCIES for alias in node.names}
    theirs |= {alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
               for alias in node.names if alias.name.split(".")[0] in WEB_DEPENDENCIES}
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for base in node.bases:
                root = ast.unparse(base).split(".")[0]
                assert root not in theirs, f"{name}.py:{node.lineno} subclasses {ast.unparse(base)}"


@pytest.mark.parametrize("name", sorted(FLOORS))
def test_modules_have_a_docstring_and_banner_sections(name: str) -> None:
    tree = _modules()[name]
    assert ast.get_docstring(tree), f"{name}.py has no module docstring"
    text = (ROOT / f"{name}.py").read_text(encoding="utf-8")
    assert "\n# ---- " in text or "\n# ------" in text, f"{name}.py has no banner sections (its table of contents)"


def test_module_sizes() -> None:
    """nfhub.py is a facade (under 1,000 lines); no module passes 1,300 (split it along a floor)."""
    sizes = {name: len((ROOT / f"{name}.py").read_text(encoding="utf-8").splitlines()) for name in FLOORS}
    assert sizes["nfhub"] < 1000, sizes
    assert max(sizes.values()) <= 1300, sizes


def test_the_page_knows_the_active_run_states_from_one_constant() -> None:
    """static/ui.js's ACTIVE is the page's one list of active states; it matches the store's."""
    import re

    import nfhub_store

    ui = (ROOT / "static" / "ui.js").read_text(encoding="utf-8")
    (listed,) = re.findall(r"export const ACTIVE = new Set\(\[([^\]]*)\]\)", ui)
    assert tuple(re.findall(r'"([a-z]+)"', listed)) == nfhub_store.ACTIVE_STATES
    for js in (ROOT / "static").glob("*.js"):
        text = js.read_text(encoding="utf-8")
        assert '"queued", "starting", "running"' not in text.replace(listed, ""), f"{js.name} repeats the list"
