"""Training runs that cannot be fooled: run directories mixed or edited between an interruption and
its --resume, found by a hostile tester. A resumed run ends with the model an uninterrupted run
reaches, or is refused with one line and exit 2; it never calibrates and keeps weights it cannot
vouch for.

Real components: a 16 px model trained on generated grey discs in tmp_path.
"""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from vaekit.config import ModelConfig, TrainConfig
from vaekit.errors import DamagedFile
from vaekit.train import train
from vaekit.training import checkpoint

torch.set_num_threads(1)

MODEL = ModelConfig(image_size=16, channels=1, latent_dim=4, base_channels=4)
VECTOR = ModelConfig(image_size=16, channels=1, latent_dim=4, base_channels=4, layout="vector")  # no readers to train


def tcfg(**kw) -> TrainConfig:
    return TrainConfig(**{"epochs": 2, "batch_size": 8, "lr": 3e-3, "seed": 0, "device": "cpu", **kw})


@pytest.fixture(scope="module")
def discs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("discs")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:20, :20]
    for i in range(24):
        cy, cx, r = rng.uniform(6, 14, 2).tolist() + [rng.uniform(3, 5)]
        img = np.where((yy - cy) ** 2 + (xx - cx) ** 2 < r * r, 220, 30).astype(np.uint8)
        Image.fromarray(img).save(folder / f"disc_{i:03d}.png")
    return folder


def stopped_after_its_epochs(data, out) -> None:
    """A run stopped once its last epoch is checkpointed, while the fold models for its threshold
    train (as a kill in the finish leaves it): resume.json at the last epoch, no threshold yet."""
    done = {"epochs": False}

    def progress(i, total, phase="", **_):
        done["epochs"] |= phase == "epoch" and i == total

    result, _ = train(data, out, MODEL, tcfg(), progress=progress, should_stop=lambda: done["epochs"])
    assert result.stopped and checkpoint.load_checkpoint(out)[1]["epoch"] == 1


@pytest.fixture(scope="module")
def stopped_on_discs(discs, tmp_path_factory):
    """`stopped_after_its_epochs(discs, ...)`, trained once for the module: read it, never change it."""
    out = tmp_path_factory.mktemp("stopped") / "run"
    stopped_after_its_epochs(discs, out)
    return out


@pytest.fixture()
def stopped(stopped_on_discs, tmp_path):
    """tmp_path/run: a copy of the stopped run (seeded: the files a stop of its own would leave, but
    for run_id and creation time; its data.root is discs, as such a stop's is)."""
    return shutil.copytree(stopped_on_discs, tmp_path / "run", symlinks=True)


def test_another_runs_weights_copied_in_before_the_resume_are_never_calibrated(discs, stopped, tmp_path):
    # where the checkpoint holds the best epoch's own weights they are put back (a session stopped
    # between checkpoints leaves later epochs' weights too); where it does not, the resume is refused
    from vaekit.training import rundir

    train(discs, tmp_path / "other", MODEL, tcfg(seed=1))
    own = rundir.fingerprint(rundir.load_tensors(tmp_path / "run" / "model.safetensors", "w")[0])
    shutil.copy(tmp_path / "other" / "model.safetensors", tmp_path / "run" / "model.safetensors")
    train(discs, tmp_path / "run", MODEL, tcfg(), resume=True)
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["fingerprint"] == own == rundir.fingerprint(rundir.load_tensors(tmp_path / "run" / "model.safetensors", "w")[0])


def test_weights_the_checkpoint_cannot_vouch_for_are_refused_not_calibrated(discs, stopped, tmp_path, monkeypatch):
    from vaekit.training import loop

    train(discs, tmp_path / "other", MODEL, tcfg(seed=1))
    shutil.copy(tmp_path / "other" / "model.safetensors", tmp_path / "run" / "model.safetensors")
    real = loop.checkpoint.load_checkpoint
    best = real(tmp_path / "run")[1]["best"]

    def other_weights(d):  # a checkpoint whose weights are not the best epoch's either
        tensors, meta = real(d)
        return {k: v * 0 if k.startswith("model.") else v for k, v in tensors.items()}, meta

    monkeypatch.setattr(loop.checkpoint, "load_checkpoint", other_weights)
    with pytest.raises(DamagedFile, match="does not hold the weights of the run's best epoch"):
        loop._check_best_weights(tmp_path / "run", best)
    assert "anomaly" not in json.loads((tmp_path / "run" / "config.json").read_text())


