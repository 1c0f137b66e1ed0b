"""The web page in a real browser: Playwright drives Debian's Chromium against a live nfhub with the Nextflow double.

The whole journey of a new user (log in from the printed URL, create a project, upload, pick the demo pipeline, fill
the form including a rejected value, run, watch the bar reach 100 %, tasks, log, download a result, cancel a slow
run), plus local login and logout, resumable uploads and upload limits, failed runs, previews, narrow windows, and the
account screens: sharing a project between two browsers, personal API tokens, changing the password, logging out
everywhere.

Chromium comes from apt (`/usr/bin/chromium`); without it these tests are skipped with a reason, unless
NFHUB_REQUIRE_BROWSER=1 (CI), which turns the skip into a failure. Screenshots of the main screens are written to
$NFHUB_SCREENSHOTS (default: test-artifacts/screenshots, git-ignored); the README's are refreshed with
`NFHUB_SCREENSHOTS=docs/screenshots .venv/bin/pytest tests/test_page.py`.
"""

from __future__ import annotations

import json
import os
import re
import struct
import zlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import yaml

import nfhub_config
from conftest import ROOT, LiveServer, make_pipeline, open_db, wait_for

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
SCREENSHOTS = Path(os.environ.get("NFHUB_SCREENSHOTS") or ROOT / "test-artifacts" / "screenshots")
TIMEOUT = 20_000  # ms, for any single expectation

pytestmark = pytest.mark.browser

try:
    from playwright.sync_api import Browser, Page, expect, sync_playwright

    expect.set_options(timeout=TIMEOUT)
except ImportError:  # pragma: no cover - the venv has it; a bare checkout may not
    sync_playwright = None


def _unavailable() -> str | None:
    if sync_playwright is None:
        return "the playwright package is not installed"
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (apt-get install chromium); set NFHUB_REQUIRE_BROWSER=1 to fail instead"
    return None


@pytest.fixture
def catalog(tmp_path: Path, live_settings: dict) -> Path:
    """The demo pipeline as shipped, plus scripted ones for a failure and a slow run to cancel (replaces conftest's
    catalog so that the screenshots show real descriptions)."""
    make_pipeline(tmp_path, "fails", {"tasks": [
        {"process": "GOOD", "each": ["a", "b"], "seconds": 0.1},
        {"process": "BAD", "after": "GOOD", "each": ["a"], "seconds": 0.1, "exit": 3,
         "stderr": "samtools: truncated file\n"},
    ]})
    make_pipeline(tmp_path, "slow", {"tasks": [
        {"process": "SLEEPY", "each": ["x", "y"], "seconds": 60, "ignore_sigterm": True},
    ]})
    shipped = yaml.safe_load((ROOT / "nextflow_projects.yaml").read_text())["hello"]
    every_type = {
        "data": {"type": "separator", "label": "Data", "description": "What to analyse"},
        "samples": {"type": "paths", "label": "Samples", "required": True, "pattern": r"\.fastq$",
                    "help": "One or more FASTQ files."},
        "reference": {"type": "path", "label": "Reference folder", "selectable_files": False,
                      "selectable_folders": True},
        "reads": {"type": "file-glob", "label": "Read pattern", "default": "reads/*.fastq"},
        "options": {"type": "separator", "label": "Options"},
        "tools": {"type": "value-select", "label": "Tools", "multiple": True,
                  "options": ["fastqc", {"label": "MultiQC", "value": "multiqc"}, "trimgalore"]},
        "aligner": {"type": "value-select", "label": "Aligner", "options": ["bwa", "bowtie2"], "default": "bwa"},
        "quality": {"type": "number", "label": "Minimum quality", "min": 0, "max": 1, "default": 0.5},
        "notes": {"type": "text", "label": "Notes", "multiline": True, "max_length": 500},
        "dry_run": {"type": "boolean", "label": "Dry run", "default": False},
    }
    entries = {
        "hello": {**shipped, "source": str(ROOT / "pipelines" / "hello")},
        "every-type": {"description": "A setting of every kind.", "source": "./pipelines/fails",
                       "arguments": every_type},
        "fails": {"description": "Checks samples, then fails on a truncated file (to see how failures look).",
                  "source": "./pipelines/fails", "static_arguments": {"outdir": "results"}},
        "slow": {"description": "Two long tasks (to try cancelling).", "source": "./pipelines/slow"},
    }
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(entries, sort_keys=False))  # arguments are shown in the order written
    live_settings["pipelines"] = str(path)
    live_settings["cancel_grace"] = 2
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    reason = _unavailable()
    if reason:
        if os.environ.get("NFHUB_REQUIRE_BROWSER") == "1":
            pytest.fail(f"browser tests required but {reason}")
        pytest.skip(reason)
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


class Session:
    """One browser context on the live server, collecting script errors and CSP violations."""

    def __init__(self, browser: Browser, server: LiveServer, width: int = 1280, height: int = 900):
        self.server = server
        self.context = browser.new_context(viewport={"width": width, "height": height}, accept_downloads=True,
                                           base_url=server.url)
        self.context.set_default_timeout(TIMEOUT)
        self.page = self.context.new_page()
        self.problems: list[str] = []
        self.page.on("pageerror", lambda e: self.problems.append(f"uncaught: {e}"))
        self.page.on("console", self._console)

    def _console(self, msg) -> None:
        # Chromium logs every failed fetch as an error; the page shows those itself. Script errors and CSP are bugs.
        if msg.type == "error" and "Failed to load resource" not in msg.text:
            self.problems.append(msg.text)

    def shot(self, name: str, full_page: bool = False) -> None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page = self.page
        page.evaluate("document.getElementById('toasts').replaceChildren()")  # passing messages, not content
        size = page.viewport_size
        if full_page:  # a window as tall as the page, so that sticky bars sit where they belong
            page.set_viewport_size({"width": size["width"], "height": page.evaluate("document.body.scrollHeight")})
        page.wait_for_timeout(300)  # let CSS transitions of the progress bars settle before the picture
        page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))
        page.set_viewport_size(size)

    def close(self) -> None:
        self.context.close()
        assert not self.problems, self.problems


@pytest.fixture
def session(browser: Browser, server: LiveServer) -> Iterator[Callable[..., Session]]:
    opened: list[Session] = []

    def open_session(**kw: int) -> Session:
        s = Session(browser, server, **kw)
        opened.append(s)
        return s

    yield open_session
    for s in opened:
        s.close()


def login(s: Session, token: str) -> Page:
    page = s.page
    page.goto(f"/?token={token}")
    expect(page.get_by_role("heading", name="Projects")).to_be_visible()
    return page


