"""Training end to end on a tiny generated folder: run directory, exact resume, errors."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from vaekit.training import checkpoint
from vaekit.training import rundir
from vaekit.config import ModelConfig, TrainConfig
from vaekit.errors import BadInput
from vaekit.training.recipe import learning_rate
from vaekit.train import train
from vaekit.training.loop import TrainingError
from vaekit.training.recipe import kl_weight


def make_blobs(folder, n=24, size=20, seed=0):
    """Grey discs at random places: a tiny, learnable image set."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        cy, cx, r = rng.uniform(6, size - 6, 2).tolist() + [rng.uniform(3, 5)]
        img = np.where((yy - cy) ** 2 + (xx - cx) ** 2 < r * r, 220, 30).astype(np.uint8)
        Image.fromarray(img).save(folder / f"blob_{i:03d}.png")
    return folder


MODEL = ModelConfig(image_size=16, channels=1, latent_dim=4, base_channels=4)


def tcfg(**kw):
    return TrainConfig(**{"epochs": 2, "batch_size": 8, "lr": 3e-3, "seed": 0, "device": "cpu", **kw})


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    return make_blobs(tmp_path_factory.mktemp("blobs"))


@pytest.fixture(scope="module")
def _one_epoch(blobs, tmp_path_factory):
    """train(blobs, run, MODEL, tcfg(epochs=1)), trained once for the module: read, never changed."""
    run = tmp_path_factory.mktemp("one-epoch") / "run"
    train(blobs, run, MODEL, tcfg(epochs=1))
    return run


@pytest.fixture()
def one_epoch(_one_epoch):
    """A fresh copy of that run, for a test to put at `dest`: the files its own training would
    have written (the training is seeded; the data folder is the same), its run id aside."""
    return lambda dest: shutil.copytree(_one_epoch, dest, symlinks=True)


def test_run_directory_is_complete_and_self_describing(blobs, tmp_path):
    result, data = train(blobs, tmp_path / "run", MODEL, tcfg(epochs=3))
    run = tmp_path / "run"
    for name in ("config.json", "model.safetensors", "metrics.jsonl", "preview.png", "checkpoint/resume.json"):
        assert (run / name).is_file(), name
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"]["image_size"] == 16 and cfg["model"]["channels"] == 1
    assert cfg["train"]["epochs"] == 3
    # few images (< 200): the run's model trains on 4 of 5 folds and, with 4 fold models, gives
    # each image an out-of-sample score for the statistics and the threshold
    assert cfg["data"]["images"] == 24 and cfg["data"]["val_images"] == 0 and cfg["data"]["train_images"] == 19
    assert cfg["data"]["calibration_images"] == 0 and cfg["data"]["crossfit_folds"] == 5
    assert cfg["anomaly"]["source"] == "cross-fitted" and cfg["anomaly"]["n"] == 24
    # the code test measures from the codes of the images the run's model trained on
    assert cfg["anomaly"]["calibration"]["codes"]["shape"] == [19, 4]
    assert cfg["anomaly"]["calibration"]["combine"] == "floored"  # from 2 sd below; image-too-simple from its mean
    assert cfg["vaekit_version"] and cfg["torch_version"] == torch.__version__
    assert len(cfg["data"]["fingerprint"]) >= 16
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert math.isclose(r["train_loss"], r["train_recon"] + r["beta"] * r["train_kl"], rel_tol=1e-6)
        assert r["val_bits_per_dim"] == pytest.approx(r["val_loss"] / (16 * 16 * math.log(2)))
        assert r["train_bits_per_dim"] == pytest.approx((r["train_recon"] + r["train_kl"]) / (16 * 16 * math.log(2)))
    # best-on-validation weights are the ones kept (validation: the training images when cross-fitting)
    assert result.best_val == min(r["val_loss"] for r in rows)
    assert result.threshold == cfg["anomaly"]["threshold"]
    model, _ = rundir.load_model(run)
    assert cfg["fingerprint"] == rundir.fingerprint(model.state_dict())
    # the files are plain safetensors/JSON: nothing to unpickle
    assert set(load_file(run / "model.safetensors")) == set(model.state_dict())


def test_held_out_splits_when_cross_fitting_is_off(blobs, tmp_path, monkeypatch):
    # 10% validation (best epoch, score statistics), 10% calibration (threshold), the rest trains
    monkeypatch.chdir(blobs.parent)
    train(Path(blobs.name), tmp_path / "run", MODEL, tcfg(folds=0))  # a folder named relative to the cwd
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["data"]["root"] == str(blobs)  # stored absolute: valid from any directory
    assert cfg["data"]["val_images"] == 2 and cfg["data"]["train_images"] == 20 and cfg["data"]["calibration_images"] == 2
    assert cfg["anomaly"]["source"] == "calibration" and cfg["anomaly"]["n"] == 2


