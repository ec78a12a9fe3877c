"""The frame check (vaekit/inference/frame.py): a surface model flags frames that are wrong
everywhere, a blank, black or out-of-focus frame, which its defect readers can score as normal."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

import vaekit
from vaekit.errors import DamagedFile
from vaekit.inference import frame

from surface_support import train_surface


def _stripes(n: int, seed: int, size: int = 48) -> np.ndarray:
    """Noisy stripes, a surface: uint8 (n, 1, size, size)."""
    rng = np.random.default_rng(seed)
    xx = np.mgrid[:size, :size][1]
    out = [128 + 60 * np.sin(xx / 2.0 + rng.uniform(0, 6.3)) + rng.normal(0, 12, (size, size)) for _ in range(n)]
    return np.clip(out, 0, 255).astype(np.uint8)[:, None]


def _save(folder: Path, images: np.ndarray, prefix: str = "s") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, x in enumerate(images):
        Image.fromarray(x[0]).save(folder / f"{prefix}_{i:03d}.png")
    return folder


def _wrong_frames(normal: np.ndarray) -> dict[str, np.ndarray]:
    x = normal[0, 0]
    blurred = np.asarray(Image.fromarray(x).filter(ImageFilter.GaussianBlur(3)))
    return {"black": np.zeros_like(x), "grey": np.full_like(x, 128), "white": np.full_like(x, 255),
            "blurred": blurred, "noise": np.random.default_rng(5).integers(0, 256, x.shape).astype(np.uint8)}


@pytest.fixture(scope="module")
def surface(tmp_path_factory):
    root = tmp_path_factory.mktemp("frame")
    train_surface(_save(root / "train", _stripes(24, 0)), root / "run")
    return root


def test_the_run_stores_the_sharpness_range_of_its_images(surface):
    cal = json.loads((surface / "run" / "config.json").read_text())["anomaly"]["calibration"]
    lo, hi = cal["frame"]["sharpness"]
    want = frame.Range()
    want.add(_stripes(24, 0), variants=True)  # the very training images (held-out ones included), as a camera could take them
    assert (lo, hi) == pytest.approx((want.lo, want.hi))
    s = frame.sharpness(_stripes(24, 0))
    assert lo < s.min() and hi > s.max()
    assert cal["frame"]["factor"] == frame.FACTOR and cal["frame"]["margin"] == frame.MARGIN


def test_frames_wrong_everywhere_score_one_and_new_normal_images_are_left_alone(surface):
    m = vaekit.load(surface / "run")
    normal = _stripes(10, 7)
    frames = _wrong_frames(normal)
    s = m.score(np.stack(list(frames.values()))[:, None])
    assert np.all(s.score == 1.0) and np.all(s.pixel_map == 1.0)
    assert np.all(s.score > m.info.threshold)
    plain = m.score(normal)
    assert np.all(plain.score < 1.0)
    unchecked = frame.checked(None, normal, plain.score, plain.pixel_map)  # no range: as the reader scored
    np.testing.assert_array_equal(unchecked[0], plain.score)
    # the reader alone, before the check, missed some of them: what the check is for
    reader, _ = m._read(np.stack(list(frames.values()))[:, None])
    assert np.any(reader < m.info.threshold), reader


def test_a_model_from_before_the_check_scores_as_it_did(surface, tmp_path):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(surface / "run", old)
    cfg = json.loads((old / "config.json").read_text())
    del cfg["anomaly"]["calibration"]["frame"]
    (old / "config.json").write_text(json.dumps(cfg))
    x = np.full((1, 1, 48, 48), 128, np.uint8)
    before, now = vaekit.load(old).score(x), vaekit.load(surface / "run").score(x)
    assert before.score[0] < 1.0 and now.score[0] == 1.0


def test_the_onnx_engine_checks_frames_as_the_run_does(surface, tmp_path):
    from typer.testing import CliRunner

    from vaekit_cli.main import app

    r = CliRunner().invoke(app, ["export", str(surface / "run"), "-o", str(tmp_path / "s.onnx")])
    assert r.exit_code == 0, r.output
    frames = np.stack(list(_wrong_frames(_stripes(2, 3)).values()))[:, None]
    x = np.concatenate([frames, _stripes(4, 9)])
    want, got = vaekit.load(surface / "run").score(x), vaekit.load(tmp_path / "s.onnx").score(x)
    np.testing.assert_allclose(got.score, want.score, atol=1e-5)
    assert np.all(got.score[: len(frames)] == 1.0) and np.all(got.score[len(frames):] < 1.0)


def test_anomaly_score_flags_a_blank_frame_in_a_folder(surface, tmp_path):
    from typer.testing import CliRunner

    from vaekit_cli.main import app

    folder = _save(tmp_path / "in", _stripes(3, 11))
    Image.fromarray(np.zeros((48, 48), np.uint8)).save(folder / "blank.png")
    out = tmp_path / "scores.csv"
    r = CliRunner().invoke(app, ["anomaly-score", str(surface / "run"), str(folder), "-o", str(out)])
    assert r.exit_code == 0, r.output
    import csv

    rows = {Path(row["path"]).name: row for row in csv.DictReader(out.open())}
    assert rows["blank.png"]["anomalous"] in ("1", "True", "true") and float(rows["blank.png"]["score"]) == 1.0
    assert "exactly 1 is the frame check's" in " ".join(r.output.split())  # and the output says what 1 means
    os.remove(folder / "blank.png")
    r = CliRunner().invoke(app, ["anomaly-score", str(surface / "run"), str(folder)])
    assert r.exit_code == 0 and "frame check" not in r.output


@pytest.mark.parametrize("section", [{"sharpness": [5.0, 1.0], "factor": 2.0, "margin": 1.0},
                                     {"sharpness": [1.0, 5.0], "factor": -2.0, "margin": 1.0},
                                     {"sharpness": [1.0, float("nan")], "factor": 2.0, "margin": 1.0},
                                     "wide"])
def test_a_damaged_range_is_refused_in_one_line(surface, tmp_path, section):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(surface / "run", bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["anomaly"]["calibration"]["frame"] = section
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(DamagedFile, match="calibration is damaged .frame"):
        vaekit.load(bad).score(_stripes(1, 2))


def test_nearly_flat_training_tiles_keep_sensor_noise_from_raising_an_alarm():
    rng = np.random.default_rng(0)
    flat = lambda sd: np.clip(100 + rng.normal(0, sd, (4, 1, 32, 32)), 0, 255).astype(np.uint8)  # noqa: E731
    found = frame.Range()
    found.add(flat(0.6), variants=True)  # a plain background: sharpness under a grey level, as training fits it
    stats = found.stats()
    assert stats["sharpness"][0] < 0.5
    assert not frame.outside(flat(0.0), stats).any()  # flatter still: a camera's median filter gets near it
    assert frame.outside(flat(30.0), stats).all()  # a textured frame under a model of flat ones
    assert frame.Range().stats() is None


def _smooth(n: int, seed: int, size: int = 64) -> np.ndarray:
    """A smooth surface (slow waves, little noise), as a polished part or the moon's face."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = [120 + 40 * np.sin(xx / 9.0 + rng.uniform(0, 6.3)) * np.cos(yy / 13.0 + rng.uniform(0, 6.3))
           + rng.normal(0, 0.4, (size, size)) for _ in range(n)]
    return np.clip(out, 0, 255).astype(np.uint8)[:, None]


