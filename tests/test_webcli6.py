"""Hostile use of the web app's handlers and the CLI's option edges (round 6): each test failed
before its fix."""

from __future__ import annotations

import socket

import pytest
from typer.testing import CliRunner

import built_once
from vaekit.errors import BadInput


def _cli(*args: str):
    from vaekit_cli.main import app

    return CliRunner().invoke(app, list(args))


# --- vaekit demo: its options are checked before anything is served -------------------------------

@pytest.mark.parametrize("args, said", [
    (["--port", "0"], "--port"), (["--port", "70000"], "--port"), (["--port", "-1"], "--port"),
    (["--max-file-size", "abc"], "such as 25mb"), (["--max-file-size", "25"], "such as 25mb"),
    (["--max-file-size", "0mb"], "such as 25mb"), (["--host", ""], "--host"),
    (["--max-file-size", "18446744073709551616b"], "1000tb"),  # 2**64 bytes: a traceback in Gradio
    (["--max-file-size", "1001tb"], "1000tb"), (["--host", "::1"], "IPv6"), (["--host", "127.0.0.1:8080"], "HOST:PORT"),  # ::1: Gradio's URL a traceback
])
def test_demo_refuses_bad_options_with_exit_2_and_serves_nothing(args, said, tmp_path, monkeypatch):
    import vaekit_demo.app as demo_app

    monkeypatch.chdir(tmp_path)  # no runs/latest: the app would start without a model
    served = []
    monkeypatch.setattr(demo_app.gr.Blocks, "launch", lambda self, **kw: served.append(kw))
    r = _cli("demo", *args)
    assert r.exit_code == 2 and said in r.output and "Traceback" not in r.output, r.output
    assert served == []  # Gradio's parse of "abc" raised ValueError: exit 3, "a bug in vaekit"