def test_without_a_validation_split_the_last_epoch_is_kept_and_nothing_is_validated(blobs, tmp_path, monkeypatch):
    # no images held out to validate on: no pass over the training images after each epoch (a
    # surface of few images trains an epoch per step); the last epoch's weights are the run's
    from vaekit.training import loop

    passes = []
    monkeypatch.setattr(loop, "deterministic_scores", lambda *a, **k: passes.append(1) or np.zeros((1, 3)))
    result, _ = train(blobs, tmp_path / "run", MODEL, tcfg(epochs=5, folds=0, val_fraction=0.0))
    assert not passes
    assert result.best_epoch == 5 and {r["val_estimator"] for r in result.history} == {"1 draw (training images)"}
    stored = load_file(str(tmp_path / "run" / "checkpoint" / "epoch-0004.safetensors"))
    weights = load_file(str(tmp_path / "run" / "model.safetensors"))
    assert all(torch.equal(weights[k], stored[f"model.{k}"]) for k in weights)


def test_training_reduces_the_loss(blobs, tmp_path):
    result, _ = train(blobs, tmp_path / "run", MODEL, tcfg(epochs=15, lr=1e-2, folds=0))
    losses = [r["train_loss"] for r in result.history]
    assert losses[-1] < 0.9 * losses[0]


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_same_seed_same_weights_and_resume_is_exact(blobs, tmp_path, schedule):
    train(blobs, tmp_path / "full", MODEL, tcfg(epochs=4, schedule=schedule, folds=0))
    train(blobs, tmp_path / "again", MODEL, tcfg(epochs=4, schedule=schedule, folds=0))
    if schedule == "constant":  # extending a finished run (2 epochs, then --epochs 4) is exact
        train(blobs, tmp_path / "parts", MODEL, tcfg(epochs=2, schedule=schedule, folds=0))
    else:  # the cosine schedule spans the planned total: a run stopped at epoch 2 of 4 resumes exactly

        def stop_after_two(done, total, phase="", **_):
            if phase == "epoch" and done == 2:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            train(blobs, tmp_path / "parts", MODEL, tcfg(epochs=4, schedule=schedule, folds=0), progress=stop_after_two)
    train(blobs, tmp_path / "parts", MODEL, tcfg(epochs=2, schedule=schedule, folds=0), resume=True, resume_epochs=4)
    full = load_file(tmp_path / "full" / "checkpoint" / "epoch-0003.safetensors")
    again = load_file(tmp_path / "again" / "checkpoint" / "epoch-0003.safetensors")
    parts = load_file(tmp_path / "parts" / "checkpoint" / "epoch-0003.safetensors")
    for k in full:
        if k.startswith(("model.", "optim.")):
            torch.testing.assert_close(full[k], again[k], rtol=0, atol=0)
            torch.testing.assert_close(full[k], parts[k], rtol=0, atol=0)
    a = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (tmp_path / "parts" / "metrics.jsonl").read_text().splitlines()]
    assert [r["train_loss"] for r in a] == [r["train_loss"] for r in b]


def test_a_run_from_before_the_spike_clip_resumes_without_it(tmp_path):
    # its checkpoints trained unclipped: a resume must take the same steps (config.json has no key)
    from dataclasses import asdict

    from vaekit.training.job import _resumed_configs

    stored = {"model": asdict(MODEL.with_fallbacks()), "train": {k: v for k, v in asdict(tcfg()).items() if k != "spike_clip"}}
    _, old = _resumed_configs(stored, tmp_path, {})
    assert old.spike_clip == 0.0
    _, new = _resumed_configs({**stored, "train": asdict(tcfg())}, tmp_path, {})
    assert new.spike_clip == TrainConfig().spike_clip == 4.0


def test_the_learning_rate_warms_up_then_decays_to_zero():
    cfg = TrainConfig(lr=1e-2)
    lrs = [learning_rate(cfg, step, 100) for step in range(101)]
    assert lrs[0] == pytest.approx(1e-2 / 3) and max(lrs) == pytest.approx(1e-2, rel=1e-3)
    assert lrs[3] > lrs[50] > lrs[99] > lrs[100] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:]))  # monotone after the warm-up
    assert learning_rate(TrainConfig(lr=1e-2, schedule="constant"), 77, 100) == 1e-2


def test_automatic_settings_follow_the_images(tmp_path):
    """A latent vector for aligned objects, a grid for surfaces; Bernoulli for near-binary images."""
    from vaekit.training.data import choose_model, image_statistics

    rng = np.random.default_rng(0)
    digits = np.zeros((64, 1, 16, 16), np.uint8)
    digits[:, :, 4:12, 7:9] = 255  # the same bar in the same place, black and white
    surface = rng.integers(0, 256, (64, 1, 16, 16), dtype=np.uint8)  # no position is special
    a = choose_model(ModelConfig(image_size=16), image_statistics(digits, np.arange(64)))
    b = choose_model(ModelConfig(image_size=16), image_statistics(surface, np.arange(64)))
    assert (a.layout, a.likelihood, a.latent_dim) == ("vector", "bernoulli", 16)
    assert (b.layout, b.likelihood, b.latent_dim) == ("grid", "gaussian", 8)
    given = choose_model(ModelConfig(image_size=16, layout="vector", likelihood="gaussian", latent_dim=3),
                         image_statistics(surface, np.arange(64)))
    assert (given.layout, given.likelihood, given.latent_dim) == ("vector", "gaussian", 3)


