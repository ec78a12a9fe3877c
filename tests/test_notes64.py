"""Small things a new user met (2026-12-07 audit): what printing a model's info shows."""

from __future__ import annotations

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