@pytest.mark.slow  # trains the same model twice
def test_an_untouched_stopped_run_still_resumes_to_the_uninterrupted_model(discs, tmp_path):
    whole, _ = train(discs, tmp_path / "whole", MODEL, tcfg())
    stopped_after_its_epochs(discs, tmp_path / "run")
    resumed, _ = train(discs, tmp_path / "run", MODEL, tcfg(), resume=True)
    assert resumed.threshold == whole.threshold
    a, b = (load_file(tmp_path / name / "model.safetensors") for name in ("run", "whole"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_resume_from_a_moved_copy_of_the_images_says_where_the_run_was_started(discs, stopped, tmp_path):
    copy = shutil.copytree(discs, tmp_path / "copy")  # the same names, sizes and modification times
    with pytest.raises(DamagedFile, match=re.escape(f"was started on the images in {discs}, not {copy}")):
        train(copy, tmp_path / "run", MODEL, tcfg(), resume=True)


@pytest.mark.parametrize("edit, said", [
    (lambda c: c["train"].update(lr=1e308), "learning rate must be > 0 and at most"),
    (lambda c: c["train"].update(seed=-1), "seed must be an integer >= 0"),
    (lambda c: c.pop("train"), "has no 'train' section"),
])
def test_a_hand_edited_train_section_is_a_damaged_run_not_a_bug(discs, stopped, tmp_path, edit, said):
    config = tmp_path / "run" / "config.json"
    cfg = json.loads(config.read_text())
    edit(cfg)
    config.write_text(json.dumps(cfg))
    with pytest.raises(DamagedFile, match=said):
        train(discs, tmp_path / "run", MODEL, tcfg(), resume=True)


@pytest.mark.parametrize("edit", [{"seed": 2}, {"batch_size": 4}, {"val_fraction": 0.2}, {"kl_warmup": 1}])
def test_a_train_section_edited_between_a_stop_and_its_resume_is_refused(discs, stopped, tmp_path, edit):
    # valid values: the edited seed or fractions planned other splits (images trained on went to
    # calibration), the batch size and warm-up changed half-way; all applied silently, exit 0
    from vaekit.training.rundir import RunError

    config = tmp_path / "run" / "config.json"
    cfg = json.loads(config.read_text())
    assert all(k in cfg["train"] and cfg["train"][k] != v for k, v in edit.items())
    cfg["train"].update(edit)
    config.write_text(json.dumps(cfg))
    with pytest.raises(RunError, match="settings are not those its checkpoint trained with"):
        train(discs, tmp_path / "run", MODEL, tcfg(**edit), resume=True)


def test_a_device_given_with_resume_is_the_one_used(discs, stopped, tmp_path, monkeypatch):
    # --device was left out of what a resume applies: `--resume --device cuda` on a machine without
    # CUDA went on with the run's stored device, exit 0 (and a run started with "auto" on a GPU
    # machine, resumed with `--device cpu`, would have trained on the GPU)
    from typer.testing import CliRunner

    from vaekit_cli.main import app

    out = stopped  # tmp_path / "run"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    r = CliRunner().invoke(app, ["--threads", "1", "train", str(discs), "--out", str(out), "--resume", "--device", "cuda"])
    assert r.exit_code == 2 and "torch sees no CUDA device" in r.output, r.output
    r = CliRunner().invoke(app, ["--threads", "1", "train", str(discs), "--out", str(out), "--resume", "--device", "cpu"])
    assert r.exit_code == 0, r.output  # the device the run was started with, given again: it finishes


def test_a_refused_switch_is_named_as_typed(discs, stopped, tmp_path):
    # `--resume --no-reader` said "cannot change --reader False (the run has True)"
    from typer.testing import CliRunner

    from vaekit_cli.main import app

    out = stopped  # tmp_path / "run"
    r = CliRunner().invoke(app, ["--threads", "1", "train", str(discs), "--out", str(out), "--resume", "--no-reader",
                                 "--latent-dim", "8"])
    assert r.exit_code == 2 and "--no-reader (the run has --reader)" in r.output, r.output
    assert "--latent-dim 8 (the run has 4)" in r.output, r.output
    # --no-amp and --compile were neither refused nor applied nor recorded (h1, 2026-12-08): a resume
    # past an fp16 NaN with --no-amp trained under autocast again
    for switch, said in (("--no-amp", "--no-amp (the run has --amp)"), ("--compile", "--compile (the run has no --compile)")):
        r = CliRunner().invoke(app, ["--threads", "1", "train", str(discs), "--out", str(out), "--resume", switch])
        assert r.exit_code == 2 and said in "".join(r.output.split("\n")), r.output


def test_an_image_replaced_under_the_same_name_size_and_time_does_not_resume(tmp_path):
    # the data fingerprint is names, sizes and modification times: two BMPs of one size swapped
    # (each given back its own mtime) resumed, the later epochs trained on other pixels, exit 0
    import os

    from vaekit.training.rundir import RunError

    folder = tmp_path / "bmp"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (16, 16), np.uint8)).save(folder / f"i{i:02d}.bmp")
    a, b = folder / "i00.bmp", folder / "i01.bmp"
    assert a.stat().st_size == b.stat().st_size  # a fixed-size format
    train(folder, tmp_path / "run", VECTOR, tcfg(folds=0), cache_dir=tmp_path / "cache")
    ta, tb = a.stat().st_mtime_ns, b.stat().st_mtime_ns
    pa, pb = a.read_bytes(), b.read_bytes()
    a.write_bytes(pb)
    b.write_bytes(pa)
    os.utime(a, ns=(ta, ta))
    os.utime(b, ns=(tb, tb))
    with pytest.raises(RunError, match="decode to other pixels"):
        train(folder, tmp_path / "run", VECTOR, tcfg(folds=0), resume=True, resume_epochs=3, cache_dir=tmp_path / "cache")
    a.write_bytes(pa)  # put back: the same pixels, resumed (new change times, a fresh decode)
    b.write_bytes(pb)
    os.utime(a, ns=(ta, ta))
    os.utime(b, ns=(tb, tb))
    train(folder, tmp_path / "run", VECTOR, tcfg(folds=0), resume=True, resume_epochs=3, cache_dir=tmp_path / "cache")
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["epochs"] == 3