def create_project(page: Page, name: str) -> int:
    page.get_by_role("button", name="New project").click()
    page.get_by_label("Project name").fill(name)
    page.get_by_role("button", name="Create project").click()
    expect(page).to_have_url(re.compile(r"#/p/\d+/files$"))
    expect(page.get_by_role("heading", name=name, level=1)).to_be_visible()
    return int(re.search(r"#/p/(\d+)/", page.url).group(1))


def upload(page: Page, files: list[dict]) -> None:
    page.locator("input[type=file]:not([webkitdirectory])").set_input_files(files)


def accessible_names_missing(page: Page) -> list[str]:
    """Buttons, links and form controls without an accessible name (a screen reader would say only 'button')."""
    return page.evaluate("""() => [...document.querySelectorAll('button, a[href], input, select, textarea')]
      .filter(el => el.offsetParent !== null && el.type !== 'file')
      .filter(el => {
        if ((el.getAttribute('aria-label') || '').trim()) return false;
        if (el.labels && el.labels.length) return false;
        if (el.getAttribute('aria-labelledby')) return false;
        return !(el.textContent || '').trim() && !el.title;
      }).map(el => el.outerHTML.slice(0, 120))""")


def project_dir(server: LiveServer, pid: int) -> Path:
    return nfhub_config.project_dir(server.config, pid)


# ---- the journey -----------------------------------------------------------------------------------------------------


