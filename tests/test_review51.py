"""Review of the few-large-images layout rule (2026-12-06): which layout `vaekit train` decides."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image


class _Decided(Exception):
    pass


def _layout_of(monkeypatch, tmp_path, folder, **model):
    """The layout `vaekit.training.job.train` hands to fit (which is stopped there: nothing trains)."""
    from vaekit.config import ModelConfig, TrainConfig
    from vaekit.training import job

    seen = {}

    def fake_fit(data, out_dir, model_cfg, *a, **kw):
        seen["cfg"] = model_cfg
        raise _Decided

    monkeypatch.setattr(job, "fit", fake_fit)
    with pytest.raises(_Decided):
        job.train(folder, tmp_path / "run", ModelConfig(**model), TrainConfig(epochs=1), workers=0)
    return seen["cfg"].layout


def _rings(folder, n: int, side: int, seed: int = 0):
    """n aligned grey parts (a ring in the centre over noise) of side px."""
    rng = np.random.default_rng(seed)
    folder.mkdir()
    yy, xx = np.mgrid[0:side, 0:side] / (side - 1)
    ring = ((np.hypot(yy - 0.5, xx - 0.5) - 0.3) ** 2 < 0.003) * 160.0
    for i in range(n):
        img = np.clip(rng.normal(40, 10, (side, side)) + ring, 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"{i:02d}.png")


def test_small_aligned_images_read_at_a_larger_given_size_keep_the_vector(monkeypatch, tmp_path):
    """40 aligned parts of 32 px are "images of 64 px or less", judged as before (docs/detection.md,
    "Few large images"), also when `--image-size 128` (or the web app's size slider) enlarges them:
    the rule is about the images' own size, as `--image-size auto` probes it."""
    _rings(tmp_path / "parts", 40, 32)
    assert _layout_of(monkeypatch, tmp_path, tmp_path / "parts") == "vector"
    assert _layout_of(monkeypatch, tmp_path, tmp_path / "parts", image_size=128) == "vector"


def test_few_large_aligned_images_get_the_grid_also_at_a_given_size(monkeypatch, tmp_path):
    """The other side of the rule, through the same two paths: 40 parts of 96 px get the grid."""
    _rings(tmp_path / "parts", 40, 96)
    assert _layout_of(monkeypatch, tmp_path, tmp_path / "parts") == "grid"
    assert _layout_of(monkeypatch, tmp_path, tmp_path / "parts", image_size=80) == "grid"


def test_unreadable_files_do_not_count_as_images_for_the_rule(monkeypatch, tmp_path):
    """195 aligned parts of 96 px and 10 damaged files: 195 images train, cross-fitted (fewer than
    CROSSFIT_BELOW), so they are "fewer than 200 images larger than 64 px" and get the grid, as the
    same folder does with the damaged files gone and as a given --image-size decides it."""
    from vaekit.training.splits import CROSSFIT_BELOW

    _rings(tmp_path / "parts", 195, 96)
    for i in range(10):
        (tmp_path / "parts" / f"bad{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    assert 195 < CROSSFIT_BELOW <= 205
    assert _layout_of(monkeypatch, tmp_path, tmp_path / "parts", image_size=96) == "grid"
    assert _layout_of(monkeypatch, tmp_path, tmp_path / "parts") == "grid"
