"""A hostile review of pixel AUROC in buckets (vaekit/anomaly/pixel_roc.py) and `evaluate --masks`:
a broken model's maps, signed zeros, against scikit-learn's exact AUROC."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from vaekit.anomaly.pixel_roc import PixelRoc
from vaekit.training import rundir
from vaekit_cli.main import app

from test_cli_anomaly import washer_run

runner = CliRunner()


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    return washer_run(tmp_path_factory, "review-parts")


def _broken_copy(run, out):
    """The run with one decoder bias NaN (its weights' checksum and fingerprint kept consistent)."""
    import shutil

    shutil.copytree(run, out)
    tensors, meta = rundir.load_tensors(out / "model.safetensors", "weights")
    name = next(k for k in tensors if k.startswith("decoder") and k.endswith("bias"))
    tensors[name] = tensors[name] * float("nan")
    rundir.save_tensors(out / "model.safetensors", tensors, meta)
    config = json.loads((out / "config.json").read_text())
    config["fingerprint"] = rundir.fingerprint(tensors)
    (out / "config.json").write_text(json.dumps(config))
    return out


def test_a_broken_models_nan_maps_are_one_line_and_exit_2_with_masks_as_without(parts, tmp_path):
    broken = _broken_copy(parts / "run", tmp_path / "broken")
    base = ["evaluate", str(broken), "--normal", str(parts / "test" / "normal"),
            "--anomalous", str(parts / "test" / "anomalous")]
    without = runner.invoke(app, base)
    with_masks = runner.invoke(app, base + ["--masks", str(parts / "test" / "masks")])
    assert without.exit_code == 2 and "finite" in without.output
    assert with_masks.exit_code == 2, with_masks.output
    assert "Traceback" not in with_masks.output and len(with_masks.output.strip().splitlines()) == 1
    assert "NaN" in with_masks.output


def test_minus_zero_ties_with_zero_as_in_the_exact_auroc():
    from sklearn.metrics import roc_auc_score

    mask = np.zeros((4, 4), bool)
    mask[1:3, 1:3] = True
    for anomalous, normal in ((-0.0, 0.0), (0.0, -0.0)):
        values = np.where(mask, np.float32(anomalous), np.float32(normal)).astype(np.float32)
        roc = PixelRoc()
        roc.add(values, mask)
        assert roc.auroc() == roc_auc_score(mask.ravel(), values.ravel()) == 0.5


def test_the_web_apps_decode_box_says_a_vkc_is_a_vkc_not_a_corrupt_code_file(parts, tmp_path):
    import vaekit
    from vaekit import codec
    from vaekit.errors import BadInput
    from vaekit_demo import handlers

    model = vaekit.load(parts / "run")
    enc = codec.encode(model, [parts / "test" / "normal"], tmp_path / "normal.vkc", quality=3)
    with pytest.raises(BadInput, match=r"\.vkc archive.*vaekit decode") as e:
        handlers.decompress(model, enc.path)
    assert "corrupt" not in str(e.value) and "\n" not in str(e.value)


def test_evaluate_refuses_a_mask_of_another_aspect_ratio_for_an_object_model_too(parts, tmp_path):
    """An object model centre-crops image and mask alike, which hid a 2:1 mask of a square image
    (misaligned pixels, a wrong pixel AUROC, exit 0); the mask files' own shapes are compared."""
    from PIL import Image

    masks = tmp_path / "masks"
    masks.mkdir()
    for p in sorted((parts / "test" / "masks").glob("*.png")):
        Image.open(p).resize((32, 16), Image.Resampling.NEAREST).save(masks / p.name)
    out = runner.invoke(app, ["evaluate", str(parts / "run"), "--normal", str(parts / "test" / "normal"),
                              "--anomalous", str(parts / "test" / "anomalous"), "--masks", str(masks)])
    assert out.exit_code == 2, out.output
    assert "aspect ratio" in out.output and len(out.output.strip().splitlines()) == 1
    for p in sorted((parts / "test" / "masks").glob("*.png")):  # a mask at twice its image's size is fine
        Image.open(p).resize((32, 32), Image.Resampling.NEAREST).save(masks / p.name)
    out = runner.invoke(app, ["evaluate", str(parts / "run"), "--normal", str(parts / "test" / "normal"),
                              "--anomalous", str(parts / "test" / "anomalous"), "--masks", str(masks), "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["n_masks"] == 4


@pytest.mark.slow  # the installed vaekit in fresh processes
def test_help_into_a_pipe_closed_early_ends_quietly_not_with_a_traceback(tmp_path):
    """`vaekit train --help | head`: the reader leaves before the help is all written. Here the
    pipe's reading end is closed before vaekit starts, so every write fails (no race with head)."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    exe = shutil.which("vaekit", path=str(Path(sys.executable).parent)) or "vaekit"
    for args in (["train", "--help"], ["--threads", "1", "sample-data", "digits", str(tmp_path / "d")]):
        read, write = os.pipe()
        os.close(read)
        try:
            res = subprocess.run([exe, *args], stdout=write, stderr=subprocess.PIPE, text=True)
        finally:
            os.close(write)
        # 128 + SIGPIPE, as a shell reports it (rich's own exit 1 would read as "anomalies found")
        assert res.returncode == 141 and res.stderr == "", (args, res.returncode, res.stderr)


def test_the_web_apps_generate_handlers_refuse_nan_counts_as_bad_input(parts):
    """A request can send NaN past a slider's bounds; int(NaN) was reported as a vaekit bug."""
    import vaekit
    from vaekit.errors import BadInput
    from vaekit_demo import handlers

    model = vaekit.load(parts / "run")
    image = sorted((parts / "test" / "normal").glob("*.png"))[0]
    with pytest.raises(BadInput, match="steps must be a whole number"):
        handlers.interpolation_strip(model, image, image, float("nan"))
    with pytest.raises(BadInput, match="samples must be a whole number"):
        handlers.sample_grid(model, float("nan"), 1.0, 0)
    with pytest.raises(BadInput, match="seed must be a whole number"):
        handlers.sample_grid(model, 4, 1.0, float("inf"))
    assert handlers.interpolation_strip(model, image, image, 3.0).shape[0] == model.info.channels  # a slider's 3.0
    assert handlers.sample_grid(model, 4.0, 1.0, 0.0).shape[0] == model.info.channels
