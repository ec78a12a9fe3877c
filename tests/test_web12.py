"""The web app's Compress and Train tabs, as a helper's attack of 2026-12-07 found them: an image
uploaded twice, the files a training skipped, and a WebP comparison at another file size."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import built_once
from vaekit_demo import compress_tab, handlers, training

SIZE = 16


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return built_once.digits(tmp_path_factory, tmp_path_factory.mktemp("digits"))


@pytest.fixture(scope="module")
def model(data, tmp_path_factory):
    import vaekit

    return vaekit.load(built_once.digits_run(tmp_path_factory, data, tmp_path_factory.mktemp("runs") / "tiny"))


def test_compress_shows_an_image_uploaded_twice_twice_from_its_one_stored_code(model, data, tmp_path):
    # Gradio stores identical uploads at one server path; the code file holds each file once, and
    # the reconstructions were one row short of the inputs ("images differ in shape")
    a, b = sorted((data / "test" / "normal").glob("*.png"))[:2]
    r = handlers.compress(model, [a, b, a], tmp_path)
    assert r.names == [a.name, b.name, a.name] and len(r.pairs) == 3 and r.report.count == 2
    np.testing.assert_array_equal(r.pairs[0], r.pairs[2])
    assert r.psnr[0] == r.psnr[2] and r.psnr[0] != r.psnr[1]
    alone = handlers.compress(model, [a, b], tmp_path)  # the same rows as without the repeat
    np.testing.assert_array_equal(np.stack(alone.pairs), np.stack(r.pairs[:2]))


def _vkc(vkc_bytes: int, webp_bytes: int) -> SimpleNamespace:
    return SimpleNamespace(bytes=vkc_bytes, psnr=30.0, webp=SimpleNamespace(bytes=webp_bytes, psnr=28.0))


def test_the_webp_comparison_names_the_sizes_where_they_differ():
    assert compress_tab._gain(_vkc(100, 104)) == "+2.00 dB for the .vkc"  # within a tenth: the same size
    assert compress_tab._gain(_vkc(2137, 1840)) == "+2.00 dB for the .vkc, the .vkc 1.16× WebP's bytes"
    assert compress_tab._gain(_vkc(58, 92)).endswith("the .vkc 0.63× WebP's bytes")


@pytest.mark.slow
def test_the_train_tab_names_the_files_training_skipped(data, tmp_path):
    folder = tmp_path / "imgs"
    shutil.copytree(data / "train", folder)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    events = list(training.train_events(folder, tmp_path / "run", SIZE, 3, 1, threading.Event()))
    done = events[-1]
    assert done.phase == "done" and [p.name for p, _ in done.metrics["skipped"]] == ["broken.png"]
    ctx = SimpleNamespace(public=lambda p: Path(p).name)
    said = training.message(done, [], tmp_path / "run", folder, ctx)
    assert said.startswith("**Done**") and "Skipped 1 unreadable file(s): `broken.png`: " in said