def test_a_dark_or_bright_folder_is_not_taken_for_black_and_white():
    """Bernoulli needs ink and paper: 80% of the pixels near black or white, and some of each. A
    dark photo is all near black (underexposed parts, fluorescence), and Bernoulli took it: MNIST
    zeros at 12% brightness reconstructed at 30.5 dB and scored 0.987 AUROC, with a Gaussian 37.0 dB
    and 0.999 (docs/model.md)."""
    from vaekit.config import ModelConfig
    from vaekit.training.data import choose_model, image_statistics

    rng = np.random.default_rng(1)
    ink = np.zeros((64, 1, 16, 16), np.uint8)
    ink[:, :, 4:12, 6:10] = 255
    ink[:, :, 4:12, 10] = rng.integers(0, 256, (64, 1, 8))  # a few mid greys at the stroke's edge
    dark = (rng.random((64, 1, 16, 16)) * 24).astype(np.uint8)  # every pixel below 0.1
    pick = lambda x: choose_model(ModelConfig(image_size=16), image_statistics(x, np.arange(64))).likelihood  # noqa: E731
    assert pick(ink) == "bernoulli" and pick(255 - ink) == "bernoulli"  # ink on paper, either way round
    assert pick(dark) == "gaussian" and pick(255 - dark) == "gaussian"  # was bernoulli: 100% "black or white"
    assert pick((ink * 0.1).astype(np.uint8)) == "gaussian"  # the strokes of an underexposed camera


@pytest.mark.parametrize("n", [6, 12, 40])
def test_a_few_images_of_a_surface_do_not_look_aligned_by_chance(n):
    """The mean of n noise images varies by ~1/n of their variance: 6 of them measured 0.2 raw,
    above the cut-off. Taken off, the statistic is ~0 for any n, and an object stays aligned."""
    from vaekit.training.data import LAYOUT_ALIGNED, choose_layout, image_statistics

    rng = np.random.default_rng(n)
    surface = rng.integers(0, 256, (n, 1, 32, 32), dtype=np.uint8)
    stats = image_statistics(surface, np.arange(n))
    assert abs(stats["aligned"]) < LAYOUT_ALIGNED / 2 and choose_layout(stats) == "grid"
    objects = np.clip(surface // 4 + np.pad(np.full((n, 1, 12, 12), 160), ((0, 0), (0, 0), (10, 10), (10, 10))), 0, 255)
    assert choose_layout(image_statistics(objects.astype(np.uint8), np.arange(n))) == "vector"


def test_image_statistics_memory_does_not_grow_with_the_images_sampled():
    """The automatic settings look at up to SAMPLE images: they were stacked as float32 (~8 bytes a
    sampled pixel, 4 GB for 512 grey images of 1024 px, 10 GB RGB) before any training. Summed one
    image at a time, the peak is one image's maps whatever the count, and the statistics the same."""
    import tracemalloc

    from vaekit.training.data import image_statistics

    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (64, 3, 128, 128), dtype=np.uint8)
    x[:, :, :20] = 0  # some black, some white: the binary shares count
    x[:, :, -10:] = 255
    peaks = {}
    for n in (8, 64):
        tracemalloc.start()
        stats = image_statistics(x[:n], np.arange(n))
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peaks[64] < 1.5 * peaks[8], peaks  # was 7.6x: the 64 images' float maps held at once
    g = x.astype(np.float32).mean(1) / 255.0  # the statistics as they were computed, all at once
    assert stats["variance"] == pytest.approx(float(g.var(0).mean()), rel=1e-5)
    assert stats["binary"] == pytest.approx(float((g < 0.1).mean() + (g > 0.9).mean()), rel=1e-9)
    assert stats["aligned"] == pytest.approx(float(g.mean(0).var()) / float(g.var(0).mean()) - 1 / 63, rel=1e-4, abs=1e-7)
    same = np.repeat(x[:1], 5, axis=0)  # identical images: exactly no spread, as before
    assert image_statistics(same, np.arange(5))["variance"] == 0.0


def test_a_large_surface_under_uneven_light_is_still_a_surface(tmp_path):
    """A fixed lamp darkens every image of a surface towards one side: its mean image is then a
    ramp, which the plain statistic takes for an aligned object. Large images are judged with
    the lighting taken off; a shape is not a quadratic surface and stays aligned; small images
    keep the plain statistic."""
    from PIL import Image

    from vaekit.training.data import LAYOUT_ALIGNED, choose_layout, image_statistics, probe_layout

    rng = np.random.default_rng(0)
    n, side = 40, 128
    yy, xx = np.mgrid[0:side, 0:side] / (side - 1)
    lamp = 1 - 0.5 * yy - 0.2 * (xx - 0.5) ** 2  # brighter at the top, darker at both sides
    surface = np.clip(rng.normal(150, 30, (n, 1, side, side)) * lamp, 0, 255).astype(np.uint8)
    stats = image_statistics(surface, np.arange(n))
    assert stats["aligned"] > 2 * LAYOUT_ALIGNED  # the plain statistic would say "aligned"
    assert abs(stats["aligned_unlit"]) < LAYOUT_ALIGNED / 2
    assert choose_layout(stats, side) == "grid" and choose_layout(stats) == "vector"
    ring = ((np.hypot(yy - 0.5, xx - 0.5) - 0.3) ** 2 < 0.003) * 120.0  # a part in a fixed place
    parts = np.clip(surface * 0.3 + ring, 0, 255).astype(np.uint8)
    many = image_statistics(np.concatenate([parts] * 5), np.arange(5 * n))  # 200 images: the statistic decides
    assert many["images"] == 200 and choose_layout(many, side) == "vector"
    for i, img in enumerate(surface[:, 0]):  # through the files, as `vaekit train` probes them
        Image.fromarray(img).save(tmp_path / f"{i:02d}.png")
    assert probe_layout(sorted(tmp_path.glob("*.png")), 1) == "grid"