@pytest.mark.slow  # about 12 s: two pipeline runs (one cancelled after its grace period) and every screen of the page
def test_whole_journey(session: Callable[..., Session], server: LiveServer, make_user, tmp_path: Path) -> None:
    s = session()
    page = s.page
    token = make_user("alice")

    # 1. The printed login URL: the token is taken, stored, and gone from the address bar at once.
    page.goto(f"/?token={token}#/")
    expect(page.get_by_role("heading", name="Projects")).to_be_visible()
    assert "token" not in page.url
    assert page.evaluate("localStorage.getItem('nfhub.token')") == token
    page.go_back()  # the entry was replaced, not pushed: Back does not lead to the token
    assert "token" not in page.url
    page.go_forward()
    expect(page.get_by_role("heading", name="Projects")).to_be_visible()
    assert "token" not in page.url
    expect(page.get_by_text("No projects yet")).to_be_visible()

    # 2. Create a project; it opens on its (empty) files.
    pid = create_project(page, "RNA batch 1")
    expect(page.get_by_text("No files yet")).to_be_visible()

    # 3. Upload: a file by the button, a folder (sub-folders kept), a file dropped onto the panel.
    upload(page, [{"name": "names.txt", "mimeType": "text/plain", "buffer": b"Ada\nGrace\nMarie\n"}])
    expect(page.locator(".upload-item[data-path='names.txt']")).to_have_attribute("data-state", "done")
    expect(page.locator(".upload-item[data-path='names.txt'] [role=progressbar]")).to_have_attribute(
        "aria-valuenow", "100")
    expect(page.locator("tr[data-name='names.txt']")).to_contain_text("16 B")
    assert (project_dir(server, pid) / "names.txt").read_bytes() == b"Ada\nGrace\nMarie\n"

    reads = tmp_path / "reads"
    (reads / "lane1").mkdir(parents=True)
    (reads / "lane1" / "a.fastq").write_text("@a\nACGT\n+\nIIII\n")
    (reads / "b.fastq").write_text("@b\nTTTT\n+\nIIII\n")
    page.locator("input[webkitdirectory]").set_input_files(str(reads))
    expect(page.locator("tr[data-name='reads']")).to_be_visible()
    wait_for(lambda: (project_dir(server, pid) / "reads" / "lane1" / "a.fastq").exists(), 10, what="folder upload")
    assert (project_dir(server, pid) / "reads" / "b.fastq").read_text() == "@b\nTTTT\n+\nIIII\n"

    drop = page.evaluate_handle("""() => { const dt = new DataTransfer();
        dt.items.add(new File(['dropped\\n'], 'dropped.txt', {type: 'text/plain'})); return dt; }""")
    page.dispatch_event(".dropzone", "dragenter", {"dataTransfer": drop})
    expect(page.locator(".dropzone")).to_have_class(re.compile("dragging"))
    page.dispatch_event(".dropzone", "drop", {"dataTransfer": drop})
    expect(page.locator("tr[data-name='dropped.txt']")).to_be_visible()
    assert (project_dir(server, pid) / "dropped.txt").read_text() == "dropped\n"
    expect(page.get_by_text("Uploads · 4 of 4 done")).to_be_visible()

    # Folders: create one, open it, go back by the breadcrumb; delete with confirmation.
    page.get_by_role("button", name="New folder").click()
    page.get_by_label("Folder name").fill("scratch")
    page.get_by_role("button", name="Create folder").click()
    page.get_by_role("link", name="scratch", exact=True).click()
    expect(page.get_by_text("This folder is empty")).to_be_visible()
    page.locator(".files-crumbs").get_by_role("link", name="Project files").click()
    page.get_by_role("button", name="Delete scratch").click()
    page.get_by_role("button", name="Delete folder").click()
    expect(page.locator("tr[data-name='scratch']")).to_have_count(0)
    assert not (project_dir(server, pid) / "scratch").exists()
    s.shot("files")

    # 4. Pick the demo pipeline; its description is shown; the form is generated from the arguments.
    page.get_by_role("tab", name="Pipeline").click()
    expect(page.get_by_text("A tiny demo pipeline that greets every line of a text file.")).to_be_visible()
    page.get_by_role("radio", name=re.compile("^hello")).check()
    expect(page.get_by_role("heading", name="Settings for hello")).to_be_visible()
    form = page.locator("form.args-form")
    expect(form.locator("legend", has_text="Input/output options")).to_be_visible()  # separators are group headings
    expect(form.locator(".field[data-arg=input] .required")).to_be_visible()  # required mark
    expect(form.locator(".field[data-arg=max_names] input[type=number]")).to_have_attribute("max", "1000")
    expect(form.locator(".field[data-arg=publish_dir_mode] select")).to_have_value(re.compile(r"\d"))
    expect(form.get_by_role("switch", name="uppercase")).to_be_checked()
    help_button = form.get_by_role("button", name="Help for input")
    expect(form.locator(".field[data-arg=input] .field-help")).to_be_hidden()
    help_button.click()  # help on demand
    expect(form.locator(".field[data-arg=input] .field-help")).to_contain_text("Empty lines are skipped")
    expect(help_button).to_have_attribute("aria-expanded", "true")

    # The file picker lists the project's files; names not matching the pattern cannot be chosen.
    form.get_by_role("button", name="Browse for input").click()
    picker = page.locator("dialog.dialog-picker")
    expect(picker.get_by_label("names.txt")).to_be_enabled()
    expect(picker.get_by_label("dropped.txt")).to_be_enabled()
    s.shot("picker")
    picker.get_by_label("names.txt").check()
    picker.get_by_role("button", name="Choose", exact=True).click()
    expect(form.locator(".field[data-arg=input] input")).to_have_value("names.txt")

    # Rejected values come back from the server and are shown next to their fields.
    form.get_by_label("greeting", exact=True).fill("Hi!")
    form.get_by_label("max_names", exact=True).fill("5000")
    form.get_by_role("button", name="Save settings").click()
    expect(form.locator(".field[data-arg=greeting] .field-error")).to_contain_text("does not match pattern")
    expect(form.locator(".field[data-arg=max_names] .field-error")).to_contain_text("at most 1000")
    expect(form.get_by_label("greeting", exact=True)).to_have_attribute("aria-invalid", "true")
    expect(page.locator(".error-summary")).to_contain_text("2 settings need your attention")
    assert json.loads(json.dumps(server.http.get(f"/api/projects/{pid}", headers={"x-access-token": token})
                                 .json()["project"]["workflow_arguments"])) == {}  # nothing saved
    s.shot("form", full_page=True)
    form.get_by_label("greeting", exact=True).fill("Hi")
    form.get_by_label("max_names", exact=True).fill("")
    form.get_by_role("button", name="Save settings").click()
    expect(form.locator(".save-status")).to_have_text("All changes saved")
    expect(form.locator(".field-error:visible")).to_have_count(0)
    saved = server.http.get(f"/api/projects/{pid}", headers={"x-access-token": token}).json()["project"]
    assert saved["workflow_arguments"] == {"input": "names.txt", "greeting": "Hi"}

    # 5. Run; the page follows the event stream: the bar only moves forward and reaches 100 %.
    page.evaluate("""() => { window.seen = []; const bar = document.querySelector('.runbar [role=progressbar]');
        new MutationObserver(() => window.seen.push(bar.getAttribute('aria-valuenow')))
          .observe(bar, {attributes: true, attributeFilter: ['aria-valuenow', 'class']}); }""")
    page.locator(".runbar").get_by_role("button", name="Run pipeline").click()
    expect(page).to_have_url(re.compile(rf"#/p/{pid}/runs/\d+$"))
    runbar = page.locator(".runbar")
    expect(runbar.locator("[role=progressbar]")).to_have_attribute("aria-valuenow", "100")
    expect(runbar.locator(".badge")).to_have_text("Succeeded")
    expect(runbar).to_contain_text("6 of 6 tasks done")
    expect(runbar.locator("[aria-live]")).to_contain_text("succeeded")
    seen = [int(v) for v in page.evaluate("window.seen") if v is not None]
    assert seen[-1] == 100 and min(seen) < 100, seen  # it moved, and only a finished run is at 100 %
    detail = page.locator(".run-detail")
    expect(detail.locator(".badge")).to_have_text("Succeeded")
    expect(detail.locator("[role=progressbar]")).to_have_attribute("aria-valuenow", "100")

    # Run history, task table (status, name, duration, CPU, memory), console log.
    expect(page.locator(".table-runs tbody tr")).to_have_count(1)
    expect(page.locator(".table-runs tbody tr")).to_contain_text("Succeeded")
    tasks = page.locator(".table-tasks tbody tr")
    expect(tasks).to_have_count(6)
    expect(page.locator(".table-tasks")).to_contain_text("SAY_HELLO (Ada)")
    expect(page.locator(".table-tasks thead")).to_contain_text("Memory")
    expect(page.get_by_role("heading", name="Tasks (6)")).to_be_visible()
    expect(page.locator("pre.log")).to_contain_text("Submitted process > SAY_HELLO")
    expect(page.locator("pre.log")).not_to_contain_text("token=")
    assert not accessible_names_missing(page)
    s.shot("run", full_page=True)

    # 6. Results are project files: follow the run's results link, preview and download one.
    detail.get_by_role("link", name=re.compile("results")).click()
    expect(page).to_have_url(re.compile(rf"#/p/{pid}/files/results$"))
    page.locator("tr[data-name='hello']").get_by_role("link", name="hello", exact=True).click()
    page.get_by_role("button", name="Grace.txt", exact=True).click()
    preview = page.locator("dialog.dialog-preview")
    expect(preview.locator("pre")).to_have_text("Hi, Grace!\n")
    preview.get_by_role("button", name="Close").click()
    expect(preview).to_have_count(0)
    with page.expect_download() as info:
        page.get_by_role("link", name="Download Grace.txt").click()
    assert info.value.suggested_filename == "Grace.txt"
    assert Path(info.value.path()).read_text() == "Hi, Grace!\n"
    # The token was in the address only for the click: the link goes back to a plain one right after.
    expect(page.get_by_role("link", name="Download Grace.txt")).not_to_have_attribute("href", re.compile("token="))
    with page.expect_download() as info:
        page.get_by_role("link", name="Download folder").click()
    assert info.value.suggested_filename == "hello.zip"

    # 7. A second, slow run: cancel it.
    page.get_by_role("tab", name="Pipeline").click()
    page.get_by_role("radio", name=re.compile("^slow")).check()
    page.get_by_role("button", name="Switch to slow").click()  # its arguments would be cleared: confirm
    expect(page.get_by_role("heading", name="Settings for slow")).to_be_visible()
    runbar.get_by_role("button", name="Run pipeline").click()
    expect(page.locator(".run-detail .badge")).to_have_text("Running")
    expect(page.locator(".table-tasks tbody tr")).to_have_count(2)
    runbar.get_by_role("button", name="Cancel run").click()
    page.get_by_role("dialog").get_by_role("button", name="Cancel run").click()
    expect(runbar.locator(".badge")).to_have_text("Cancelled")
    expect(page.locator(".run-detail .badge")).to_have_text("Cancelled")
    expect(runbar.get_by_role("button", name="Run pipeline")).to_be_visible()
    expect(page.locator(".table-runs tbody tr")).to_have_count(2)

    # 8. Back to the list: name, pipeline, state and progress; rename and delete with confirmation.
    page.get_by_role("link", name="Projects", exact=True).click()
    row = page.locator(f"tr[data-project-id='{pid}']")
    expect(row).to_contain_text("slow")
    expect(row.locator(".badge[data-status]")).to_have_text("Cancelled")
    second = create_project(page, "Methylation pilot")
    third = _project_with(server, token, "hello", {"input": "samples.txt"}, {"samples.txt": b"S1\nS2\n"}, "ChIP-seq rerun")
    assert server.http.post(f"/api/projects/{third}/schedule", headers={"x-access-token": token}).status_code == 200
    page.get_by_role("link", name="Projects", exact=True).click()
    page.get_by_role("button", name="Rename RNA batch 1").click()
    page.get_by_label("Project name").fill("RNA batch 1 (2026)")
    page.get_by_role("button", name="Rename", exact=True).click()
    expect(row.get_by_role("link")).to_have_text("RNA batch 1 (2026)")
    expect(page.locator(f"tr[data-project-id='{third}'] .badge[data-status]")).to_have_text("Succeeded")
    s.shot("projects")
    page.get_by_role("button", name="Delete Methylation pilot").click()
    page.get_by_role("button", name="Cancel", exact=True).click()  # the confirmation protects
    expect(page.locator(f"tr[data-project-id='{second}']")).to_be_visible()
    page.get_by_role("button", name="Delete Methylation pilot").click()
    page.get_by_role("button", name="Delete project").click()
    expect(page.locator(f"tr[data-project-id='{second}']")).to_have_count(0)
    assert not project_dir(server, second).exists()


