"""Error-shape contract: every error answer, on every route, is JSON {"error": str, "details"?: {str: str | int}}
(a resumable upload's 409 says how many bytes were received as a number, as nfhub_files documents).

Routes are enumerated from /api/openapi.json, so a new documented route is covered for 401, 405 and 404 (unknown
project) without touching this file; the targeted cases below cover 400, 403, 404, 409, 413, 415, 422 and 429.
Only HTTP and the conftest fixtures are used (no nfhub module names).
"""

from __future__ import annotations

import time

import jwt
import pytest

BIG = b" " * (2**20 + 1)  # one byte over the 1 MiB JSON limit
NO_PROJECT = 999_999
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def problem(r, status: int) -> str | None:
    """Why `r` is not an error answer of this status in the one shape, or None."""
    where = f"{r.request.method} {r.request.url.raw_path.decode()} -> {r.status_code}"
    if r.status_code != status:
        return f"{where}, expected {status}: {r.text[:200]!r}"
    if r.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        return f"{where}: content-type {r.headers.get('content-type')!r}: {r.text[:200]!r}"
    try:
        body = r.json()
    except ValueError:
        return f"{where}: body is not JSON: {r.text[:200]!r}"
    if not isinstance(body, dict) or not isinstance(body.get("error"), str) or not body["error"]:
        return f"{where}: no string 'error': {body!r}"
    if set(body) - {"error", "details"}:
        return f"{where}: extra keys {sorted(set(body) - {'error', 'details'})}"
    details = body.get("details", {})
    if not isinstance(details, dict) or not all(isinstance(k, str) and type(v) in (str, int) for k, v in details.items()):
        return f"{where}: details must be an object of strings (or counts): {details!r}"
    return None


def check(r, status: int) -> None:
    assert (why := problem(r, status)) is None, why


def request(client, method: str, url: str, headers: dict | None = None, **kw):
    if method in ("POST", "PUT", "PATCH") and not {"json", "content", "data", "files"} & set(kw):
        kw["json"] = {}
    return client.request(method, url, headers=headers or {}, **kw)


@pytest.fixture
def operations(client) -> list[tuple[str, str, dict]]:
    """(method, path template, operation) for every documented operation."""
    paths = client.get("/api/openapi.json").json()["paths"]
    assert len(paths) > 30
    return [(m.upper(), p, op) for p, ops in paths.items() for m, op in ops.items()]


def fill(path: str, pid: int, run_id: int = 1) -> str:
    for name, value in (("{id}", pid), ("{run_id}", run_id), ("{name}", "hello"), ("{provider}", "local"),
                        ("{ticket}", "x"), ("{path}", "f.txt")):
        path = path.replace(name, str(value))
    return path


def secret_route(op: dict) -> bool:
    """Authenticated by a run's secret (?token=) rather than a user token: nextflow-log, finished."""
    return "security" not in op and any(p.get("name") == "token" for p in op.get("parameters", []))


@pytest.fixture
def pid(client, alice, bob) -> int:
    """Alice's project, shared read-only with bob, holding the file f.txt and the folder d."""
    pid = client.post("/api/projects/create", json={"name": "x"}, headers=alice).json()["project"]["id"]
    assert client.post(f"/api/projects/{pid}/share", json={"user": "bob", "access": "read"}, headers=alice).is_success
    r = client.post(f"/api/projects/{pid}/upload-file", files={"file": ("f.txt", b"hi")}, headers=alice)
    assert r.is_success, r.text
    assert client.post(f"/api/projects/{pid}/create-folder", json={"path": "d"}, headers=alice).is_success
    return pid


# ---- every documented route ------------------------------------------------------------------------------------------


def forge(token: str, key: str, **changes) -> str:
    """`token` with its claims changed and signed with `key` (the settings' secret_key signs real tokens)."""
    claims = {**jwt.decode(token, options={"verify_signature": False}), **changes}
    return jwt.encode(claims, key, algorithm="HS256")


