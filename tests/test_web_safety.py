"""The web app against a hostile page (issue 15): a real Gradio server on 127.0.0.1, raw HTTP.

DNS rebinding sends `Host: evil.example:PORT` to 127.0.0.1; a site the user visits sends its
own Origin. Neither may reach a handler or get a CORS grant. Folders typed into the page stay
in the data root, messages carry no server paths, CSV cells cannot be formulas, and an
uploaded code file is decoded only up to a row limit.
"""

from __future__ import annotations

import csv
import http.client
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vaekit import codes

pytestmark = pytest.mark.slow  # a served app over raw HTTP: left out by `dev.py test --fast`

SIZE = 16


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """data/ (the app's data root, with images) and outside/ (images the app must not read)."""
    root = tmp_path_factory.mktemp("web")
    rng = np.random.default_rng(0)
    for folder in ("data/images", "outside"):
        (root / folder).mkdir(parents=True)
        for i in range(8):
            x = np.full((20, 20), 30, np.uint8)
            r, c = rng.integers(2, 12, 2)
            x[r : r + 6, c : c + 6] = 200
            Image.fromarray(x).save(root / folder / f"img_{i}.png")
    return root


@pytest.fixture(scope="module")
def run(tree):
    from vaekit.config import ModelConfig, TrainConfig
    from vaekit.train import train

    out = tree / "data" / "runs" / "tiny"
    train(tree / "data" / "images", out, ModelConfig(image_size=SIZE, channels=1, latent_dim=4, base_channels=4),
          TrainConfig(epochs=2, batch_size=8, device="cpu"), channels=1, cache_dir=tree / "cache")
    return out


def _serve(run, tree, **build):
    from vaekit_demo.app import build_app, launch

    app = build_app(run, runs_dir=tree / "data" / "runs", data_root=tree / "data", **build)
    _, url, _ = launch(app, port=_free_port(), prevent_thread_lock=True, quiet=True)
    return app, url


@pytest.fixture(scope="module")
def served(run, tree):
    app, url = _serve(run, tree)
    yield url
    app.close()


