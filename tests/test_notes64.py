"""Small things a new user met (2026-12-07 audit): what printing a model's info shows."""

from __future__ import annotations

import re
from pathlib import Path

from vaekit.inference.info import ModelInfo


def test_a_models_info_prints_in_a_few_lines_not_its_statistics():
    big = {"profile": {"r_map/9": {"mean": [0.25] * 50_000}}, "codes": "QUJD" * 20_000}
    info = ModelInfo(64, 1, 8, "gaussian", "abc", "torch", Path("run"), threshold=1.5, score="atypicality",
                     val_scores=[0.1] * 5000, calibration=big)
    text = repr(info)
    assert len(text) < 2000, len(text)
    assert "threshold=1.5" in text and "score='atypicality'" in text and "fingerprint='abc'" in text
    assert info.calibration is big and len(info.val_scores) == 5000  # still there, only not printed


def _grey_images(folder: Path, n: int, size: int) -> Path:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(size)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def test_encode_says_when_its_size_ratio_compares_other_pixels(tmp_path):
    """A folder of large photos coded at the model's size read "800× smaller": the ratio held the
    resizing, not the coding. The line says when the file holds other pixels than the sources."""
    from typer.testing import CliRunner

    from export_support import random_run
    from vaekit_cli.main import app

    run = random_run(tmp_path / "run", image_size=16, channels=1, latent_dim=4, base_channels=4, likelihood="logistic")
    same, larger = _grey_images(tmp_path / "same", 4, 16), _grey_images(tmp_path / "larger", 4, 48)
    note = "the file holds the images at the model's 16×16 px"
    for out, extra in (("c.codes", []), ("c.vkc", ["--quality", "4", "--fit", str(same)])):
        for src, told in ((same, False), (larger, True)):
            r = CliRunner().invoke(app, ["encode", str(run), str(src), "-o", str(tmp_path / f"{src.name}{out}"), *extra])
            assert r.exit_code == 0, r.output
            text = re.sub(r"[\s│]+", " ", r.output)  # the table's cell, wrapped at the console's width, in one line
            assert (note in text) is told, (out, src.name, r.output)
