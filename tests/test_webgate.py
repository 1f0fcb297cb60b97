"""The web gate shared by `rlaif rubric studio` and `rlaif review` (issue 20 item 3): a page on another
site (or another local port) that knows nothing but the cookie cannot write; nor can a request under a
foreign Host (DNS rebinding) or Origin, nor a non-JSON body."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from rlaif.backends.base import BackendConfig
from rlaif.studio.app import COOKIE, Studio, build_app
from rlaif.webgate import served_hosts

ROOT = Path(__file__).resolve().parents[1]
PORT = 8765
BASE = f"http://127.0.0.1:{PORT}"


@pytest.fixture
def studio(tmp_path: Path) -> Studio:
    folder = tmp_path / "rubrics"
    folder.mkdir()
    shutil.copy(ROOT / "rubrics" / "answer_checks.yaml", folder / "answer_checks.yaml")
    return Studio(folder, BackendConfig(engine="fake"))


def files(folder: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(folder.parent.rglob("*")) if p.is_file()}


def new_rubric(studio: Studio) -> str:
    return (studio.folder.root / "answer_checks.yaml").read_text().replace("name: answer_checks", "name: evil")


def test_cross_site_writes_are_refused_and_write_nothing(studio: Studio) -> None:
    client = TestClient(build_app(studio, "127.0.0.1", PORT), base_url=BASE)
    client.cookies.set(COOKIE, studio.token)
    assert client.get("/api/state").status_code == 200  # the cookie opens reads (the page's own JS and CSS)
    before = files(studio.folder.root)
    body = json.dumps({"name": "evil.yaml", "text": new_rubric(studio)})
    attacks = [
        ({"Content-Type": "text/plain"}, 403),  # the form/fetch a foreign page can send: cookie, no header
        ({"Content-Type": "application/json"}, 403),  # cookie alone, even as JSON
        ({"Content-Type": "text/plain", "X-Studio-Token": studio.token}, 415),
        ({"Content-Type": "application/json", "X-Studio-Token": studio.token, "Origin": "http://127.0.0.1:9999"}, 403),
        ({"Content-Type": "application/json", "X-Studio-Token": studio.token, "Origin": "null"}, 403),
        ({"Content-Type": "application/json", "X-Studio-Token": studio.token, "Host": "evil.example:8765"}, 403),
        ({"Content-Type": "application/json", "X-Studio-Token": studio.token, "Host": "127.0.0.1:9999"}, 403),
    ]
    for headers, status in attacks:
        r = client.post("/api/save", content=body, headers=headers)
        assert r.status_code == status, headers
        assert list(r.json()) == ["error"] and "\n" not in r.json()["error"], headers
    assert files(studio.folder.root) == before and not (studio.folder.root / "evil.yaml").exists()
    # the page's own request passes: header token, JSON, same origin
    r = client.post("/api/save", content=body, headers={"Content-Type": "application/json", "Origin": BASE,
                                                       "X-Studio-Token": studio.token})
    assert r.status_code == 200 and (studio.folder.root / "evil.yaml").exists()


def test_host_names_and_websockets() -> None:
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect

    from rlaif.webgate import WebGate

    async def echo(ws: WebSocket) -> None:
        await ws.accept()
        await ws.send_text("hi")
        await ws.close()

    app = WebGate(Starlette(routes=[WebSocketRoute("/ws", echo)]), token="t", header="x-t", cookie="c",
                  hosts=served_hosts("127.0.0.1", PORT), what="test")
    client = TestClient(app, base_url=BASE)
    ok = {"Host": f"127.0.0.1:{PORT}"}  # the test client's websockets ignore base_url
    with client.websocket_connect("/ws?token=t", headers=ok) as ws:
        assert ws.receive_text() == "hi"
    for url, headers in [("/ws", ok), ("/ws?token=x", ok), ("/ws?token=t", {**ok, "Origin": "http://evil.example"}),
                         ("/ws?token=t", {"Host": "evil.example:8765"})]:
        with pytest.raises(WebSocketDisconnect):
            with client.websocket_connect(url, headers=headers) as ws:
                ws.receive_text()
    assert served_hosts("127.0.0.1", 5) == {"127.0.0.1:5", "localhost:5", "[::1]:5"}
    assert served_hosts("0.0.0.0", 5) is None and "10.0.0.2:5" in served_hosts("10.0.0.2", 5)  # type: ignore[operator]