def test_what_a_camera_makes_of_a_normal_surface_is_not_a_wrong_frame():
    """Sharpness is measured at the finest scale, where a camera's settings act most: on a smooth
    surface sensor noise of sd 3 tripled it and flagged normal images. The range holds what a
    camera could make of the training tiles; a blank or far blurred frame still lies outside."""
    train = _smooth(20, 0)
    plain, camera = frame.Range(), frame.Range()
    plain.add(train)
    camera.add(train, variants=True)
    new = _smooth(10, 1).astype(np.float32)
    noisy = np.clip(new + np.random.default_rng(2).normal(0, 3, new.shape), 0, 255).astype(np.uint8)
    darker = np.clip(new * 0.8 - 10, 0, 255).astype(np.uint8)
    assert frame.outside(noisy, plain.stats()).all()  # the training tiles' own range: every one flagged
    assert not frame.outside(noisy, camera.stats()).any() and not frame.outside(darker, camera.stats()).any()
    wrong = np.stack([np.zeros((1, 64, 64), np.uint8), np.full((1, 64, 64), 200, np.uint8),
                      np.random.default_rng(3).integers(0, 256, (1, 64, 64)).astype(np.uint8)])
    assert frame.outside(wrong, camera.stats()).all()



def test_a_file_not_square_among_square_ones_is_in_the_range_as_it_is_scored(tmp_path):
    """Too few files not square for the surface to learn them whole (vaekit.training.wide): the
    range was of their centre squares, yet they are scored whole, so a normal training photo
    whose ends were a little softer scored 1 (above the threshold it was held out for)."""
    folder = _save(tmp_path / "train", _stripes(24, 0))
    rng = np.random.default_rng(50)
    for i in range(2):  # 3:1 photos of the surface, their outer thirds a little out of focus
        xx = np.mgrid[:48, :144][1]
        x = np.clip(128 + 60 * np.sin(xx / 2.0 + rng.uniform(0, 6.3)) + rng.normal(0, 12, (48, 144)), 0, 255).astype(np.uint8)
        soft = np.asarray(Image.fromarray(x).filter(ImageFilter.GaussianBlur(1.2)))
        x[:, :48], x[:, 96:] = soft[:, :48], soft[:, 96:]
        Image.fromarray(x).save(folder / f"wide_{i}.png")
    run = train_surface(folder, tmp_path / "run")
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["data"]["whole_squares"] == 0  # learned from centre squares
    s = vaekit.load(run).score([folder / "wide_0.png", folder / "wide_1.png"])
    assert np.all(s.score < 1.0), s.score