@pytest.mark.slow  # builds the whole web app twice
def test_demo_on_a_port_in_use_or_an_unknown_host_is_one_line_and_exit_2(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = _cli("demo", "--port", str(port))  # was Gradio's "Cannot find empty port", exit 3 with a traceback
        assert r.exit_code == 2 and f"cannot serve on 127.0.0.1:{port}" in r.output and "in use" in r.output, r.output
    r = _cli("demo", "--host", "no-such-host.invalid")  # was the same "Cannot find empty port"
    assert r.exit_code == 2 and "cannot serve on host 'no-such-host.invalid'" in r.output, r.output


def test_launch_checks_the_address_before_gradio_does():
    import gradio as gr

    from vaekit_demo.app import launch

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(BadInput, match="in use"):
            launch(gr.Blocks(), port=busy.getsockname()[1], prevent_thread_lock=True, quiet=True)
    with pytest.raises(BadInput, match="invalid port 0"):
        launch(gr.Blocks(), port=0, prevent_thread_lock=True, quiet=True)


# --- vaekit train --seed: bounded where torch can take it ------------------------------------------

def test_train_refuses_a_seed_torch_cannot_take_before_creating_the_run(tmp_path):
    from vaekit.config import SEED_MAX, TrainConfig

    assert TrainConfig(seed=SEED_MAX).seed == SEED_MAX
    with pytest.raises(BadInput, match="seed must be an integer >= 0 and at most 2\\*\\*63 - 1"):
        TrainConfig(seed=2**64)  # torch.manual_seed: "Overflow when unpacking long long", exit 3
    from vaekit.sample_data import write_digits

    write_digits(tmp_path / "digits", size=16)
    r = _cli("--threads", "1", "train", str(tmp_path / "digits" / "train"), "--out", str(tmp_path / "run"),
             "--image-size", "16", "--epochs", "1", "--seed", str(10**20))
    assert r.exit_code == 2 and "seed must be an integer >= 0 and at most 2**63 - 1" in r.output, r.output
    assert not (tmp_path / "run").exists()  # was left holding .vaekit-run and .vaekit.lock


# --- the web app: a page opened after Open or Train shows the model that is open now ---------------

SIZE = 16


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """What write_digits(ROOT, size=SIZE) writes, this module's own copy (tests/built_once.py)."""
    return built_once.digits(tmp_path_factory, tmp_path_factory.mktemp("digits"))


@pytest.fixture(scope="module")
def run(digits, tmp_path_factory):
    """The tiny run trained on the digits (ModelConfig(image_size=SIZE, latent_dim=4,
    base_channels=8), TrainConfig(epochs=2, batch_size=32)): trained once per process, this
    module's copy lies inside the app's data root, so Open takes it."""
    assert SIZE == built_once.DIGITS_SIZE
    return built_once.digits_run(tmp_path_factory, digits, digits / "runs" / "tiny")


@pytest.fixture()
def empty_app(digits, tmp_path):
    """The app started with no model (`vaekit demo` before any run), served on 127.0.0.1."""
    from vaekit_demo.app import build_app, launch

    app = build_app(None, runs_dir=tmp_path / "runs", data_root=digits)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _, url, _ = launch(app, port=port, prevent_thread_lock=True, quiet=True)
    yield url
    app.close()


@pytest.mark.slow
def test_a_new_session_after_open_gets_the_open_models_widgets(empty_app, run, digits):
    from gradio_client import Client, handle_file

    import vaekit

    thr = vaekit.load(run).info.threshold
    first = Client(empty_app, verbose=False)
    first.predict("runs/tiny", api_name="/open_model")
    image = handle_file(str(sorted((digits / "test" / "normal").glob("*.png"))[0]))
    later = Client(empty_app, verbose=False)  # another browser tab, or the same page reloaded
    model_md, slider, *_ = later.predict(api_name="/model")  # what the page asks for as it loads
    assert "`runs/tiny`" in model_md and "No model open" not in model_md
    # the slider was drawn for no model (-1 to 3, at 0) and Gradio enforced that range in this session:
    # "Value 56.8 is greater than maximum value 3.0", and at 0 every image was "anomalous"
    summary = later.predict([image], thr, api_name="/anomaly")[0]
    assert f"at threshold {thr:.2f}" in summary


@pytest.mark.slow
def test_a_page_loaded_after_open_shows_the_model_and_its_threshold(empty_app, run):
    from browser_support import chromium
    from gradio_client import Client

    import vaekit

    Client(empty_app, verbose=False).predict("runs/tiny", api_name="/open_model")
    thr = vaekit.load(run).info.threshold
    with chromium() as browser:
        page = browser.new_page()
        page.goto(empty_app)
        page.locator("#model-info").get_by_text("runs/tiny").wait_for(timeout=30_000)  # was "No model open"
        assert "No model open" not in page.locator("#model-info").inner_text()
        page.get_by_role("tab", name="Anomaly").click()
        box = page.locator("#threshold input[type=number]")
        page.wait_for_function("v => Math.abs(Number(document.querySelector('#threshold input[type=number]').value)"
                               " - v) < 0.01", arg=thr, timeout=30_000)  # was 0, the no-model default
        assert abs(float(box.input_value()) - thr) < 0.01


# --- handlers: what a crafted request can send is a message, never "internal error" -----------------

def test_latent_limit_that_is_not_a_whole_number_is_bad_input(run, digits):
    import vaekit
    from vaekit_demo import handlers

    model = vaekit.load(run)
    # JSON's NaN passes Gradio's slider bounds (NaN compares false): int(nan) raised ValueError, shown as a bug
    with pytest.raises(BadInput, match="the number of images must be a whole number"):
        handlers.latent_map(model, digits / "test", "PCA", float("nan"))
    assert len(handlers.latent_map(model, digits / "test", "PCA", 20.0).names) == 20  # a slider's float


def test_a_code_file_that_is_a_folder_is_a_message(run, tmp_path):
    import vaekit
    from vaekit.errors import VaekitError
    from vaekit_demo import handlers
    from vaekit_demo.errors import guard_errors

    # Gradio lets a request name its upload folder itself as the "uploaded" code file
    with pytest.raises(VaekitError, match="is a folder"):  # was IsADirectoryError: "internal error ... a bug"
        handlers.decompress(vaekit.load(run), tmp_path)
    import gradio as gr

    with pytest.raises(gr.Error) as e:
        guard_errors(handlers.decompress, (tmp_path,))(vaekit.load(run), tmp_path)
    assert "bug" not in e.value.message and "is a folder" in e.value.message


@pytest.mark.parametrize("size, dim, epochs", [(float("nan"), 4, 1), (16, float("inf"), 1), (16, 4, float("nan")),
                                               (16.5, 4, 1)])
def test_train_tab_numbers_that_are_not_whole_are_bad_input_and_train_nothing(size, dim, epochs, digits, tmp_path):
    import threading

    from vaekit_demo import training

    with pytest.raises(BadInput, match="must be a whole number"):  # int(nan): ValueError, "a bug in vaekit"
        next(training.train_events(digits / "train", tmp_path / "run", size, dim, epochs, threading.Event()))
    assert not (tmp_path / "run").exists()  # 16.5 was trained as 16


# --- the web app with a threshold or scores near the float limit -----------------------------------

@pytest.mark.slow  # builds the whole web app
def test_the_app_opens_a_model_whose_threshold_is_near_the_float_limit(run, tmp_path):
    import io
    import shutil

    import gradio as gr

    import vaekit
    from vaekit_demo import figures
    from vaekit_demo.app import build_app

    moved = tmp_path / "run"
    shutil.copytree(run, moved)
    r = _cli("--threads", "1", "threshold", str(moved), "--value", "1.7e308")  # accepted: a finite number
    assert r.exit_code == 0, r.output
    model = vaekit.load(moved)
    rng = figures.threshold_range(model)
    gr.Slider(**rng)  # was max = inf: OverflowError in Gradio's step, so `vaekit demo RUN` was exit 3
    assert rng["minimum"] <= rng["value"] <= rng["maximum"] and rng["value"] > 1e299
    build_app(model)  # was matplotlib's "arange: cannot compute length" from the histogram
    for scores in ([1.7e308], [-1.7e308], [float("inf")]):  # a broken model's uploads, drawn over the histogram
        fig = figures.score_histogram([1.0, 2.0, 1.7e308], 1.7e308, scores, [True], score=model.info.score)
        fig.savefig(io.BytesIO(), format="png")


def test_the_threshold_slider_is_relabelled_with_the_unit_of_the_model_opened(run, digits, tmp_path):
    import vaekit
    from vaekit.inference.engine import score_unit
    from vaekit_demo.app import _State
    from vaekit_demo.context import Context

    st = _State(None, tmp_path / "runs", tmp_path / "work", digits, True)  # started empty: "score units"
    ctx = Context(st)
    assert "score units" in ctx.model_outputs()[1].label
    st.model = vaekit.load(run)  # what Open or Train does
    _, slider, *_ = ctx.model_outputs()
    assert f"Threshold ({score_unit(st.model.info.score)})" in slider.label  # the update kept "score units"
    assert slider.value == pytest.approx(st.model.info.threshold)


# --- the Compress tab: an image reconstructed exactly ----------------------------------------------

@pytest.mark.slow
def test_compress_tab_says_exact_for_an_exact_reconstruction(run, digits, tmp_path, monkeypatch):
    import dataclasses

    import numpy as np
    from gradio_client import Client, handle_file

    from vaekit_demo import handlers
    from vaekit_demo.app import build_app, launch

    real_compress, real_vkc = handlers.compress, handlers.encode_vkc

    def compress(*a, **kw):  # the first image comes back exactly (a flat image often does): PSNR +inf
        r = real_compress(*a, **kw)
        return dataclasses.replace(r, psnr=np.array([np.inf, *r.psnr[1:]]))

    def encode_vkc(*a, **kw):
        shown, skipped = real_vkc(*a, **kw)
        v = shown[0]
        return [dataclasses.replace(v, psnr=np.inf, webp=dataclasses.replace(v.webp, psnr=np.inf))], skipped

    monkeypatch.setattr(handlers, "compress", compress)
    monkeypatch.setattr(handlers, "encode_vkc", encode_vkc)
    app = build_app(run, runs_dir=tmp_path / "runs", data_root=digits)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _, url, _ = launch(app, port=port, prevent_thread_lock=True, quiet=True)
    try:
        c = Client(url, verbose=False)
        files = [handle_file(str(p)) for p in sorted((digits / "test" / "normal").glob("*.png"))[:2]]
        _, summary, _, table = c.predict(files, "q8", api_name="/compress")
        assert table["data"][0][1] == "exact" and isinstance(table["data"][1][1], float)  # was None: a blank cell
        assert "inf" not in summary and "(1 exact)" in summary  # was "Mean PSNR inf dB"
        _, summary, _, _ = c.predict(files[:1], 6, api_name="/encode_vkc")
        assert "inf" not in summary and "nan" not in summary and "both exact" in summary  # was "+nan dB for the .vkc"
    finally:
        app.close()


def test_demo_prints_its_own_address_not_gradios_share_hint(tmp_path, monkeypatch):
    # Gradio's start-up lines end with "To create a public link, set `share=True` in `launch()`",
    # which a CLI user cannot act on: the CLI prints the address itself and Gradio stays quiet
    import vaekit_demo.app as demo_app

    monkeypatch.chdir(tmp_path)
    served = []
    monkeypatch.setattr(demo_app.gr.Blocks, "launch", lambda self, **kw: served.append(kw))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = _cli("demo", "--port", str(port))
    assert r.exit_code == 0, r.output
    assert f"vaekit demo on http://127.0.0.1:{port}" in r.output and "share=True" not in r.output
    assert len(served) == 1 and served[0]["quiet"] is True and served[0]["server_port"] == port