@pytest.mark.parametrize("variant", ["missing", "garbage", "wrong-key", "expired", "unknown-user", "revoked"])
def test_401_without_a_valid_token_on_every_authenticated_route(client, operations, pid, make_user, settings, variant):
    token, key, day = make_user("carol"), settings["secret_key"], 86400
    if variant == "revoked":
        assert client.post("/api/users/logout", headers={"x-access-token": token}).is_success
    token = {"missing": None, "garbage": "not-a-jwt", "wrong-key": forge(token, "k" * 40),
             "expired": forge(token, key, iat=int(time.time()) - 2 * day, exp=int(time.time()) - day),
             "unknown-user": forge(token, key, sub="424242"), "revoked": token}[variant]

    def ask(method: str, path: str, op: dict):
        if secret_route(op):  # a user token there is 403 (tested below); the run secret goes in ?token=
            return request(client, method, fill(path, pid), params={"token": token} if token else None)
        return request(client, method, fill(path, pid), {"x-access-token": token} if token else None)

    problems = [problem(ask(*o), 401) for o in operations if "security" in o[2] or secret_route(o[2])]
    assert len(problems) > 30
    assert not any(problems), "\n".join(filter(None, problems))


def test_405_for_undocumented_methods_on_every_route(client, operations, pid):
    allowed: dict[str, set[str]] = {}
    for method, path, _ in operations:
        allowed.setdefault(path, set()).add(method)
    problems = [problem(request(client, m, fill(path, pid)), 405)
                for path, ok in allowed.items() for m in METHODS if m not in ok]
    problems += [problem(request(client, m, url), 405) for url in ("/", "/static/app.js") for m in ("POST", "DELETE")]
    assert not any(problems), "\n".join(filter(None, problems))


@pytest.mark.parametrize("target", ["no-such-id", "someone-elses", "beyond-sqlite"])
def test_404_for_an_unknown_project_on_every_project_route(client, operations, alice, make_user, target):
    if target == "someone-elses":  # never revealed to a user without access
        dave = {"x-access-token": make_user("dave")}
        project = client.post("/api/projects/create", json={"name": "d"}, headers=dave).json()["project"]["id"]
    else:
        project = {"no-such-id": NO_PROJECT, "beyond-sqlite": 2**64}[target]
    problems = [problem(request(client, method, fill(path, project), alice), 404)
                for method, path, op in operations if path.startswith("/api/projects/{id}") and not secret_route(op)]
    assert len(problems) > 20
    assert not any(problems), "\n".join(filter(None, problems))


def test_404_for_an_unknown_run_on_every_run_route(client, operations, pid, alice):
    urls = [(m, fill(p, pid, run_id=NO_PROJECT)) for m, p, _ in operations if "{run_id}" in p]
    assert len(urls) >= 4
    for method, url in urls:
        check(request(client, method, url, alice), 404)


# ---- targeted cases: (status, method, url, request keywords, who); P is alice's project, shared read with bob -------

