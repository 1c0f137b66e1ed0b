"""The seed's Projects API over HTTP against the real app and a real SQLite file."""

from __future__ import annotations

import re

import pytest
from starlette.testclient import TestClient

import nfhub
import nfhub_config


def create(client: TestClient, headers: dict, name: str = "exp1") -> dict:
    r = client.post("/api/projects/create", json={"name": name}, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()["project"]


def test_health_and_openapi(client: TestClient) -> None:
    assert client.get("/api/health").json() == {"status": "ok", "version": nfhub.VERSION}
    doc = client.get("/api/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    for path in ("/api/projects", "/api/projects/create", "/api/projects/{id}/update", "/api/projects/count"):
        assert path in doc["paths"]


def test_create_get_list_count(client: TestClient, alice: dict) -> None:
    project = create(client, alice, "RNA batch 1")
    assert project["name"] == "RNA batch 1"
    for key, value in {"workflow_arguments": {}, "nextflow_project": None, "submitted_processes": 0,
                       "completed_processes": 0, "is_scheduled": False, "owner": "alice", "access": "owner"}.items():
        assert project[key] == value
    assert client.get(f"/api/projects/{project['id']}", headers=alice).json() == {"project": project}
    create(client, alice, "second")
    listed = client.get("/api/projects", headers=alice).json()["projects"]
    assert [p["name"] for p in listed] == ["RNA batch 1", "second"]
    assert client.get("/api/projects/count", headers=alice).json() == {"count": 2}


def test_project_folder_created_and_deleted(client: TestClient, alice: dict, config: nfhub_config.Config) -> None:
    project = create(client, alice)
    folder = nfhub_config.project_dir(config, project["id"])
    assert folder.is_dir()
    (folder / "reads.fastq").write_text("@r1\nACGT\n+\n!!!!\n")
    assert client.post(f"/api/projects/{project['id']}/delete", headers=alice).json() == {}
    assert not folder.exists()
    assert client.get(f"/api/projects/{project['id']}", headers=alice).status_code == 404
    assert client.get("/api/projects/count", headers=alice).json() == {"count": 0}


def test_update_pipeline_and_arguments(client: TestClient, alice: dict) -> None:
    pid = create(client, alice)["id"]
    r = client.post(f"/api/projects/{pid}/update", json={"nextflow_project": "hello"}, headers=alice)
    assert r.status_code == 200 and r.json() == {}
    assert client.get(f"/api/projects/{pid}", headers=alice).json()["project"]["nextflow_project"] == "hello"
    r = client.post(f"/api/projects/{pid}/update", json={"name": "renamed"}, headers=alice)
    assert r.json() == {}
    project = client.get(f"/api/projects/{pid}", headers=alice).json()["project"]
    assert project["name"] == "renamed" and project["nextflow_project"] == "hello"


def test_update_unknown_pipeline_changes_nothing(client: TestClient, alice: dict) -> None:
    pid = create(client, alice)["id"]
    before = client.get(f"/api/projects/{pid}", headers=alice).json()
    r = client.post(f"/api/projects/{pid}/update", json={"nextflow_project": "nope", "name": "x"}, headers=alice)
    assert r.status_code == 422
    assert r.json()["details"] == {"nextflow_project": "not in the catalog"}
    assert client.get(f"/api/projects/{pid}", headers=alice).json() == before


@pytest.mark.parametrize("body,status", [
    ({}, 422), ({"name": ""}, 422), ({"name": "   "}, 422), ({"name": None}, 422), ({"name": 5}, 422),
    ({"name": "x" * 201}, 422), ({"name": "bad\x00name"}, 422), ({"name": "tab\tname"}, 422),
    ({"name": "esc\x1bname"}, 422),
], ids=["missing", "empty", "blank", "null", "number", "too-long", "nul", "tab", "escape"])
def test_create_rejects_bad_names(client: TestClient, alice: dict, body: dict, status: int, rows) -> None:
    r = client.post("/api/projects/create", json=body, headers=alice)
    assert r.status_code == status
    assert set(r.json()) <= {"error", "details"} and r.json()["error"]
    assert rows("SELECT count(*) FROM projects")[0][0] == 0


def test_name_of_200_characters_is_fine(client: TestClient, alice: dict) -> None:
    assert create(client, alice, "é" * 200)["name"] == "é" * 200


@pytest.mark.parametrize("raw", [b"{", b"[1, 2]", b'"name"', b"\xff\xfe", b"{" * 100000 + b"}" * 100000])
def test_malformed_json_is_400(client: TestClient, alice: dict, raw: bytes, rows) -> None:
    r = client.post("/api/projects/create", content=raw, headers={**alice, "content-type": "application/json"})
    assert r.status_code in (400, 413)
    assert "error" in r.json()
    assert rows("SELECT count(*) FROM projects")[0][0] == 0


def test_body_too_large_is_413(client: TestClient, alice: dict) -> None:
    r = client.post("/api/projects/create", content=b'{"name": "' + b"a" * (2 << 20) + b'"}', headers=alice)
    assert r.status_code == 413


@pytest.mark.parametrize("path", ["/api/projects/999", "/api/projects/abc", "/api/projects/-1",
                                  "/api/projects/99999999999999999999999", "/api/projects/1.5"])
def test_unknown_or_bad_ids_are_404(client: TestClient, alice: dict, path: str) -> None:
    r = client.get(path, headers=alice)
    assert r.status_code == 404 and r.json() == {"error": r.json()["error"]}


def test_ownership(client: TestClient, alice: dict, bob: dict) -> None:
    pid = create(client, alice)["id"]
    for method, path, body in [("get", f"/api/projects/{pid}", None),
                               ("post", f"/api/projects/{pid}/update", {"name": "mine"}),
                               ("post", f"/api/projects/{pid}/delete", None)]:
        r = client.request(method.upper(), path, json=body, headers=bob)
        assert r.status_code == 404, path
    assert client.get("/api/projects", headers=bob).json() == {"projects": []}
    assert client.get("/api/projects/count", headers=bob).json() == {"count": 0}
    assert client.get(f"/api/projects/{pid}", headers=alice).json()["project"]["name"] == "exp1"


def test_admin_sees_all(client: TestClient, alice: dict, make_user) -> None:
    pid = create(client, alice)["id"]
    root = {"x-access-token": make_user("root", admin=True)}
    listed = client.get("/api/projects", headers=root).json()["projects"]
    assert [(p["id"], p["access"], p["owner"]) for p in listed] == [(pid, "admin", "alice")]
    assert client.get("/api/projects/count", headers=root).json() == {"count": 1}


def test_admins_setting_grants_admin(settings: dict, config_file, make_user) -> None:
    import yaml

    settings["admins"] = ["carol"]
    config_file.write_text(yaml.safe_dump(settings))
    config = nfhub_config.load_config(config_file, environ={})
    with TestClient(nfhub.create_app(config)) as c:
        a = {"x-access-token": make_user("alice")}
        c.post("/api/projects/create", json={"name": "a"}, headers=a)
        carol = {"x-access-token": make_user("carol")}
        assert c.get("/api/projects/count", headers=carol).json() == {"count": 1}


def test_update_and_delete_refused_while_run_active(client: TestClient, alice: dict, config: nfhub_config.Config) -> None:
    pid = create(client, alice)["id"]
    import sqlite3

    conn = sqlite3.connect(config.data_path / "nfhub.sqlite")
    conn.execute("INSERT INTO runs (project_id, status, nextflow_project, run_name, secret_hash, created_at)"
                 " VALUES (?, 'running', 'hello', 'nfhub-1-x', 'x', 'now')", (pid,))
    conn.commit()
    conn.close()
    assert client.get(f"/api/projects/{pid}", headers=alice).json()["project"]["is_scheduled"] is True
    assert client.post(f"/api/projects/{pid}/update", json={"name": "n"}, headers=alice).status_code == 409
    assert client.post(f"/api/projects/{pid}/delete", headers=alice).status_code == 409
    assert client.get(f"/api/projects/{pid}", headers=alice).json()["project"]["name"] == "exp1"


def test_seed_typo_alias_accepted(client: TestClient, alice: dict) -> None:
    pid = create(client, alice)["id"]
    r = client.post(f"/api/projects/{pid}/update", json={"nextflow_project": "hello", "nextflow_argumenty": {}},
                    headers=alice)
    assert r.status_code == 200


def test_restart_keeps_data(config: nfhub_config.Config, make_user) -> None:
    with TestClient(nfhub.create_app(config)) as c:
        token = {"x-access-token": make_user("alice")}
        pid = create(c, token, "kept")["id"]
    with TestClient(nfhub.create_app(config)) as c:
        assert c.get(f"/api/projects/{pid}", headers=token).json()["project"]["name"] == "kept"


def test_unexpected_exception_is_generic_500(config: nfhub_config.Config, make_user, monkeypatch, caplog) -> None:
    async def boom(*a, **k):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(nfhub, "list_projects", boom)
    with TestClient(nfhub.create_app(config), raise_server_exceptions=False) as c:
        token = make_user("alice")
        r = c.get("/api/projects", headers={"x-access-token": token})
    assert r.status_code == 500 and r.json() == {"error": "internal error"}
    assert "secret internals" in caplog.text and token not in caplog.text


def test_security_headers(client: TestClient) -> None:
    r = client.get("/api/health")
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "no-referrer"


def test_method_not_allowed_is_json(client: TestClient, alice: dict) -> None:
    r = client.request("TRACE", "/api/projects", headers=alice)
    assert r.status_code == 405 and "error" in r.json()


def test_openapi_describes_every_route(client: TestClient) -> None:
    from starlette.routing import Route

    doc = client.get("/api/openapi.json").json()
    for route in client.app.routes:
        if not isinstance(route, Route) or not route.path.startswith("/api/"):
            continue
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
        assert path in doc["paths"], path
        for method in route.methods - {"HEAD"}:
            assert method.lower() in doc["paths"][path], f"{method} {path}"


def test_view_links_show_reports_inline_and_sandboxed(client: TestClient, alice: dict, bob: dict,
                                                       config: nfhub_config.Config, monkeypatch) -> None:
    pid = create(client, alice)["id"]
    folder = nfhub_config.project_dir(config, pid) / "results" / "multiqc"
    folder.mkdir(parents=True)
    (folder / "report.html").write_text("<html><script>document.title='x'</script><img src='plot.png'></html>")
    (folder / "plot.png").write_bytes(b"\x89PNG\r\n")
    (nfhub_config.project_dir(config, pid) / "secret.txt").write_text("elsewhere")
    r = client.post(f"/api/projects/{pid}/view-link", json={"path": "results/multiqc/report.html"}, headers=alice)
    assert r.status_code == 200, r.text
    url = r.json()["url"]
    page = client.get(url)  # no token: the ticket in the URL is the credential
    assert page.status_code == 200 and "<script>" in page.text
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["content-disposition"] == "inline"
    csp = page.headers["content-security-policy"]
    assert "sandbox allow-scripts" in csp and "allow-same-origin" not in csp and "connect-src 'none'" in csp
    base = url.rsplit("/", 1)[0]
    assert client.get(f"{base}/plot.png").content == b"\x89PNG\r\n"  # the report's own images load
    ticket_root = url.split("/results/")[0]
    assert client.get(f"{ticket_root}/secret.txt").status_code == 404  # outside the report's folder
    (folder / "deeper").mkdir()
    (folder / "deeper" / "x.txt").write_text("x")
    assert client.get(f"{base}/deeper/x.txt").status_code == 404  # only the folder's own files
    assert client.get(f"{base}/../../secret.txt").status_code == 404
    # Raw HTTP: clients normalise '..' away before sending, an attacker's does not.
    import socket
    import threading

    import uvicorn

    from conftest import free_port, wait_for

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(client.app, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, 10)
    try:
        for raw in (f"{base}/../../secret.txt", f"{base}/%2e%2e/%2e%2e/secret.txt", f"{base}/..%2f..%2fsecret.txt"):
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(f"GET {raw} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
                answer = b""
                while chunk := sock.recv(65536):
                    answer += chunk
            assert answer.startswith(b"HTTP/1.1 404") and b"elsewhere" not in answer, (raw, answer[:200])
    finally:
        server.should_exit = True
        thread.join(10)
    tampered = url.replace("/view/", "/view/x")
    assert client.get(tampered).status_code == 404
    other = create(client, alice, "other")["id"]
    assert client.get(url.replace(f"/projects/{pid}/", f"/projects/{other}/")).status_code == 404
    assert client.post(f"/api/projects/{pid}/view-link", json={"path": "results/multiqc/report.html"},
                       headers=bob).status_code == 404
    for bad in ({"path": "results"}, {"path": ""}, {}):
        assert client.post(f"/api/projects/{pid}/view-link", json=bad, headers=alice).status_code == 422
    assert client.post(f"/api/projects/{pid}/view-link", json={"path": "../x"}, headers=alice).status_code == 400
    monkeypatch.setattr(nfhub, "VIEW_LIFETIME", -1)
    expired = client.post(f"/api/projects/{pid}/view-link", json={"path": "results/multiqc/report.html"},
                          headers=alice).json()["url"]
    assert client.get(expired).status_code == 404


def test_view_link_dies_with_the_login_it_came_from(client: TestClient, alice: dict, config: nfhub_config.Config) -> None:
    pid = create(client, alice)["id"]
    (nfhub_config.project_dir(config, pid) / "r.html").write_text("<p>report</p>")
    url = client.post(f"/api/projects/{pid}/view-link", json={"path": "r.html"}, headers=alice).json()["url"]
    assert client.get(url).status_code == 200
    assert client.post("/api/users/logout", headers=alice).status_code == 200
    assert client.get(url).status_code == 404


@pytest.mark.parametrize("path,body", [
    ("/api/projects/create", b'{"name": "bad \\ud800 name"}'),
    ("/api/projects/create", b'{"name": "\\udfff"}'),
])
def test_lone_surrogates_are_400(client: TestClient, alice: dict, path: str, body: bytes, rows) -> None:
    r = client.post(path, content=body, headers={**alice, "content-type": "application/json"})
    assert r.status_code == 400 and "error" in r.json()
    assert rows("SELECT count(*) FROM projects")[0][0] == 0


def test_huge_numbers_are_422_not_500(client: TestClient, alice: dict) -> None:
    pid = create(client, alice)["id"]
    client.post(f"/api/projects/{pid}/update", json={"nextflow_project": "hello"}, headers=alice)
    r = client.post(f"/api/projects/{pid}/update", content=b'{"workflow_arguments": {"max_names": 1' + b"0" * 400
                    + b"}}", headers={**alice, "content-type": "application/json"})
    assert r.status_code == 422 and "max_names" in r.json()["details"]
    r = client.post(f"/api/projects/{pid}/schedule", json={"resume": 10**30}, headers=alice)
    assert r.status_code == 422


def test_path_bodies_are_read_by_the_one_body_reader(client: TestClient, alice: dict) -> None:
    """delete-path and create-folder take {"path"}: anything else is a 400, a body past 64 KiB a 413, nothing made."""
    pid = client.post("/api/projects/create", json={"name": "p"}, headers=alice).json()["project"]["id"]
    for route in ("create-folder", "delete-path"):
        for body in (b"not json", b"[]", b'{"path": 5}', b"{}", b"[" * 60000):
            r = client.post(f"/api/projects/{pid}/{route}", content=body, headers=alice)
            assert r.status_code == 400 and "error" in r.json(), (route, body[:20], r.text)
        r = client.post(f"/api/projects/{pid}/{route}", content=b'{"path": "' + b"a" * 70000 + b'"}', headers=alice)
        assert r.status_code == 413 and "error" in r.json()
    assert client.get(f"/api/projects/{pid}/files", headers=alice).json()["entries"] == []