# ---- login, logout ----------------------------------------------------------------------------------------------------


def test_local_login_and_logout(session: Callable[..., Session], server: LiveServer, make_user) -> None:
    make_user("bob", password="correct horse battery")
    s = session()
    page = s.page
    page.goto("/?error=access_denied")
    expect(page.get_by_role("alert")).to_contain_text("cancelled or denied")
    assert "error" not in page.url
    s.shot("login")
    page.get_by_label("Username").fill("bob")
    page.get_by_label("Password").fill("wrong password")
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#login-local-error")).to_have_text("Wrong username or password.")
    page.get_by_label("Password").fill("correct horse battery")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Projects")).to_be_visible()
    expect(page.locator(".user-chip")).to_contain_text("bob")
    token = page.evaluate("localStorage.getItem('nfhub.token')")
    assert server.http.get("/api/users/me", headers={"x-access-token": token}).status_code == 200

    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    assert page.evaluate("localStorage.getItem('nfhub.token')") is None
    assert server.http.get("/api/users/me", headers={"x-access-token": token}).status_code == 401  # revoked

    # A stale token in storage: the page says so and asks to log in again.
    page.evaluate(f"localStorage.setItem('nfhub.token', {json.dumps(token)})")
    page.reload()
    expect(page.get_by_role("alert")).to_contain_text("session has ended")


# ---- uploads: resumable chunks, limits ---------------------------------------------------------------------------


@pytest.fixture
def small_uploads(catalog: Path, live_settings: dict) -> None:
    live_settings["max_upload_bytes"] = 300_000


def test_chunked_upload_resumes_and_limits_are_clear(small_uploads: None, session: Callable[..., Session],
                                                     server: LiveServer, make_user) -> None:
    token = make_user("carol")
    s = session()
    page = login(s, token)
    pid = create_project(page, "big data")
    page.evaluate("window.nfhub.config.chunkThreshold = 64 * 1024; window.nfhub.config.chunkSize = 32 * 1024")
    data = bytes(range(256)) * 800  # 204800 bytes: 7 slices

    # An earlier attempt got one slice through before the connection dropped.
    r = server.http.post(f"/api/projects/{pid}/upload-file", headers={"x-access-token": token},
                         data={"directory": "raw", "offset": "0", "total": str(len(data))},
                         files={"file": ("big.bin", data[:32768])})
    assert r.json()["received"] == 32768
    page.evaluate("""() => { window.sentOffsets = []; const send = XMLHttpRequest.prototype.send;
        XMLHttpRequest.prototype.send = function (body) {
          if (body instanceof FormData) window.sentOffsets.push(Number(body.get('offset')));
          return send.call(this, body); }; }""")
    page.get_by_role("button", name="New folder").click()
    page.get_by_label("Folder name").fill("raw")
    page.get_by_role("button", name="Create folder").click()
    page.get_by_role("link", name="raw", exact=True).click()
    upload(page, [{"name": "big.bin", "mimeType": "application/octet-stream", "buffer": data}])
    expect(page.locator(".upload-item[data-path='raw/big.bin']")).to_have_attribute("data-state", "done")
    assert (project_dir(server, pid) / "raw" / "big.bin").read_bytes() == data
    offsets = page.evaluate("window.sentOffsets")
    assert offsets == [32768, 65536, 98304, 131072, 163840, 196608], offsets  # resumed, not restarted

    # Over the server's limit: chunked (refused on the first slice) and plain; nothing is left behind.
    upload(page, [{"name": "huge.bin", "mimeType": "application/octet-stream", "buffer": b"x" * 400_000}])
    item = page.locator(".upload-item[data-path='raw/huge.bin']")
    expect(item).to_have_attribute("data-state", "failed")
    expect(item).to_contain_text("Too large: this server accepts files of at most 293 KiB.")
    page.evaluate("window.nfhub.config.chunkThreshold = 1 << 30")
    upload(page, [{"name": "huge2.bin", "mimeType": "application/octet-stream", "buffer": b"x" * 400_000}])
    item = page.locator(".upload-item[data-path='raw/huge2.bin']")
    expect(item).to_have_attribute("data-state", "failed")
    expect(item).to_contain_text("Too large")
    assert sorted(p.name for p in (project_dir(server, pid) / "raw").iterdir()) == ["big.bin"]
    # Disk full (507) cannot be staged here; its message is the page's own mapping of the status.
    message = page.evaluate("""async () => { const m = await import('/static/api.js');
        return m.friendlyError(new m.ApiError(507, 'not enough disk space to store the file')); }""")
    assert "disk is full" in message
    s.shot("uploads")


# ---- failed runs, previews -------------------------------------------------------------------------------------------


def _project_with(server: LiveServer, token: str, pipeline: str, args: dict, files: dict[str, bytes],
                  name: str | None = None) -> int:
    """A project made through the API: files uploaded, pipeline and arguments set."""
    h = {"x-access-token": token}
    pid = server.http.post("/api/projects/create", json={"name": name or f"{pipeline} project"},
                           headers=h).json()["project"]["id"]
    for name, content in files.items():
        folder, _, base = name.rpartition("/")
        r = server.http.post(f"/api/projects/{pid}/upload-file", headers=h, data={"directory": folder},
                             files={"file": (base, content)})
        assert r.status_code == 200, r.text
    r = server.http.post(f"/api/projects/{pid}/update", json={"nextflow_project": pipeline, "workflow_arguments": args},
                         headers=h)
    assert r.status_code == 200, r.text
    return pid