P, A, B = "/api/projects/{pid}", "alice", "bob"
MULTIPART = {"content-type": "multipart/form-data"}  # without a boundary
FILE, LOGIN = {"files": {"file": ("g.txt", b"x")}}, {"json": {"username": A, "password": "n"}}
CASES = {
    "400-invalid-json": (400, "POST", "/api/projects/create", {"content": b"{nope"}, A),
    "400-json-not-an-object": (400, "POST", "/api/projects/create", {"json": [1]}, A),
    "400-absolute-dir": (400, "GET", P + "/files?dir=/etc", {}, A),
    "400-no-boundary": (400, "POST", P + "/upload-file", {"content": b"x", "headers": MULTIPART}, A),
    "400-download-no-path": (400, "GET", P + "/download", {}, A),
    "400-bad-range": (400, "GET", P + "/download?path=f.txt", {"headers": {"range": "bytes=zz"}}, A),
    "416-range-past-end": (416, "GET", P + "/download?path=f.txt", {"headers": {"range": "bytes=99-"}}, A),
    "401-wrong-password": (401, "POST", "/api/users/local/local/login", LOGIN, None),
    "403-read-share-update": (403, "POST", P + "/update", {"json": {"name": "y"}}, B),
    "403-read-share-delete": (403, "POST", P + "/delete", {}, B),
    "403-read-share-upload": (403, "POST", P + "/upload-file", FILE, B),
    "403-read-share-upload-status": (403, "GET", P + "/upload-status?path=f.txt", {}, B),
    "403-read-share-delete-path": (403, "POST", P + "/delete-path", {"json": {"path": "f.txt"}}, B),
    "403-read-share-create-folder": (403, "POST", P + "/create-folder", {"json": {"path": "e"}}, B),
    "403-read-share-schedule": (403, "POST", P + "/schedule", {}, B),
    "403-read-share-cancel": (403, "POST", P + "/cancel", {}, B),
    "403-read-share-share": (403, "POST", P + "/share", {"json": {"user": B, "access": "write"}}, B),
    "403-read-share-unshare": (403, "POST", P + "/unshare", {"json": {"user": B}}, B),
    "403-non-admin-users": (403, "GET", "/api/users", {}, A),
    "403-user-token-on-finished": (403, "POST", P + "/finished", {}, A),
    "404-pipeline": (404, "GET", "/api/nextflow-projects/nope", {}, A),
    "404-pipeline-arguments": (404, "GET", "/api/nextflow-projects/nope/arguments", {}, A),
    "404-dir": (404, "GET", P + "/files?dir=nope", {}, A),
    "404-download": (404, "GET", P + "/download?path=nope", {}, A),
    "404-delete-path": (404, "POST", P + "/delete-path", {"json": {"path": "nope"}}, A),
    "404-view-link": (404, "POST", P + "/view-link", {"json": {"path": "nope"}}, A),
    "404-view-ticket": (404, "GET", P + "/view/bad.ticket/f.txt", {}, None),
    "404-token": (404, "POST", "/api/users/tokens/nope/revoke", {}, A),
    "404-local-provider": (404, "POST", "/api/users/local/nope/login", LOGIN, None),
    "404-openid-login": (404, "GET", "/api/users/openid/nope/login", {}, None),
    "404-openid-callback": (404, "GET", "/api/users/openid/nope/callback?state=s&code=c", {}, None),
    "404-api-url": (404, "GET", "/api/nope", {}, A),
    "404-non-int-project": (404, "GET", "/api/projects/abc", {}, A),
    "404-page-url": (404, "GET", "/nope", {}, None),
    "404-static-file": (404, "GET", "/static/nope.js", {}, None),
    "409-folder-over-file": (409, "POST", P + "/create-folder", {"json": {"path": "f.txt"}}, A),
    "409-folder-under-file": (409, "POST", P + "/create-folder", {"json": {"path": "f.txt/e"}}, A),
    "409-upload-into-file": (409, "POST", P + "/upload-file", {**FILE, "data": {"directory": "f.txt"}}, A),
    "409-upload-over-folder": (409, "POST", P + "/upload-file", {"files": {"file": ("d", b"x")}}, A),
    "415-upload-json": (415, "POST", P + "/upload-file", {"json": {"file": "x"}}, A),
    "415-upload-urlencoded": (415, "POST", P + "/upload-file", {"data": {"file": "x"}}, A),
    "415-upload-no-type": (415, "POST", P + "/upload-file", {"content": b"x"}, A),
    "422-name-empty": (422, "POST", "/api/projects/create", {"json": {"name": " "}}, A),
    "422-name-not-string": (422, "POST", "/api/projects/create", {"json": {"name": 5}}, A),
    "422-name-too-long": (422, "POST", "/api/projects/create", {"json": {"name": "n" * 201}}, A),
    "422-name-control-char": (422, "POST", "/api/projects/create", {"json": {"name": "a\nb"}}, A),
    "422-update-unknown-field": (422, "POST", P + "/update", {"json": {"colour": "red"}}, A),
    "422-update-unknown-pipeline": (422, "POST", P + "/update", {"json": {"nextflow_project": "no"}}, A),
    "422-update-bad-arguments": (422, "POST", P + "/update",
                                 {"json": {"nextflow_project": "hello", "workflow_arguments": {"nope": 1}}}, A),
    "422-view-link-no-path": (422, "POST", P + "/view-link", {}, A),
    "422-view-link-folder": (422, "POST", P + "/view-link", {"json": {"path": "d"}}, A),
    "422-schedule-no-pipeline": (422, "POST", P + "/schedule", {}, A),
    "422-schedule-unknown-field": (422, "POST", P + "/schedule", {"json": {"x": 1}}, A),
    "422-schedule-bad-resume": (422, "POST", P + "/schedule", {"json": {"resume": "x"}}, A),
    "422-share-bad-access": (422, "POST", P + "/share", {"json": {"user": B, "access": "all"}}, A),
    "422-share-unknown-user": (422, "POST", P + "/share", {"json": {"user": "zed", "access": "read"}}, A),
    "422-share-with-owner": (422, "POST", P + "/share", {"json": {"user": A, "access": "read"}}, A),
    "422-token-no-name": (422, "POST", "/api/users/tokens", {}, A),
    "422-token-bad-lifetime": (422, "POST", "/api/users/tokens", {"json": {"name": "t", "lifetime": "soon"}}, A),
    "422-token-unknown-field": (422, "POST", "/api/users/tokens", {"json": {"name": "t", "x": 1}}, A),
    "422-password-too-short": (422, "POST", "/api/users/password", {"json": {"new_password": "short"}}, A),
}
JSON_ROUTES = ["/api/projects/create", P + "/update", P + "/view-link", P + "/schedule", P + "/share", P + "/unshare",
               P + "/delete-path", P + "/create-folder", "/api/users/tokens", "/api/users/password"]
