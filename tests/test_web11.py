"""The web app against a careless or hostile user (attack round 11): a page served from another
port of this machine is another site."""

from __future__ import annotations

import http.client
import socket

import pytest

from test_webcli6 import SIZE, digits, run  # noqa: F401 - the tiny run inside the data root, as fixtures

DEADLINE = 120.0  # seconds a test waits for the served app to get somewhere before it fails


def _serve(run, digits, workdir):  # noqa: F811 - fixtures by value
    from vaekit_demo.app import build_app, launch

    app = build_app(run, runs_dir=digits / "runs", data_root=digits, workdir=workdir)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    _, url, _ = launch(app, port=port, prevent_thread_lock=True, quiet=True)
    return app, url


@pytest.fixture()
def served(run, digits, tmp_path):  # noqa: F811
    app, url = _serve(run, digits, tmp_path / "work")
    yield url
    app.close()


def _raw(url: str, headers: list[tuple[str, str]]) -> http.client.HTTPResponse:
    """GET the API description with exactly these headers (http.client would add its own Host)."""
    port = int(url.rstrip("/").rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.putrequest("GET", "/gradio_api/info", skip_host=True, skip_accept_encoding=True)
    for k, v in headers:
        conn.putheader(k, v)
    conn.endheaders()
    r = conn.getresponse()
    r.read()
    conn.close()
    return r


def test_a_page_on_another_port_of_this_machine_is_another_site(served):
    """Any local program's page (a dev server, `python -m http.server` over a downloaded .html) could
    drive the app and read its answers: Origin http://127.0.0.1:OTHER got 200 and a CORS grant."""
    port = int(served.rstrip("/").rsplit(":", 1)[1])
    for host in ("127.0.0.1", "localhost"):
        own = [("Host", f"{host}:{port}")]
        r = _raw(served, [*own, ("Origin", f"http://{host}:{port}")])
        assert r.status == 200 and r.getheader("access-control-allow-origin") == f"http://{host}:{port}"
        for origin in (f"http://{host}:{port + 1}", f"http://{host}", f"https://{host}:{port}"):
            r = _raw(served, [*own, ("Origin", origin)])
            assert r.status == 403, origin
            assert r.getheader("access-control-allow-origin") is None
    # a Host with a user part names the host after the "@": no browser sends one, and it is no name of ours
    assert _raw(served, [("Host", f"evil.example@127.0.0.1:{port}")]).status == 400
