"""The web app in a real browser: headless Chromium (Debian's, never a downloaded one) via Playwright."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import vaekit
from vaekit.config import ModelConfig, TrainConfig
from vaekit.inference.engine import score_unit
from vaekit.sample_data import write_digits
from browser_support import CHROMIUM  # Debian's, never `playwright install`

pytestmark = pytest.mark.slow  # a real browser against a served app: left out by `dev.py test --fast`

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
SIZE = 16


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from vaekit.train import train
    from vaekit_demo.app import build_app, launch

    data = tmp_path_factory.mktemp("digits")
    write_digits(data, size=SIZE)
    run = tmp_path_factory.mktemp("runs") / "tiny"
    train(data / "train", run, ModelConfig(image_size=SIZE, latent_dim=4, base_channels=8),
          TrainConfig(epochs=2, batch_size=32), cache_dir=tmp_path_factory.mktemp("cache"))
    app = build_app(run, runs_dir=tmp_path_factory.mktemp("app-runs"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _, url, _ = launch(app, port=port, prevent_thread_lock=True, quiet=True)
    yield url, vaekit.load(run), data
    app.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # a persistent context is how Playwright takes a fresh --user-data-dir
        ctx = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("profile")), executable_path=CHROMIUM, args=FLAGS, headless=True,
            viewport={"width": 1280, "height": 1000})
        try:
            yield ctx
        finally:
            ctx.close()


@pytest.fixture()
def page(browser):
    page = browser.new_page()
    yield page
    page.close()


def test_anomaly_tab_shows_score_and_heat_map(served, page, tmp_path):
    url, model, data = served
    image = sorted((data / "test" / "anomalous").glob("*.png"))[0]
    want = float(model.score(model.load_images([image]).images, score=model.info.score).score[0])

    page.goto(url)
    page.get_by_role("tab", name="Anomaly").click()
    page.locator("#anomaly-files input[type=file]").set_input_files(str(image))
    page.locator("#anomaly-files").get_by_text(image.stem).wait_for()  # upload finished (the name is split at the suffix)
    page.locator("#score-btn").click()

    summary = page.locator("#anomaly-summary")
    unit = score_unit(model.info.score)
    summary.get_by_text(f"score {want:.2f} {unit}").wait_for(timeout=30_000)
    verdict = "anomalous" if want > model.info.threshold else "normal"
    assert f"{image.name}: score {want:.2f} {unit} → {verdict}" in summary.inner_text()
    table = page.locator("#anomaly-table")
    assert image.name in table.inner_text() and f"{want:.3f}".rstrip("0") in table.inner_text()

    heat = page.locator("#heatmaps img").first
    heat.wait_for()
    # the element exists before its PNG has loaded (a busy machine shows it): wait for the load
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=heat.element_handle(), timeout=30_000)
    assert heat.evaluate("img => img.naturalWidth") == SIZE  # the PNG at the model's size
    shot = tmp_path / "anomaly.png"
    page.screenshot(path=str(shot), full_page=True)
    assert Image.open(shot).size[0] == 1280


def test_a_bad_upload_shows_an_error_in_the_page(served, page, tmp_path):
    url, _, _ = served
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png at all")
    page.goto(url)
    page.get_by_role("tab", name="Anomaly").click()
    page.locator("#anomaly-files input[type=file]").set_input_files(str(bad))
    page.locator("#anomaly-files").get_by_text("broken").wait_for()
    page.locator("#score-btn").click()
    page.get_by_text("no usable image among the uploads").first.wait_for(timeout=30_000)
    page.screenshot(path=str(tmp_path / "error.png"))