def test_a_single_large_image_gets_the_grid_and_identical_images_the_vector():
    """One image has no spread across images, and the rule for identical images gave a single
    256 px surface a 64 px vector model, where fewer than 200 large images get the grid."""
    from vaekit.training.data import choose_layout, image_statistics

    one = np.random.default_rng(0).integers(0, 256, (1, 1, 256, 256), dtype=np.uint8)
    assert choose_layout(image_statistics(one, np.arange(1)), 256) == "grid"
    same = np.repeat(one, 5, axis=0)
    assert choose_layout(image_statistics(same, np.arange(5)), 256) == "vector"
    small = one[:, :, :32, :32]
    assert choose_layout(image_statistics(small, np.arange(1)), 32) == "vector"


def test_few_large_images_get_the_grid_even_when_aligned(tmp_path):
    """Fewer than 200 images above 64 px get the grid and its defect reader whatever their mean
    image (a vector model of them shrunk to 64 px lost on parts with small defects and on product
    photos); at 64 px and below, or with 200 or more, aligned parts keep the vector."""
    from PIL import Image

    from vaekit.training.data import AUTO_MAX_SIZE, LAYOUT_ALIGNED, choose_layout, image_statistics, probe_layout

    rng = np.random.default_rng(1)
    n, side = 40, 128
    yy, xx = np.mgrid[0:side, 0:side] / (side - 1)
    ring = ((np.hypot(yy - 0.5, xx - 0.5) - 0.3) ** 2 < 0.003) * 160.0
    parts = np.clip(rng.normal(40, 10, (n, 1, side, side)) + ring, 0, 255).astype(np.uint8)
    stats = image_statistics(parts, np.arange(n))
    assert stats["images"] == n and stats["aligned_unlit"] > 2 * LAYOUT_ALIGNED
    assert choose_layout(stats, side) == "grid"
    assert choose_layout(stats, AUTO_MAX_SIZE) == choose_layout(stats) == "vector"
    assert choose_layout({**stats, "images": 200}, side) == "vector"
    for i, img in enumerate(parts[:, 0]):  # through the files, as `vaekit train` probes them
        Image.fromarray(img).save(tmp_path / f"{i:02d}.png")
    assert probe_layout(sorted(tmp_path.glob("*.png")), 1) == "grid"


def test_an_existing_run_is_never_silently_replaced(blobs, tmp_path, one_epoch):
    one_epoch(tmp_path / "run")
    before = (tmp_path / "run" / "model.safetensors").read_bytes()
    with pytest.raises(FileExistsError, match="--resume"):
        train(blobs, tmp_path / "run", MODEL, tcfg(epochs=1))
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == before
    train(blobs, tmp_path / "run", MODEL, tcfg(epochs=1, seed=5), overwrite=True)
    assert (tmp_path / "run" / "model.safetensors").read_bytes() != before


def test_resume_refuses_changed_data_and_missing_state(blobs, tmp_path):
    with pytest.raises(rundir.RunError):
        train(blobs, tmp_path / "nothing", MODEL, tcfg(), resume=True)
    other = make_blobs(tmp_path / "other", n=10, seed=3)
    train(other, tmp_path / "run", MODEL, tcfg(epochs=1))
    (other / "blob_000.png").unlink()
    with pytest.raises(rundir.RunError, match="changed"):
        train(other, tmp_path / "run", MODEL, tcfg(), resume=True, resume_epochs=2)


def test_corrupt_or_foreign_files_are_clear_errors(tmp_path, one_epoch):
    one_epoch(tmp_path / "run")
    weights = tmp_path / "run" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(rundir.RunError, match="corrupt"):
        rundir.load_model(tmp_path / "run")
    (tmp_path / "run" / "config.json").write_text("{not json")
    with pytest.raises(rundir.RunError, match="corrupt"):
        rundir.load_model(tmp_path / "run")
    with pytest.raises(rundir.RunError, match="not found"):
        rundir.load_model(tmp_path / "missing")


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_checkpoint(blobs, tmp_path, monkeypatch, one_epoch):
    one_epoch(tmp_path / "run")
    good = (tmp_path / "run" / "checkpoint" / "resume.json").read_text()
    import vaekit.training.trainer as t  # the training steps

    real = t.negative_elbo

    def poisoned(*a, **k):
        loss = real(*a, **k)
        loss.total = loss.total * float("nan")
        return loss

    monkeypatch.setattr(t, "negative_elbo", poisoned)
    with pytest.raises(TrainingError, match="nan"):
        train(blobs, tmp_path / "run", MODEL, tcfg(), resume=True, resume_epochs=3)
    assert (tmp_path / "run" / "checkpoint" / "resume.json").read_text() == good