def test_a_threshold_from_new_normal_images_holds_them_in_the_range(surface, tmp_path):
    """`vaekit threshold --normal` with new normal images a little softer than the training ones:
    the check scored a fifth of them 1, and the threshold came out above 1, where nothing, a
    blank frame or a defect, is flagged any more. The range now grows to hold them."""
    import shutil

    from vaekit import anomaly

    run = tmp_path / "run"
    shutil.copytree(surface / "run", run)
    new = [np.asarray(Image.fromarray(x[0]).filter(ImageFilter.GaussianBlur(1.0 if i < 32 else 1.6)))
           for i, x in enumerate(_stripes(40, 21))]
    folder = _save(tmp_path / "new", np.stack(new)[:, None])
    section = anomaly.threshold_from_normal(run, folder)
    assert section["threshold"] < 1.0
    lo = section["calibration"]["frame"]["sharpness"][0]
    assert lo == pytest.approx(frame.sharpness(np.stack(new)[:, None]).min())
    m = vaekit.load(run)
    assert m.info.calibration["frame"]["sharpness"][0] == lo
    assert m.score(np.zeros((1, 1, 48, 48), np.uint8)).score[0] > m.info.threshold  # blank frames still flagged


def test_shares_scored_under_another_frame_section_are_not_merged(surface, tmp_path):
    """docs/detection.md invites raising the factor in config.json: a share (or a --resume) scored
    before that edit was merged with rows scored after it, a blurred frame flagged in one half only."""
    import shutil

    from typer.testing import CliRunner

    from vaekit_cli.main import app

    run = tmp_path / "run"
    shutil.copytree(surface / "run", run)
    blurred = np.stack([np.asarray(Image.fromarray(x[0]).filter(ImageFilter.GaussianBlur(2))) for x in _stripes(4, 9)])
    folder = _save(tmp_path / "in", blurred[:, None], "blur")
    out = tmp_path / "scores.csv"
    args = ["anomaly-score", str(run), str(folder), "-o", str(out), "--batch-size", "1", "--shard"]
    r = CliRunner().invoke(app, [*args, "0/2"])
    assert r.exit_code == 0, r.output
    cfg = json.loads((run / "config.json").read_text())
    cfg["anomaly"]["calibration"]["frame"]["factor"] = 4.0
    (run / "config.json").write_text(json.dumps(cfg))
    r = CliRunner().invoke(app, [*args, "1/2"])
    assert r.exit_code != 0 and "other settings (frame" in r.output, r.output
    assert not out.exists()