def test_failed_run_shows_its_error_and_failed_tasks_first(session: Callable[..., Session], server: LiveServer,
                                                           make_user) -> None:
    token = make_user("dave")
    pid = _project_with(server, token, "fails", {}, {})
    s = session()
    page = login(s, token)
    page.get_by_role("link", name="fails project").click()
    page.locator(".runbar").get_by_role("button", name="Run pipeline").click()
    box = page.locator(".error-box")
    expect(box).to_contain_text("This run failed")
    expect(box).to_contain_text("samtools: truncated file")
    expect(box).to_contain_text("BAD (a)")
    expect(page.locator(".table-tasks tbody tr").first).to_have_attribute("data-status", "FAILED")
    expect(page.locator("pre.log")).to_contain_text("samtools: truncated file")
    s.shot("run-failed", full_page=True)
    box.get_by_role("button", name="Show failed tasks").click()
    expect(page.locator(".table-tasks tbody tr")).to_have_count(1)
    expect(page.locator(".runbar .badge")).to_have_text("Failed")
    # Resume is offered after a run with a Nextflow session: the new run reuses the tasks that succeeded.
    page.get_by_role("button", name="Resume from this run").click()
    expect(page).to_have_url(re.compile(rf"#/p/{pid}/runs/2$"))
    expect(page.locator(".run-detail")).to_contain_text("resumed from #1")
    expect(page.locator(".run-detail .badge")).to_have_text("Failed")
    expect(page.locator(".table-tasks .badge[data-status=cached]")).to_have_count(2)
    expect(page.locator(".table-runs tbody tr")).to_have_count(2)
    runs = server.http.get(f"/api/projects/{pid}/runs", headers={"x-access-token": token}).json()["runs"]
    assert [r["status"] for r in runs] == ["failed", "failed"] and runs[0]["resume_of"] == runs[1]["id"]