def _steps_with_a_spike(monkeypatch, spike_clip: float, grad_clip: float = 0.0):
    """Eight optimiser steps on the same batch, the sixth with a gradient 10^6 times the usual;
    the norms of each step's gradient as AdamW took it, and its largest second moment after."""
    from vaekit.training import trainer as t
    from vaekit.training.distributed import Dist

    real, calls, norms = t.negative_elbo, [], []

    def spiky(*a, **k):
        loss = real(*a, **k)
        calls.append(1)
        if len(calls) == 6:
            loss.total = loss.total * 1e6
        return loss

    monkeypatch.setattr(t, "negative_elbo", spiky)
    cfg = ModelConfig(image_size=16, channels=1, latent_dim=4, base_channels=4, likelihood="logistic", layout="vector")
    tr = t.Trainer(cfg, tcfg(spike_clip=spike_clip, grad_clip=grad_clip), torch.device("cpu"), Dist())
    x = torch.rand(8, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    real_step = tr.optimizer.step

    def step(*a, **k):
        norms.append(float(torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in tr.model.parameters() if p.grad is not None]))))
        return real_step(*a, **k)

    tr.optimizer.step = step
    for i in range(8):
        tr._step(x, torch.randn(8, 4, generator=torch.Generator().manual_seed(i)), 1e-3, 1.0, 8)
    return norms, max(float(s["exp_avg_sq"].max()) for s in tr.optimizer.state.values())


def test_a_gradient_spike_is_clipped_to_a_few_times_the_running_norm(monkeypatch):
    # Adam takes a spike's square into its second moment, which then shrinks every later step:
    # a logistic model hit by one late in a long run sat frozen at a bad point (docs/codec.md)
    norms, v_max = _steps_with_a_spike(monkeypatch, spike_clip=4.0)
    usual = max(norms[:5])
    assert norms[5] <= 4.0 * usual * 1.01  # the spike step: no more than spike_clip times the RMS norm seen
    assert norms[5] > 0.5 * usual  # scaled down, not dropped
    raw, v_raw = _steps_with_a_spike(monkeypatch, spike_clip=0.0)
    assert raw[5] > 1e4 * usual and raw[:5] == pytest.approx(norms[:5])  # without it the spike goes through
    assert v_raw > 1e6 * v_max
    fixed, _ = _steps_with_a_spike(monkeypatch, spike_clip=4.0, grad_clip=1e-3)
    assert max(fixed) <= 1e-3 * 1.01  # a fixed grad_clip wins over the spike clip
    with pytest.raises(BadInput, match="spike clip must be >= 0"):
        TrainConfig(spike_clip=-1.0)


def test_splits_are_seeded_disjoint_and_sized_for_what_they_do():
    from vaekit.training.splits import plan_splits

    a, b, c = (plan_splits(400, 0.1, 0.1, seed) for seed in (1, 1, 2))
    assert not a.crossfit and len(a.val) == 40 and len(a.cal) == 99  # as many as the 0.99 quantile needs
    assert not (set(a.train) & set(a.val) or set(a.train) & set(a.cal) or set(a.val) & set(a.cal))
    assert len(a.train) + len(a.val) + len(a.cal) == 400
    assert (a.cal == b.cal).all() and not (a.cal == c.cal).all()
    few = plan_splits(23, 0.1, 0.1, 0)
    assert few.crossfit and sorted(np.concatenate(few.folds).tolist()) == list(range(23))
    # the run's model is the first fold's: it trains on the other folds, as each fold model does
    assert few.train.tolist() == sorted(np.concatenate(few.folds[1:]).tolist()) and len(few.train) == 18
    assert plan_splits(3, 0.1, 0.1, 0).folds and not plan_splits(1, 0.1, 0.1, 0).folds  # leave-one-out; nothing
    # two images: one score per fold would standardise the other's; both train, and the run says so
    assert not plan_splits(2, 0.1, 0.1, 0).folds and len(plan_splits(2, 0.1, 0.1, 0).train) == 2
    assert len(plan_splits(2, 0.1, 0.1, 0, folds=2).train) == 2  # --folds 2 too (it held one out, unsaid)
    assert not plan_splits(50, 0.1, 0.1, 0, folds=0).crossfit
    # a surface model with the reader: one fold held out for calibration, no fold models
    one = plan_splits(40, 0.1, 0.1, 0, one_fold=True)
    assert not one.crossfit and len(one.cal) == 8 and len(one.train) == 32 and not len(one.val)
    assert sorted(np.concatenate([one.train, one.cal]).tolist()) == list(range(40))
    assert plan_splits(40, 0.1, 0.1, 0, folds=5, one_fold=True).crossfit  # asked for: cross-fitted
    assert len(plan_splits(400, 0.1, 0.1, 0, one_fold=True).val) == 40  # many images: as before
    # the held-out fold holds at least 8 images (a tail can be fitted to 8 scores) while half train
    from vaekit.anomaly.quantiles import TAIL_MIN
    from vaekit.training.splits import ONE_FOLD_MIN

    assert ONE_FOLD_MIN == TAIL_MIN
    for n, cal in ((20, 8), (16, 8), (10, 5), (3, 1)):
        s = plan_splits(n, 0.1, 0.1, 0, one_fold=True)
        assert len(s.cal) == cal and sorted(np.concatenate([s.train, s.cal]).tolist()) == list(range(n)), n
    assert len(plan_splits(20, 0.1, 0.1, 0, one_fold=True, min_cal=0).cal) == 4  # one fold of five, as before