def raw(url: str, method: str, path: str, headers: dict[str, str]) -> http.client.HTTPResponse:
    """One request with exactly these headers (http.client would add its own Host otherwise)."""
    port = int(url.rstrip("/").rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    for k, v in headers.items():
        conn.putheader(k, v)
    conn.endheaders()
    r = conn.getresponse()
    r.read()
    conn.close()
    return r


def test_a_foreign_host_header_is_refused(served):
    port = served.rstrip("/").rsplit(":", 1)[1]
    assert raw(served, "GET", "/", {"Host": f"127.0.0.1:{port}"}).status == 200
    assert raw(served, "GET", "/", {"Host": f"localhost:{port}"}).status == 200
    for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1.evil.example:{port}"):
        r = raw(served, "GET", "/gradio_api/info", {"Host": host, "Origin": f"http://{host}"})
        assert r.status == 400, host
        assert r.getheader("access-control-allow-origin") is None
        assert r.getheader("access-control-allow-credentials") is None


def test_no_cors_grant_for_another_site(served):
    port = served.rstrip("/").rsplit(":", 1)[1]
    ok = {"Host": f"127.0.0.1:{port}"}
    for method, extra in (("GET", {}), ("OPTIONS", {"Access-Control-Request-Method": "POST"})):
        r = raw(served, method, "/gradio_api/info", {**ok, "Origin": "http://evil.example", **extra})
        assert r.status == 403
        assert r.getheader("access-control-allow-origin") is None
    # the app's own page still gets its answer
    r = raw(served, "GET", "/gradio_api/info", {**ok, "Origin": f"http://127.0.0.1:{port}"})
    assert r.status == 200 and r.getheader("access-control-allow-origin") == f"http://127.0.0.1:{port}"


def test_server_folders_stay_in_the_data_root_and_errors_show_no_server_paths(served, tree):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    c = Client(served, verbose=False)
    points, _ = c.predict("images", "PCA", 20, api_name="/latent")  # relative to the data root
    assert len(points["data"]) == 8
    for folder in (str(tree / "outside"), "../outside", "/etc"):
        with pytest.raises(AppError, match="outside the app's data folder") as e:
            c.predict(folder, "PCA", 20, api_name="/latent")
        assert str(tree) not in str(e.value)
        with pytest.raises(AppError, match="outside the app's data folder"):
            c.predict(folder, SIZE, 4, 1, api_name="/train")
    with pytest.raises(AppError, match="outside the app's data folder"):
        c.predict(str(tree / "outside"), api_name="/open_model")
    with pytest.raises(AppError) as e:
        c.predict("images/missing", "PCA", 20, api_name="/latent")
    assert "no such folder: images/missing" in str(e.value) and str(tree) not in str(e.value)


def test_server_folders_are_off_unless_allowed(run, tree):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    app, url = _serve(run, tree, server_folders=False)
    try:
        c = Client(url, verbose=False)
        for args, api in ((("images", "PCA", 20), "/latent"), (("images", SIZE, 4, 1), "/train"),
                          (("runs/tiny",), "/open_model")):
            with pytest.raises(AppError, match="switched off"):
                c.predict(*args, api_name=api)
    finally:
        app.close()


def test_cli_demo_switches_server_folders_off_beyond_loopback_and_takes_auth(run, monkeypatch):
    from typer.testing import CliRunner

    import vaekit_demo.app as demo_app
    from vaekit_cli.main import app

    seen = {}

    def build(model, **kw):
        seen.update(build=kw)
        return "app"

    monkeypatch.setattr(demo_app, "build_app", build)
    monkeypatch.setattr(demo_app, "launch", lambda a, **kw: seen.update(launch=kw))
    r = CliRunner().invoke(app, ["demo", str(run), "--host", "0.0.0.0", "--auth", "ann:secret"])
    assert r.exit_code == 0, r.output
    assert seen["build"]["server_folders"] is False and seen["launch"]["auth"] == ("ann", "secret")
    r = CliRunner().invoke(app, ["demo", str(run), "--host", "0.0.0.0", "--allow-server-folders"])
    assert r.exit_code == 0 and seen["build"]["server_folders"] is True
    r = CliRunner().invoke(app, ["demo", str(run)])
    assert r.exit_code == 0 and seen["build"]["server_folders"] is True and seen["launch"]["auth"] is None
    r = CliRunner().invoke(app, ["demo", str(run), "--auth", "no-colon"])
    assert r.exit_code == 2


def test_auth_keeps_the_api_closed_without_a_login(run, tree):
    from vaekit_demo.app import build_app, launch

    app = build_app(run, runs_dir=tree / "data" / "runs", data_root=tree / "data")
    _, url, _ = launch(app, port=_free_port(), prevent_thread_lock=True, quiet=True, auth=("ann", "secret"))
    try:
        port = url.rstrip("/").rsplit(":", 1)[1]
        r = raw(url, "GET", "/config", {"Host": f"127.0.0.1:{port}"})
        assert r.status == 401
    finally:
        app.close()


def test_uploaded_names_cannot_become_spreadsheet_formulas(served, run, tree, tmp_path):
    import vaekit
    from gradio_client import Client, handle_file

    up = tmp_path / "=HYPERLINK(1).png"
    Image.open(tree / "data" / "images" / "img_0.png").save(up)
    c = Client(served, verbose=False)
    *_, csv_path = c.predict([handle_file(str(up))], vaekit.load(run).info.threshold, api_name="/anomaly")
    rows = list(csv.reader(Path(csv_path).read_text(encoding="utf-8").splitlines()))
    assert rows[1][0] == "'=HYPERLINK(1).png"


def test_the_anomaly_summary_never_prints_a_score_as_the_threshold_it_lies_on_the_other_side_of(served, run, tree,
                                                                                                  tmp_path):
    # "score 8.05 → anomalous" at threshold 8.05: two decimals hid the side; and the summary named the
    # first 10 of 12 uploads, whatever their scores, without saying there were more (helpers' reviews)
    import re

    import vaekit
    from gradio_client import Client, handle_file
    from vaekit_demo.figures import threshold_range

    ups = []
    for i in range(12):
        ups.append(tmp_path / f"u{i:02d}.png")
        Image.open(tree / "data" / "images" / f"img_{i % 8}.png").rotate(40 if i < 2 else 0).save(ups[-1])
    c = Client(served, verbose=False)
    summary, *_, csv_path = c.predict([handle_file(str(u)) for u in ups], 0.0, api_name="/anomaly")
    scores = {row["path"]: float(row["score"])
              for row in csv.DictReader(Path(csv_path).read_text(encoding="utf-8").splitlines())}
    listed = re.findall(r"`([^`]+)`: score", summary)
    assert sorted(listed, key=scores.get, reverse=True) == listed == sorted(scores, key=scores.get, reverse=True)[:10]
    assert "and 2 more" in summary
    span = threshold_range(vaekit.load(run))  # the slider's: a listed score inside it, thresholds beside it
    name = next(n for n in listed if span["minimum"] + 1e-5 < scores[n] < span["maximum"] - 1e-5)
    for threshold in (scores[name] - 1e-6, scores[name] + 1e-6):
        summary, *_ = c.predict([handle_file(str(u)) for u in ups], threshold, api_name="/anomaly")
        shown = re.search(r"at threshold (\S+)", summary).group(1)
        line = next(line for line in summary.splitlines() if f"`{name}`" in line)
        printed = re.search(r"score \*\*(\S+)\*\*", line).group(1)
        assert printed != shown and (float(printed) > float(shown)) == (threshold < scores[name]), (shown, line)
        assert ("**anomalous**" in line) == (threshold < scores[name])


def test_uploaded_code_files_are_decoded_up_to_a_row_limit(served, run, tree, tmp_path, monkeypatch):
    import vaekit
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    from vaekit_demo import handlers

    m = vaekit.load(run)
    x = m.load_images(tree / "data" / "images").images
    cf = codes.encode_images(m, x, [f"{i}.png" for i in range(len(x))], np.full((len(x), 2), SIZE), "q8")
    codes.save(cf, tmp_path / "eight.codes")
    monkeypatch.setattr(handlers, "DECODE_MAX_ROWS", 5)  # the server runs in this process
    c = Client(served, verbose=False)
    with pytest.raises(AppError, match="holds 8 images; the web app decodes at most 5"):
        c.predict(handle_file(str(tmp_path / "eight.codes")), api_name="/decompress")
    monkeypatch.setattr(handlers, "DECODE_MAX_ROWS", 8)
    assert len(c.predict(handle_file(str(tmp_path / "eight.codes")), api_name="/decompress")) == 8


def test_a_postscript_upload_is_skipped_not_rendered(served, run, tree, tmp_path, monkeypatch):
    import PIL.EpsImagePlugin

    import vaekit
    from gradio_client import Client, handle_file

    ran = []
    monkeypatch.setattr(PIL.EpsImagePlugin, "Ghostscript", lambda *a, **k: ran.append(a) or 1 / 0)
    eps = tmp_path / "x.png"
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 20 20\nshowpage\n%%EOF\n")
    c = Client(served, verbose=False)
    summary, *_ = c.predict([handle_file(str(eps)), handle_file(str(tree / "data" / "images" / "img_1.png"))],
                            vaekit.load(run).info.threshold, api_name="/anomaly")
    assert "of 1 anomalous" in summary and ran == []


def test_the_train_tab_skips_a_fifo_named_png_instead_of_hanging(run, tree):
    """The web Train tab reads folders with the same loader: a .png link to a FIFO is skipped."""
    import os
    import shutil

    from gradio_client import Client

    from test_hardening import fifo_guard

    folder = tree / "data" / "with-fifo"
    shutil.copytree(tree / "data" / "images", folder)
    fifo = tree / "data" / "pipes" / "pipe"  # inside the data folder: a link out of it is refused by name
    fifo.parent.mkdir()
    os.mkfifo(fifo)
    os.symlink(fifo, folder / "pipe.png")
    app, url = _serve(run, tree)
    try:
        with fifo_guard(fifo):
            status, *_ = Client(url, verbose=False).predict("with-fifo", SIZE, 4, 1, api_name="/train")
        assert status.startswith("**Done**") and str(tree) not in status
        import vaekit

        new_run = vaekit.load(next((tree / "data" / "runs").glob("with-fifo-*")))
        assert new_run.config["data"]["skipped"] == [["pipe.png", "not a regular file (a FIFO, socket or device)"]]
    finally:
        app.close()


def test_the_page_shows_no_server_paths_after_open_train_and_stop(run, tree):
    """Open, the model line, the latent-space folder, the training status and the Stopped hint
    show paths relative to the data root (what the boxes take back), never the server's folders."""
    from gradio_client import Client

    app, url = _serve(run, tree)
    try:
        info = next(b for b in app.blocks.values() if getattr(b, "elem_id", None) == "model-info")
        assert "`runs/tiny`" in info.value and str(tree) not in info.value
        c = Client(url, verbose=False)
        model_md, _, _, folder = c.predict("runs/tiny", api_name="/open_model")
        assert "`runs/tiny`" in model_md and str(tree) not in model_md and folder == "images"
        job = c.submit("images", SIZE, 4, 200, api_name="/train")
        while not job.outputs() and not job.done():  # the first epoch's status: training runs
            job.status()
        assert c.predict(api_name="/stop").startswith("Stopping")
        status = job.result()[0]
        assert status.startswith("**Stopped**") and str(tree) not in status, status
        assert "vaekit train images --out runs/images-" in status
        assert all(str(tree) not in str(o) for out in job.outputs() for o in (out if isinstance(out, tuple) else [out]))
    finally:
        app.close()
