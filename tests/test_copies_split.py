"""Exact copies are kept in one split (vaekit/training/splits.py plan_splits `groups`): a copy held out
for the threshold while its twin trained was an image the model knew, so the threshold came out
too low (100 copies of one part promised at most 9.1% and flagged 88% of new parts)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from vaekit.training.coverage import scan
from vaekit.training.splits import plan_splits


@pytest.mark.parametrize("n, one_fold", [(30, False), (30, True), (400, False)])
def test_copies_land_in_one_split_and_without_copies_nothing_changes(n, one_fold):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, 1, 4, 4), dtype=np.uint8)
    plain = plan_splits(n, 0.1, 0.1, 3, one_fold=one_fold)
    alike = plan_splits(n, 0.1, 0.1, 3, one_fold=one_fold, groups=scan(x)[0])  # no copies: the same splits
    for a, b in zip([plain.train, plain.val, plain.cal, *plain.folds], [alike.train, alike.val, alike.cal, *alike.folds]):
        np.testing.assert_array_equal(a, b)
    x[n // 2 :] = x[0]  # half the folder is one part, photographed again and again
    groups = scan(x)[0]
    s = plan_splits(n, 0.1, 0.1, 3, one_fold=one_fold, groups=groups)
    parts = [s.train, s.val, s.cal] if not s.folds else s.folds
    assert sorted(np.concatenate(parts).tolist()) == list(range(n))  # every image in exactly one split or fold
    for part in parts:  # no group straddles two of them
        for other in parts:
            if other is not part:
                assert not set(groups[part]) & set(groups[other])
    for part in parts:  # a threshold counts each distinct image once
        once = part[s.distinct(part)]
        assert sorted(groups[once].tolist()) == sorted(set(groups[part].tolist()))
    np.testing.assert_array_equal(plain.distinct(plain.cal), np.arange(len(plain.cal)))  # no copies: all of them


def test_scan_numbers_each_distinct_image_in_order_of_first_appearance():
    x = np.zeros((5, 1, 2, 2), np.uint8)
    x[1], x[3] = 7, 9
    x[4] = x[1]
    groups, brightest, _ = scan(x)
    assert groups.tolist() == [0, 1, 0, 2, 1] and brightest == 9


def test_a_run_records_its_copies_and_the_plan_says_they_stay_together(tmp_path, monkeypatch):
    """... and a run begun before (its config.json counts no exact_copies) resumes on the splits it
    began with, planned without the copies' groups."""
    from vaekit.config import ModelConfig, TrainConfig
    from vaekit.train import train
    from vaekit.training import loop

    rng = np.random.default_rng(4)
    (tmp_path / "images").mkdir()
    for i in range(16):
        a = rng.integers(0, 256, (16, 16), dtype=np.uint8)
        Image.fromarray(a).save(tmp_path / "images" / f"p{i:02d}.png")
        if i < 3:
            Image.fromarray(a).save(tmp_path / "images" / f"p{i:02d}_again.png")
    plans, folds, grouped, run_splits = [], [], [], loop.run_splits
    monkeypatch.setattr(loop, "run_splits", lambda *a: grouped.append(a[-1] is not None) or run_splits(*a))

    def fit(epochs, resume=False):
        train(tmp_path / "images", tmp_path / "run", ModelConfig(base_channels=4, layout="vector"),
              TrainConfig(epochs=epochs, device="cpu"),
              cache_dir=tmp_path / "cache", resume=resume, resume_epochs=epochs if resume else None,
              progress=lambda d, t, **m: plans.append(m) if m.get("phase") == "plan" else
              folds.append((d, t)) if m.get("phase") == "crossfit" else None)

    fit(1)
    config = tmp_path / "run" / "config.json"
    cfg = json.loads(config.read_text())
    assert cfg["data"]["exact_copies"] == 3 and cfg["data"]["images"] == 19 and grouped == [True]
    assert cfg["anomaly"]["n"] == 16 and cfg["anomaly"]["source"] == "cross-fitted"  # each distinct image once
    assert folds == [(1, 4), (2, 4), (3, 4), (4, 4)]  # the 4 fold models the plan names, not the run's own
    (note,) = [n for n in plans[0]["notes"] if "exact copies" in n]
    assert note.startswith("3 of 19 images are exact copies of another (as the model sees them, at 16 px): each is "
                           "kept in its twin's split, so none is held out for the threshold while its twin trains")
    fit(2, resume=True)
    del cfg["data"]["exact_copies"]
    config.write_text(json.dumps(cfg))
    fit(3, resume=True)
    assert grouped == [True, True, False]
    (note,) = [n for n in plans[-1]["notes"] if "exact copies" in n]
    assert "a copy held out for the threshold while its twin trains is an image the model knows" in note