def test_a_surface_run_from_before_the_larger_fold_resumes_on_the_images_it_trained_on(tmp_path, monkeypatch):
    from functools import partial

    from vaekit.training import splits
    from vaekit.training.splits import plan_splits

    plan = partial(plan_splits, 20, 0.1, 0.1, 0, one_fold=True)
    now, before = plan(), plan(min_cal=0)
    stored = {"data": {"train_images": 16}}  # what a run of 20 surface images recorded then
    monkeypatch.setattr(splits.rundir, "read_config", lambda out_dir: stored)
    got = splits.trained_on(tmp_path, now, 20, plan)
    assert got.train.tolist() == before.train.tolist() and got.cal.tolist() == before.cal.tolist()
    stored["data"]["train_images"] = 12  # a run of this version resumes on its own split
    assert splits.trained_on(tmp_path, now, 20, plan) is now


def test_kl_warmup_ramps_linearly_to_beta():
    cfg = TrainConfig(beta=2.0, kl_warmup=3)
    assert [kl_weight(e, cfg) for e in range(5)] == [0.5, 1.0, 1.5, 2.0, 2.0]
    assert kl_weight(0, TrainConfig(beta=0.5)) == 0.5


def test_resume_records_the_new_total_and_forgets_stale_thresholds(blobs, tmp_path, one_epoch):
    one_epoch(tmp_path / "run")
    train(blobs, tmp_path / "run", MODEL, tcfg(), resume=True, resume_epochs=2)
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["train"]["epochs"] == 2 and "anomaly" in cfg
    with pytest.raises(ValueError, match="already trained 2 epochs"):
        train(blobs, tmp_path / "run", MODEL, tcfg(), resume=True, resume_epochs=1)


def test_torch_engine_refuses_weights_that_do_not_match_the_stored_threshold(blobs, tmp_path, one_epoch):
    from vaekit.inference.engine_torch import TorchModel

    one_epoch(tmp_path / "a")
    train(blobs, tmp_path / "b", MODEL, tcfg(epochs=1, seed=3))
    TorchModel(tmp_path / "a")  # consistent: opens
    # as after an interrupted resume: new weights, old config
    (tmp_path / "a" / "model.safetensors").write_bytes((tmp_path / "b" / "model.safetensors").read_bytes())
    with pytest.raises(rundir.RunError, match="weights changed"):
        TorchModel(tmp_path / "a")


def test_should_stop_ends_training_cleanly_and_the_run_resumes(blobs, tmp_path):
    """The library's stop hook (the demo's Stop button, the CLI's Ctrl-C): asked after every
    step; the run keeps its last finished epoch and --resume completes it."""
    calls = {"n": 0}

    def stop_in_third_epoch():  # 20 training images, batch 8: 3 steps an epoch
        calls["n"] += 1
        return calls["n"] > 7

    result, _ = train(blobs, tmp_path / "run", MODEL, tcfg(epochs=5), should_stop=stop_in_third_epoch)
    assert result.stopped and result.epochs_done == 2 and result.threshold is None
    assert checkpoint.load_checkpoint(tmp_path / "run")[1]["epoch"] == 1  # epochs 1 and 2 finished, 0-based
    assert "anomaly" not in json.loads((tmp_path / "run" / "config.json").read_text())
    done, _ = train(blobs, tmp_path / "run", MODEL, tcfg(epochs=5), resume=True)
    assert not done.stopped and done.epochs_done == 5 and done.threshold is not None


def test_checkpoints_come_every_fifty_steps_or_so_and_always_first_and_last():
    from vaekit.training.loop import checkpoint_due

    cfg = tcfg(epochs=40)
    due = [e for e in range(40) if checkpoint_due(e, cfg, steps_per_epoch=3)]  # every 17 epochs
    assert due == [0, 16, 33, 39]
    assert all(checkpoint_due(e, cfg, steps_per_epoch=60) for e in range(40))  # long epochs: each one
    assert [e for e in range(40) if checkpoint_due(e, tcfg(epochs=40, checkpoint_every=10), 3)] == [0, 9, 19, 29, 39]