def png(width: int, height: int) -> bytes:
    """A real PNG (opaque blue), built with zlib so that the test needs no image files."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\x00" + b"\x24\x57\xd6" * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_previews_images_tables_and_sandboxed_html(session: Callable[..., Session], server: LiveServer,
                                                   make_user) -> None:
    token = make_user("erin")
    report = (b"<!doctype html><title>r</title><h1 id=t>QC report</h1><img id=i src='dot.png'><p id=js>no js</p>"
              b"<script>document.getElementById('js').textContent = 'plots drawn';"
              b" parent.document.title = 'pwned'</script>")
    _project_with(server, token, "hello", {}, {"qc/report.html": report, "qc/dot.png": png(3, 2),
                                              "qc/samples.csv": b"sample,reads\nA,100\n\"B, 2\",200\n"})
    s = session()
    page = login(s, token)
    page.get_by_role("link", name="hello project").click()
    page.get_by_role("link", name="qc", exact=True).click()

    page.get_by_role("button", name="dot.png", exact=True).click()
    img = page.locator("dialog img")
    expect(img).to_be_visible()
    wait_for(lambda: img.evaluate("i => i.complete && i.naturalWidth") == 3, 10, what="the image to load")
    page.keyboard.press("Escape")  # dialogs close with Escape
    expect(page.locator("dialog")).to_have_count(0)

    page.get_by_role("button", name="samples.csv", exact=True).click()
    expect(page.locator("dialog table tbody tr")).to_have_count(2)
    expect(page.locator("dialog table")).to_contain_text("B, 2")
    page.keyboard.press("Escape")

    page.get_by_role("button", name="report.html", exact=True).click()
    frame_el = page.locator("dialog iframe")
    expect(frame_el).to_have_attribute("sandbox", "allow-scripts")
    frame = page.frame_locator("dialog iframe")
    expect(frame.locator("#t")).to_have_text("QC report")
    expect(frame.locator("#js")).to_have_text("plots drawn")  # the report's own scripts run (MultiQC needs them)
    wait_for(lambda: frame.locator("#i").evaluate("i => i.complete && i.naturalWidth") == 3, 10,
             what="the report's image from its own folder")
    s.shot("preview-html")
    assert page.title() != "pwned"
    assert frame_el.evaluate("f => f.contentDocument") is None  # an opaque origin: no way into the page
    s.problems = [p for p in s.problems if "Blocked script execution" not in p and "sandboxed" not in p
                  and "cross-origin frame" not in p]


def test_form_has_a_control_for_every_argument_type(session: Callable[..., Session], server: LiveServer,
                                                    make_user) -> None:
    token = make_user("gina")
    pid = _project_with(server, token, "every-type", {}, {"reads/a.fastq": b"@a\n", "reads/b.fastq": b"@b\n",
                                                          "reads/notes.txt": b"x\n", "ref/genome.fa": b">c\n"})
    s = session()
    page = login(s, token)
    page.goto(f"/#/p/{pid}/files")
    # Running before the required settings are made: the page goes to the form and says what is missing, where.
    page.locator(".runbar").get_by_role("button", name="Run pipeline").click()
    expect(page).to_have_url(re.compile(rf"#/p/{pid}/pipeline$"))
    form = page.locator("form.args-form")
    expect(form.locator(".field[data-arg=samples] .field-error")).to_have_text("required")
    expect(page.locator(".error-summary")).to_be_focused()
    expect(form.locator("legend")).to_have_text(["Data", "Options"])

    # paths: several files from a picker that opens folders; names not matching the pattern are disabled.
    form.get_by_role("button", name="Add files…").click()
    picker = page.locator("dialog.dialog-picker")
    picker.get_by_role("button", name="Open folder reads").click()
    expect(picker.get_by_label("notes.txt")).to_be_disabled()
    picker.get_by_label("a.fastq").check()
    picker.get_by_label("b.fastq").check()
    expect(picker).to_contain_text("2 selected")
    picker.get_by_role("button", name="Add selected").click()
    expect(form.locator(".path-chip")).to_have_count(2)
    # path choosing folders only
    form.get_by_role("button", name="Browse for Reference folder").click()
    picker.get_by_label("Select folder ref").check()
    picker.get_by_role("button", name="Choose", exact=True).click()
    expect(form.get_by_label("Reference folder", exact=True)).to_have_value("ref")
    expect(form.get_by_label("Read pattern", exact=True)).to_have_attribute("placeholder", "reads/*.fastq")
    form.get_by_label("fastqc").check()
    form.get_by_label("MultiQC").check()
    form.get_by_label("Aligner", exact=True).select_option(label="bowtie2")
    expect(form.get_by_label("Minimum quality", exact=True)).to_have_attribute("step", "any")
    form.get_by_label("Minimum quality", exact=True).fill("0.8")
    form.get_by_label("Notes", exact=True).fill("first line\nsecond line")
    form.get_by_label("Dry run").check()
    form.get_by_role("button", name="Save settings").click()
    expect(form.locator(".save-status")).to_have_text("All changes saved")
    saved = server.http.get(f"/api/projects/{pid}", headers={"x-access-token": token}).json()["project"]
    assert saved["workflow_arguments"] == {
        "samples": ["reads/a.fastq", "reads/b.fastq"], "reference": "ref", "tools": ["fastqc", "multiqc"],
        "aligner": "bowtie2", "quality": 0.8, "notes": "first line\nsecond line", "dry_run": True}

    # Saved values come back into the form; removing a chosen file is one click.
    page.reload()
    expect(form.locator(".path-chip")).to_have_count(2)
    expect(form.get_by_label("MultiQC")).to_be_checked()
    expect(form.get_by_label("Notes", exact=True)).to_have_value("first line\nsecond line")
    form.get_by_role("button", name="Remove reads/b.fastq").click()
    expect(form.locator(".save-status")).to_have_text("Unsaved changes")
    form.get_by_role("button", name="Save settings").click()
    expect(form.locator(".save-status")).to_have_text("All changes saved")
    saved = server.http.get(f"/api/projects/{pid}", headers={"x-access-token": token}).json()["project"]
    assert saved["workflow_arguments"]["samples"] == ["reads/a.fastq"]
    assert not accessible_names_missing(page)


# ---- sharing, API tokens, password, log out everywhere ---------------------------------------------------------------


def _set_user(server: LiveServer, name: str, **columns: str) -> None:
    """Give a test user an e-mail address or another provider (make_user creates bare local accounts)."""
    conn = open_db(server.config)
    try:
        for column, value in columns.items():
            assert column in ("email", "provider")
            conn.execute(f"UPDATE users SET {column} = ? WHERE name = ?", (value, name))
    finally:
        conn.close()


def _no_sideways_scroll(page: Page) -> None:
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")


def _shares(server: LiveServer, token: str, pid: int) -> dict[str, str]:
    r = server.http.get(f"/api/projects/{pid}/shares", headers={"x-access-token": token})
    return {row["user"]: row["access"] for row in r.json()["shares"]}


def test_sharing_read_then_write_then_removed(session: Callable[..., Session], server: LiveServer,
                                              make_user) -> None:
    owner = make_user("olivia")
    sam = make_user("sam")
    make_user("priya")
    _set_user(server, "sam", email="sam@lab.example.org")
    _set_user(server, "priya", email="priya@lab.example.org")
    pid = _project_with(server, owner, "hello", {"input": "names.txt"}, {"names.txt": b"Ada\n"}, "Shared RNA")
    r = server.http.post(f"/api/projects/{pid}/share", json={"user": "priya", "access": "write"},
                         headers={"x-access-token": owner})
    assert r.status_code == 200, r.text

    # The owner opens the sharing dialog: the owner and the current shares are listed.
    s = session()
    page = login(s, owner)
    page.get_by_role("link", name="Shared RNA").click()
    page.get_by_role("button", name="Share").click()
    dialog = page.get_by_role("dialog", name="Share Shared RNA")
    shares = dialog.get_by_role("list", name="People with access")
    expect(shares.locator("li[data-user=olivia]")).to_contain_text("owner")
    expect(dialog.get_by_label("Access for priya")).to_have_value("write")
    expect(dialog.get_by_label("User name or e-mail")).to_be_focused()

    # An unknown user is refused next to the field; nothing is shared.
    dialog.get_by_label("User name or e-mail").fill("nobody")
    dialog.get_by_role("button", name="Share", exact=True).click()
    expect(page.locator("#share-user-error")).to_have_text("No user named 'nobody'.")
    expect(dialog.get_by_label("User name or e-mail")).to_have_attribute("aria-invalid", "true")
    assert _shares(server, owner, pid) == {"priya": "write"}

    # Shared by e-mail address, read access.
    dialog.get_by_label("User name or e-mail").fill("sam@lab.example.org")
    dialog.get_by_label("Access", exact=True).select_option("read")
    dialog.get_by_role("button", name="Share", exact=True).click()
    expect(dialog.get_by_label("Access for sam")).to_have_value("read")
    expect(shares.locator("li[data-user=sam]")).to_contain_text("sam@lab.example.org")
    expect(dialog.get_by_label("User name or e-mail")).to_have_value("")
    expect(dialog.get_by_label("User name or e-mail")).not_to_have_attribute("aria-invalid", "true")
    assert _shares(server, owner, pid) == {"priya": "write", "sam": "read"}
    assert not accessible_names_missing(page)
    s.shot("share")

    # Sam, in a browser of their own: the project is listed with sam's access; it can be read, not changed.
    s2 = session()
    page2 = login(s2, sam)
    row = page2.locator(f"tr[data-project-id='{pid}']")
    expect(row).to_contain_text("shared · read")
    expect(row.get_by_role("button", name="Rename Shared RNA")).to_be_disabled()
    expect(row.get_by_role("button", name="Delete Shared RNA")).to_be_disabled()
    row.get_by_role("link", name="Shared RNA").click()
    expect(page2.locator(".page-head .badge")).to_have_text("read access · olivia")
    expect(page2.get_by_role("button", name="Share")).to_have_count(0)
    expect(page2.locator(".page-actions").get_by_role("button", name="Rename")).to_be_disabled()
    expect(page2.locator(".page-actions").get_by_role("button", name="Delete")).to_be_disabled()
    expect(page2.get_by_role("button", name="Upload files")).to_have_count(0)
    expect(page2.get_by_text("You have read access: you can open and download these files")).to_be_visible()
    expect(page2.locator("tr[data-name='names.txt']")).to_be_visible()
    expect(page2.locator(".runbar").get_by_role("button", name="Run pipeline")).to_be_disabled()
    # Anything that slips past the disabled controls is refused by the server, and the page says why.
    refused = page2.evaluate(f"""async () => {{ const m = await import('/static/api.js');
        try {{ await m.api('/api/projects/{pid}/update', {{method: 'POST', json: {{name: 'mine now'}}}}); return 'ok'; }}
        catch (e) {{ return m.friendlyError(e); }} }}""")
    assert refused == "Not allowed: you have read access to this project; this needs write access", refused

    # The owner upgrades sam to write access; after a reload sam can upload.
    dialog.get_by_label("Access for sam").select_option("write")
    expect(dialog.get_by_role("status")).to_have_text("sam now has write access.")
    assert _shares(server, owner, pid) == {"priya": "write", "sam": "write"}
    page2.reload()
    expect(page2.locator(".page-head .badge")).to_have_text("write access · olivia")
    upload(page2, [{"name": "from-sam.txt", "mimeType": "text/plain", "buffer": b"hello from sam\n"}])
    expect(page2.locator(".upload-item[data-path='from-sam.txt']")).to_have_attribute("data-state", "done")
    assert (project_dir(server, pid) / "from-sam.txt").read_bytes() == b"hello from sam\n"
    expect(page2.get_by_role("button", name="Share")).to_have_count(0)  # write access does not share
    expect(page2.locator(".page-actions").get_by_role("button", name="Delete")).to_be_disabled()

    # The owner removes sam: gone from the dialog, from sam's list, and sam's link no longer opens it.
    shares.get_by_role("button", name="Remove sam").click()
    expect(shares.locator("li[data-user=sam]")).to_have_count(0)
    expect(dialog.get_by_role("status")).to_have_text("sam no longer has access.")
    assert _shares(server, owner, pid) == {"priya": "write"}
    page2.get_by_role("link", name="Projects", exact=True).click()
    expect(page2.get_by_text("No projects yet")).to_be_visible()
    page2.goto(f"/#/p/{pid}/files")
    expect(page2.get_by_text("Project not found")).to_be_visible()
    dialog.get_by_role("button", name="Done").click()
    expect(page.get_by_role("dialog")).to_have_count(0)

    # The same dialog in a narrow window.
    s3 = session(width=390, height=844)
    page3 = login(s3, owner)
    page3.goto(f"/#/p/{pid}/files")
    page3.get_by_role("button", name="Share").click()
    expect(page3.get_by_role("dialog").get_by_label("Access for priya")).to_be_visible()
    _no_sideways_scroll(page3)
    s3.shot("narrow-share")


@pytest.fixture
def tokens_up_to_90_days(catalog: Path, live_settings: dict) -> None:
    live_settings["max_token_lifetime"] = "90d"


def test_api_tokens_created_shown_once_and_revoked(tokens_up_to_90_days: None, session: Callable[..., Session],
                                                   server: LiveServer, make_user) -> None:
    token = make_user("tina")
    _set_user(server, "tina", provider="openid:institute", email="tina@lab.example.org")
    s = session()
    s.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
    page = login(s, token)

    # The account menu opens from the user name, by mouse or keyboard; no password to change for an OpenID account.
    menu_button = page.get_by_role("button", name="tina: account menu")
    menu_button.focus()
    page.keyboard.press("ArrowDown")
    menu = page.get_by_role("menu")
    expect(menu.get_by_role("menuitem", name="API tokens")).to_be_focused()
    expect(page.locator(".account-menu .menu-who")).to_contain_text("tina@lab.example.org")
    expect(menu.get_by_role("menuitem", name="Change password…")).to_have_count(0)
    page.keyboard.press("ArrowUp")
    expect(menu.get_by_role("menuitem", name="Log out everywhere…")).to_be_focused()
    page.keyboard.press("Escape")
    expect(menu).to_be_hidden()
    expect(menu_button).to_be_focused()
    menu_button.click()
    menu.get_by_role("menuitem", name="API tokens").click()
    expect(page).to_have_url(re.compile(r"#/tokens$"))
    expect(page.get_by_role("heading", name="API tokens", level=1)).to_be_visible()
    expect(page.get_by_text("No tokens yet")).to_be_visible()

    # A name is needed; then the token is created and shown once, with a warning and a copy button.
    page.get_by_role("button", name="Create token").click()
    expect(page.locator("#token-name-error")).to_have_text("Give the token a name.")
    page.get_by_label("Name", exact=True).fill("cluster sync")
    page.get_by_label("Expires after").select_option("90d")
    page.get_by_role("button", name="Create token").click()
    reveal = page.locator(".token-reveal")
    expect(reveal).to_contain_text("Copy your new token “cluster sync” now")
    expect(reveal).to_contain_text("This is the only time it is shown")
    secret = page.get_by_role("textbox", name="Your new token").input_value()
    reveal.get_by_role("button", name="Copy").click()
    expect(reveal.get_by_role("status")).to_have_text("Copied to the clipboard.")
    assert page.evaluate("navigator.clipboard.readText()") == secret
    me = server.http.get("/api/users/me", headers={"x-access-token": secret})
    assert me.status_code == 200 and me.json()["user"]["name"] == "tina"
    listed = server.http.get("/api/users/tokens", headers={"x-access-token": token}).json()["tokens"]
    assert [t["name"] for t in listed] == ["cluster sync"]
    expires = datetime.fromisoformat(listed[0]["expires_at"].replace("Z", "+00:00"))
    assert abs((expires - datetime.now(UTC)).total_seconds() - 90 * 86400) < 600
    row = page.locator(f"tr[data-token-id='{listed[0]['id']}']")
    expect(row).to_have_attribute("data-state", "active")
    assert not accessible_names_missing(page)
    s.shot("tokens")

    # Dismissed, the secret is nowhere in the page any more, nor in the browser's storage.
    reveal.get_by_role("button", name="I have copied it").click()
    expect(reveal).to_have_count(0)
    assert secret not in page.content()
    assert secret not in page.evaluate("JSON.stringify(Object.assign({}, localStorage, sessionStorage))")

    # Revoked from the page (after a confirmation): the API refuses it from then on.
    row.get_by_role("button", name="Revoke cluster sync").click()
    page.get_by_role("dialog").get_by_role("button", name="Revoke token").click()
    expect(row).to_have_attribute("data-state", "revoked")
    expect(row.get_by_role("button", name="Revoke cluster sync")).to_have_count(0)
    assert server.http.get("/api/users/me", headers={"x-access-token": secret}).status_code == 401

    # A lifetime longer than this server allows (max_token_lifetime: 90d here) is refused next to its field.
    page.get_by_label("Name", exact=True).fill("forever")
    page.get_by_label("Expires after").select_option(label="1 year")
    page.get_by_role("button", name="Create token").click()
    expect(page.locator("#token-lifetime-error")).to_have_text("Lifetime is longer than the allowed 90d.")
    expect(page.get_by_label("Expires after")).to_have_attribute("aria-invalid", "true")
    expect(page.locator(".token-reveal")).to_have_count(0)

    # The tokens page in a narrow window, with a fresh token on show.
    s2 = session(width=390, height=844)
    page2 = login(s2, token)
    page2.goto("/#/tokens")
    page2.get_by_label("Name", exact=True).fill("laptop backup")
    page2.get_by_role("button", name="Create token").click()
    expect(page2.locator(".token-reveal")).to_be_visible()
    expect(page2.locator(".table-tokens tbody tr")).to_have_count(2)
    _no_sideways_scroll(page2)
    assert page2.locator(".table-tokens").evaluate(
        "t => t.parentElement.scrollWidth <= t.parentElement.clientWidth + 1")  # the table fits its card
    assert not accessible_names_missing(page2)
    s2.shot("narrow-tokens", full_page=True)


def test_change_password_then_log_out_everywhere(session: Callable[..., Session], server: LiveServer,
                                                 make_user) -> None:
    make_user("uma", password="first password")
    s = session()
    page = s.page
    page.goto("/")
    page.get_by_label("Username").fill("uma")
    page.get_by_label("Password").fill("first password")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Projects")).to_be_visible()

    page.get_by_role("button", name="uma: account menu").click()
    expect(page.get_by_role("menuitem", name="API tokens")).to_be_focused()
    s.shot("account-menu")
    page.get_by_role("menuitem", name="Change password…").click()
    dialog = page.get_by_role("dialog", name="Change password")
    expect(dialog.get_by_label("Current password")).to_be_focused()
    # Checked in the page first: length and the repetition; then by the server: the current password.
    dialog.get_by_label("Current password").fill("first password")
    dialog.get_by_label("New password", exact=True).fill("short")
    dialog.get_by_role("button", name="Change password").click()
    expect(dialog.get_by_text("Use at least 8 characters.")).to_be_visible()
    expect(dialog.get_by_label("New password", exact=True)).to_have_attribute("aria-invalid", "true")
    dialog.get_by_label("New password", exact=True).fill("second password")
    dialog.get_by_label("Repeat the new password").fill("second passwort")
    dialog.get_by_role("button", name="Change password").click()
    expect(dialog.get_by_text("The two new passwords are not the same.")).to_be_visible()
    dialog.get_by_label("Repeat the new password").fill("second password")
    dialog.get_by_label("Current password").fill("not my password")
    dialog.get_by_role("button", name="Change password").click()
    expect(dialog.get_by_text("The current password is wrong.")).to_be_visible()
    expect(dialog.get_by_label("Current password")).to_have_attribute("aria-invalid", "true")
    dialog.get_by_label("Current password").fill("first password")
    dialog.get_by_role("button", name="Change password").click()
    expect(page.get_by_role("dialog")).to_have_count(0)
    expect(page.locator(".toast")).to_contain_text("Your password was changed")

    # Log out; the old password no longer works, the new one does.
    page.get_by_role("button", name="Log out", exact=True).click()
    page.get_by_label("Username").fill("uma")
    page.get_by_label("Password").fill("first password")
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#login-local-error")).to_have_text("Wrong username or password.")
    page.get_by_label("Password").fill("second password")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Projects")).to_be_visible()

    # Log out everywhere: asks first; then this session, another one and a personal token all end.
    here = page.evaluate("localStorage.getItem('nfhub.token')")
    elsewhere = server.http.post("/api/users/local/local/login",
                                 json={"username": "uma", "password": "second password"}).json()["token"]
    personal = server.http.post("/api/users/tokens", json={"name": "script", "lifetime": "1d"},
                                headers={"x-access-token": here}).json()["token"]
    for t in (here, elsewhere, personal):
        assert server.http.get("/api/users/me", headers={"x-access-token": t}).status_code == 200
    page.get_by_role("button", name="uma: account menu").click()
    page.get_by_role("menuitem", name="Log out everywhere…").click()
    page.get_by_role("dialog").get_by_role("button", name="Cancel").click()
    assert server.http.get("/api/users/me", headers={"x-access-token": here}).status_code == 200
    page.get_by_role("button", name="uma: account menu").click()
    page.get_by_role("menuitem", name="Log out everywhere…").click()
    page.get_by_role("dialog").get_by_role("button", name="Log out everywhere").click()
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    expect(page.locator(".login-card [role=status]")).to_contain_text("You have logged out everywhere")
    assert page.evaluate("localStorage.getItem('nfhub.token')") is None
    for t in (here, elsewhere, personal):
        assert server.http.get("/api/users/me", headers={"x-access-token": t}).status_code == 401


# ---- narrow windows, keyboard ----------------------------------------------------------------------------------------


def test_narrow_window_and_keyboard(session: Callable[..., Session], server: LiveServer, make_user) -> None:
    token = make_user("frank")
    pid = _project_with(server, token, "hello", {"input": "names.txt"}, {"names.txt": b"Ada\n"})
    s = session(width=390, height=844)
    page = login(s, token)

    def no_sideways_scroll() -> None:
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")

    no_sideways_scroll()
    page.get_by_role("link", name="hello project").click()
    expect(page.locator("tr[data-name='names.txt']")).to_be_visible()
    no_sideways_scroll()
    assert not accessible_names_missing(page)
    s.shot("narrow-files")

    # Tabs follow the arrow keys; Enter opens the focused one.
    page.get_by_role("tab", name="Files").focus()
    page.keyboard.press("ArrowRight")
    expect(page.get_by_role("tab", name="Pipeline")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(rf"#/p/{pid}/pipeline$"))
    expect(page.get_by_role("tab", name="Pipeline")).to_have_attribute("aria-selected", "true")
    expect(page.locator("form.args-form")).to_be_visible()
    no_sideways_scroll()
    assert not accessible_names_missing(page)
    # A dialog traps focus and gives it back on Escape.
    page.get_by_role("button", name="Rename").focus()
    page.keyboard.press("Enter")
    expect(page.get_by_label("Project name")).to_be_focused()
    page.keyboard.press("Escape")
    expect(page.get_by_role("button", name="Rename")).to_be_focused()

    # The run view fits too: its tables scroll inside their cards, the log wraps.
    assert server.http.post(f"/api/projects/{pid}/schedule", headers={"x-access-token": token}).status_code == 200
    page.get_by_role("tab", name="Runs").click()
    expect(page.locator(".run-detail .badge")).to_have_text("Succeeded")
    expect(page.locator("pre.log")).to_contain_text("Submitted process")
    no_sideways_scroll()
    assert not accessible_names_missing(page)
    s.shot("narrow-run", full_page=True)


def test_page_is_served_with_a_strict_policy(server: LiveServer) -> None:
    """No browser needed: the CSP forbids inline code, so the page must not contain any."""
    r = httpx.get(server.url + "/")
    assert "script-src 'self'" in r.headers["content-security-policy"]
    html = r.text
    assert "<script>" not in html and "<style" not in html and not re.search(r"\s(on\w+|style)=", html)
    for name in ("app.js", "api.js", "ui.js", "projects.js", "project.js", "files.js", "pipeline.js", "runs.js",
                 "share.js", "account.js", "style.css", "favicon.svg"):
        assert server.http.get(f"/static/{name}").status_code == 200, name
    for script in (ROOT / "static").glob("*.js"):
        text = script.read_text()
        assert "innerHTML" not in text and "eval(" not in text and "setAttribute(\"style\"" not in text, script.name