def test_a_resume_after_the_atypicality_statistics_changed_is_refused(surface, tmp_path):
    """The journal pinned the weights, the threshold and the frame check, not the atypicality's
    statistics: a config.json whose z-score means were edited between a stop and its --resume (same
    weights, same threshold) resumed with exit 0, one file of rows scored two ways."""
    import shutil

    from typer.testing import CliRunner

    from vaekit_cli.main import app

    run = tmp_path / "run"
    shutil.copytree(surface / "run", run)
    folder = _save(tmp_path / "in", _stripes(4, 9))
    out = tmp_path / "scores.csv"
    args = ["anomaly-score", str(run), str(folder), "-o", str(out), "--batch-size", "1", "--score", "atypicality",
            "--threshold", "20", "--shard"]
    r = CliRunner().invoke(app, [*args, "0/2"])
    assert r.exit_code == 0, r.output
    cfg = json.loads((run / "config.json").read_text())
    cfg["anomaly"]["calibration"]["tests"]["mean"][0] += 3.0
    (run / "config.json").write_text(json.dumps(cfg))
    r = CliRunner().invoke(app, [*args, "1/2"])
    assert r.exit_code == 2 and "other settings (calibration" in r.output, r.output
    assert not out.exists()


def test_a_bright_surface_washed_out_by_a_variant_keeps_its_blank_frames_flagged():
    """Gain 1.4 leaves a bright surface (white paper, mean 215) all 255, black level -20 a dark one
    all 0: a flat variant took the range's low end to 0 and switched the low side off, so a blank
    frame of the surface's own grey passed. A variant that washes a tile out is not counted; one
    that leaves part of it (a dark sky under black level -20) still is."""
    rng = np.random.default_rng(0)
    surface = lambda mean, sd: np.clip(mean + rng.normal(0, sd, (8, 1, 32, 32)), 0, 255).astype(np.uint8)  # noqa: E731
    for train in (surface(215, 6), surface(8, 3)):
        found = frame.Range()
        found.add(train, variants=True)
        blank = np.stack([np.full((1, 32, 32), v, np.uint8) for v in (0, 128, 255, int(train.mean()))])
        assert found.lo > frame.MARGIN and frame.outside(blank, found.stats()).all()
    dark = surface(12, 8)  # black level -20 leaves about a tenth of it off 0: counted
    with_dark, shifted = frame.Range(), np.clip(dark.astype(np.int16) - 20, 0, 255).astype(np.uint8)
    with_dark.add(dark, variants=True)
    assert with_dark.lo <= frame.sharpness(shifted).min() + 1e-9


def test_training_reports_the_range_fit_as_a_phase_of_its_own(tmp_path):
    """The range is fitted over every image and its camera variants after the readers: minutes on
    a large colour folder, which showed as a hang. It is a progress phase that counts images."""
    calls = []
    train_surface(_save(tmp_path / "train", _stripes(12, 4)), tmp_path / "run",
                  progress=lambda done, total, phase="", **m: calls.append((phase, done, total)))
    frame_calls = [(d, t) for p, d, t in calls if p == "frame"]
    assert frame_calls and frame_calls[-1] == (12, 12)
    assert all(a[0] <= b[0] for a, b in zip(frame_calls, frame_calls[1:]))  # counts up
    assert [p for p, _, _ in calls].index("frame") > [p for p, _, _ in calls].index("reader")


def test_the_web_apps_detect_summary_says_what_a_score_of_one_means(surface, tmp_path):
    """The Detect tab (vaekit_demo) scores through the same library: a blank upload scores 1, and
    its summary says, as `anomaly-score` does, what 1 means; a summary without one says nothing."""
    from vaekit_demo import handlers
    from vaekit_demo.tabs import anomaly_summary

    m = vaekit.load(surface / "run")
    folder = _save(tmp_path / "up", _stripes(2, 13))
    Image.fromarray(np.zeros((48, 48), np.uint8)).save(folder / "blank.png")
    files = sorted(str(p) for p in folder.glob("*.png"))
    r = handlers.anomaly(m, files, m.info.threshold, tmp_path / "out")
    assert dict(zip(r.names, r.scores))["blank.png"] == 1.0
    assert "exactly 1 is the frame check's" in anomaly_summary(m, r)
    r = handlers.anomaly(m, files[1:], m.info.threshold, tmp_path / "out2")  # the normal ones alone
    assert "blank.png" not in r.names and "frame check" not in anomaly_summary(m, r)