@pytest.mark.slow
def test_a_resume_from_an_older_checkpoint_still_ends_exactly_where_an_uninterrupted_run_does(blobs, tmp_path):
    from safetensors.torch import load_file

    train(blobs, tmp_path / "whole", MODEL, tcfg(epochs=8, checkpoint_every=3))
    calls = {"n": 0}

    def kill_in_epoch_seven():  # 3 steps an epoch; a SIGKILL loses what no checkpoint holds
        calls["n"] += 1
        if calls["n"] > 19:
            raise KeyboardInterrupt
        return False

    with pytest.raises(KeyboardInterrupt):
        train(blobs, tmp_path / "cut", MODEL, tcfg(epochs=8, checkpoint_every=3), should_stop=kill_in_epoch_seven)
    assert checkpoint.load_checkpoint(tmp_path / "cut")[1]["epoch"] == 5  # epochs 0, 2, 5 were checkpointed
    train(blobs, tmp_path / "cut", MODEL, tcfg(epochs=8, checkpoint_every=3), resume=True)
    a, b = load_file(tmp_path / "whole" / "model.safetensors"), load_file(tmp_path / "cut" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_finished_run_carries_the_codec_tables_so_encode_needs_no_fitting(blobs, tmp_path):
    from typer.testing import CliRunner

    from vaekit_cli.main import app

    train(blobs, tmp_path / "run", MODEL, tcfg(epochs=2))
    assert "codec" in json.loads((tmp_path / "run" / "config.json").read_text())
    r = CliRunner().invoke(app, ["encode", str(tmp_path / "run"), str(blobs), "-o", str(tmp_path / "a.vkc"),
                                 "--quality", "3"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["decode", str(tmp_path / "run"), str(tmp_path / "a.vkc"), "-o", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    assert len(list((tmp_path / "out").glob("*.png"))) == 24


def test_a_resumed_run_without_stored_folds_or_reader_keeps_the_splits_it_trained_on(tmp_path):
    """Runs of vaekit 0.1 and 0.2 stored no `folds` or `reader`: they held images out by the
    fractions and had no reader, so a resume must plan the same (not cross-fit, not add a reader)."""
    from dataclasses import asdict

    from vaekit.training.job import _resumed_configs

    model = asdict(ModelConfig(image_size=16, layout="grid", likelihood="gaussian", latent_dim=4))
    old_train = {k: v for k, v in asdict(TrainConfig()).items() if k not in ("folds", "reader", "augment")}
    _, cfg = _resumed_configs({"model": model, "train": old_train}, tmp_path, {})
    assert cfg.folds == 0 and cfg.reader is False and cfg.augment == "off"  # nor warp what it trained on as it was
    _, now = _resumed_configs({"model": model, "train": asdict(TrainConfig())}, tmp_path, {})
    assert now.folds == -1 and now.reader is True and now.augment == "auto"  # a run that stored them keeps its own


def test_cross_fitting_trains_one_model_per_fold_but_the_first_which_is_the_runs_own(blobs, tmp_path, monkeypatch):
    # the run's model trained on folds 2..5 by the same recipe: it scores fold 1, and a fold model
    # for fold 1 would be the same model trained again
    from vaekit.training import trainer as trainer_module

    made = []
    real = trainer_module.Trainer
    monkeypatch.setattr(trainer_module, "Trainer", lambda *a, **k: made.append(1) or real(*a, **k))
    train(blobs, tmp_path / "run", MODEL, tcfg(epochs=1))
    assert len(made) == 4


def test_few_aligned_images_train_on_warped_copies_and_the_run_records_it(blobs, tmp_path, _one_epoch):
    from vaekit.training.augment import augment_on, warp_batch

    # auto: aligned objects below 50 training images; a surface's crops serve it already
    assert augment_on("auto", "vector", 49) and not augment_on("auto", "vector", 50)
    assert not augment_on("auto", "grid", 20) and augment_on("on", "grid", 5000) and not augment_on("off", "vector", 5)
    with pytest.raises(BadInput, match="augment must be one of"):
        TrainConfig(augment="yes")
    # each image its own warp, drawn from the step's seed: the same after a resume, another next step
    x = torch.zeros(6, 1, 16, 16)
    x[:, :, 4:12, 6:10] = 1.0
    a, b, c = warp_batch(x, [0, 1, 2]), warp_batch(x, [0, 1, 2]), warp_batch(x, [0, 1, 3])
    assert torch.equal(a, b) and not torch.equal(a, c) and a.shape == x.shape
    assert all(not torch.allclose(a[i], x[i], atol=1e-3) for i in range(6))  # every image moved
    assert not torch.allclose(a[0], a[1], atol=1e-3)
    assert (a.sum((1, 2, 3)) / x.sum((1, 2, 3))).sub(1).abs().max() < 0.35  # warped, not destroyed
    # under DDP a rank warps its rows of the global batch as one process would; an empty share stays empty
    rows = np.array([1, 4])
    assert torch.equal(warp_batch(x[rows], [0, 1, 2], rows, 6), a[rows])
    assert warp_batch(x[:0], [0, 1, 2], rows[:0], 6).shape == (0, 1, 16, 16)
    # warped, a few tens of images may pass twice as often (the epoch cap), a large folder is unchanged
    from vaekit.training.recipe import resolve_epochs

    assert resolve_epochs(TrainConfig(), 16, 28) == 300 and resolve_epochs(TrainConfig(), 16, 28, warped=True) == 600
    assert resolve_epochs(TrainConfig(), 5000, 28, warped=True) == resolve_epochs(TrainConfig(), 5000, 28)
    # cross-fitted, five models share 2.1 models' budget: 20 digits of 28 px keep their 600 epochs,
    # 40 images of 64 px (32 a model, one step an epoch) get 230 instead of 549
    assert resolve_epochs(TrainConfig(), 16, 28, warped=True, models=5) == 600
    assert resolve_epochs(TrainConfig(), 32, 64, warped=True) == 549
    assert resolve_epochs(TrainConfig(), 32, 64, warped=True, models=5) == 230
    assert resolve_epochs(TrainConfig(), 32, 64, warped=True, models=2) == 549  # within the budget
    # the resolved setting is stored, so a resume warps exactly as the run did
    assert json.loads((_one_epoch / "config.json").read_text())["train"]["augment"] == "on"  # tcfg(epochs=1)
    train(blobs, tmp_path / "off", MODEL, tcfg(epochs=1, augment="off"))
    assert json.loads((tmp_path / "off" / "config.json").read_text())["train"]["augment"] == "off"


def test_resuming_a_run_whose_model_trained_on_every_image_keeps_doing_so(blobs, tmp_path, monkeypatch, one_epoch):
    # cross-fitted runs written before the run's model became the first fold's trained on all
    # images (config.json data.train_images == every image): a resume must not then score fold 1
    # with a model that saw it, so all five fold models train and the run keeps all its images
    from vaekit.training import trainer as trainer_module

    one_epoch(tmp_path / "run")
    cfg_path = tmp_path / "run" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["data"]["train_images"] = 24
    cfg_path.write_text(json.dumps(cfg))
    made = []
    real = trainer_module.Trainer
    monkeypatch.setattr(trainer_module, "Trainer", lambda *a, **k: made.append(1) or real(*a, **k))
    train(blobs, tmp_path / "run", MODEL, tcfg(epochs=1), resume=True, resume_epochs=2)
    assert len(made) == 5
    after = json.loads(cfg_path.read_text())
    assert after["data"]["train_images"] == 24 and after["anomaly"]["calibration"]["codes"]["shape"] == [24, 4]


def test_a_coder_with_many_images_trains_longer_and_one_with_few_does_not():
    """A logistic model trains up to CODER_BUDGET times a detector's epochs while they stay at
    most CODER_MAX_EPOCHS (more passes over a few thousand images learn those images); the
    run's resolved settings say so; an explicit --epochs is kept."""
    from vaekit.training.loop import resolved_train_config
    from vaekit.training.recipe import resolve_epochs

    # MNIST's 48,000 training images (after the splits) at 28 px: 2 epochs for a detector, 8 for a coder
    assert resolve_epochs(TrainConfig(), 48000, 28) == 2 and resolve_epochs(TrainConfig(), 48000, 28, coder=True) == 8
    # 4,800: 20 epochs either way (four times as many lost on the shaded digits); 12,000: 8 -> 20
    assert resolve_epochs(TrainConfig(), 4800, 28) == resolve_epochs(TrainConfig(), 4800, 28, coder=True) == 20
    assert resolve_epochs(TrainConfig(), 12000, 28) == 8 and resolve_epochs(TrainConfig(), 12000, 28, coder=True) == 20
    assert resolve_epochs(TrainConfig(), 500, 28, coder=True) == resolve_epochs(TrainConfig(), 500, 28) == 180
    assert resolve_epochs(TrainConfig(epochs=3), 48000, 28, coder=True) == 3
    coder = ModelConfig(image_size=28, likelihood="logistic", layout="vector")
    detector = ModelConfig(image_size=28, likelihood="gaussian", layout="vector")
    assert resolved_train_config(TrainConfig(), coder, 48000).epochs == 8
    assert resolved_train_config(TrainConfig(), detector, 48000).epochs == 2


def test_a_checkpoint_does_not_carry_the_optimisers_fused_setting_to_another_machine():
    """A CUDA run's optimiser is fused, a CPU one's not: resuming takes this machine's choice, not the file's."""
    import torch

    from vaekit.training.checkpoint import pack_state, unpack_state

    net = torch.nn.Linear(3, 2)
    fused = torch.optim.AdamW(net.parameters(), lr=1e-3, fused=True)
    net(torch.ones(4, 3)).sum().backward()
    fused.step()
    tensors, meta = pack_state(net, fused, None, 0, {"epoch": 0, "val": 1.0}, 1)
    assert meta["param_groups"][0]["fused"] is True
    plain = torch.optim.AdamW(net.parameters(), lr=1e-3)
    unpack_state(tensors, meta, net, plain, None)
    assert plain.param_groups[0]["fused"] is None and plain.param_groups[0]["lr"] == 1e-3
    net(torch.ones(4, 3)).sum().backward()
    plain.step()  # the restored moments step on this machine's kernels
    assert int(plain.state[net.weight]["step"]) == 2