for _url in [*JSON_ROUTES, "/api/users/local/local/login"]:  # every route that reads a JSON body
    _who, _name = (A if _url in JSON_ROUTES else None), _url.rpartition("}")[2].strip("/").replace("/", "-")
    CASES[f"413-{_name}"] = (413, "POST", _url, {"content": BIG, "headers": {"content-type": "application/json"}}, _who)
    CASES[f"413-{_name}-chunked"] = (413, "POST", _url, {"chunked": True}, _who)  # no Content-Length

@pytest.mark.parametrize(("status", "method", "url", "kw", "who"), [
    pytest.param(*case, id=name) for name, case in CASES.items()])
def test_error_shape(client, pid, alice, bob, status, method, url, kw, who):
    """One request, one expected status, the one shape."""
    kw = dict(kw)
    if kw.pop("chunked", False):
        kw["content"] = iter([BIG[: 2**19], BIG[2**19 :]])
    headers = {**{"alice": alice, "bob": bob, None: {}}[who], **kw.pop("headers", {})}
    check(request(client, method, url.format(pid=pid), headers, **kw), status)


# ---- targeted cases that need more set-up ----------------------------------------------------------------------------


@pytest.fixture
def small_uploads(settings):
    settings["max_upload_bytes"] = 100  # requested before `client`, so the app is built with it


def test_413_upload_over_the_limit(small_uploads, client, alice):
    pid = client.post("/api/projects/create", json={"name": "x"}, headers=alice).json()["project"]["id"]
    check(client.post(f"/api/projects/{pid}/upload-file", files={"file": ("big", b"x" * 10_000)}, headers=alice), 413)
    data = {"offset": "0", "total": "1000"}  # a resumable upload announcing more than the limit
    check(client.post(f"/api/projects/{pid}/upload-file", data=data, files={"file": ("big", b"x")}, headers=alice), 413)


def test_409_resumable_upload_gap(client, pid, alice):
    data = {"offset": "5", "total": "10"}
    check(client.post(f"/api/projects/{pid}/upload-file", data=data, files={"file": ("r", b"x")}, headers=alice), 409)


def test_403_personal_token_cannot_make_tokens(client, alice):
    personal = client.post("/api/users/tokens", json={"name": "t"}, headers=alice).json()["token"]
    check(client.post("/api/users/tokens", json={"name": "u"}, headers={"x-access-token": personal}), 403)


def test_403_wrong_old_password(client, make_user):
    carol = {"x-access-token": make_user("carol", password="correct horse")}
    check(client.post("/api/users/password", json={"old_password": "wrong one", "new_password": "new password"},
                      headers=carol), 403)


def test_429_too_many_failed_logins(client, make_user):
    make_user("carol", password="correct horse")
    wrong = {"username": "carol", "password": "wrong one"}
    for _ in range(10):
        check(client.post("/api/users/local/local/login", json=wrong), 401)
    r = client.post("/api/users/local/local/login", json=wrong)
    check(r, 429)
    assert r.headers["retry-after"].isdigit()
