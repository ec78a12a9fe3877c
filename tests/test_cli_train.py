"""`vaekit train` / `sample-data` through Typer's runner and the installed executable."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from test_train import make_blobs
from vaekit_cli.main import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
EXE = shutil.which("vaekit", path=str(Path(sys.executable).parent)) or "vaekit"


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_train_prints_epochs_and_a_summary(tmp_path):
    make_blobs(tmp_path / "imgs", n=12)
    r = invoke("--threads", 1, "train", tmp_path / "imgs", "--out", tmp_path / "run", "--image-size", 16,
               "--latent-dim", 4, "--base-channels", 4, "--epochs", 2, "--batch-size", 4, "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert "epoch   2" in r.output and "anomaly threshold" in r.output and "12 used, 0 skipped" in r.output
    # first the plan, every "auto" decided (under 50 aligned images: warped copies)
    assert r.output.splitlines()[0] == ("training 12 images (5 folds, cross-fitted) · 16 px gray, vector latent (4), "
                                        "gaussian · 2 epochs, batch 4, warped copies · then 4 fold models for the threshold · cpu")
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["epochs"] == 2
    # 12 images are cross-fitted: no validation split, and the summary does not pretend one
    assert "-ELBO, training images" in r.output and "best val -ELBO" not in r.output
    assert "best: epoch" not in r.output  # no epoch was chosen on held-out images
    # each number names its estimator; no val column that repeats the training loss, and a
    # Gaussian density's nats are not called bits/dim
    assert "train loss (1 draw)" in r.output and "val -ELBO" not in r.output and "bits/dim" not in r.output
    # resume extends to 3 epochs using the stored config
    fingerprint = json.loads((tmp_path / "run" / "config.json").read_text())["fingerprint"]
    r = invoke("train", tmp_path / "imgs", "--out", tmp_path / "run", "--resume", "--epochs", 3)
    assert r.exit_code == 0, r.output
    assert "epoch   3" in r.output and "epoch   1 " not in r.output
    # a finished run trained on: its model is replaced, and the user is told before it is
    said = " ".join(r.output.split())  # after the plan: a refused resume prints its one line alone
    assert r.output.splitlines()[0].startswith("resuming after epoch 2 of 3: 12 images (5 folds")
    assert f"note: {tmp_path / 'run'} had finished (model {fingerprint}); training it on replaces that model" in said
    assert "decode only with a copy of the run made before" in said and "threshold is computed anew" in said
    # a resume with no epoch left redoes nothing: it retrained every fold model and moved the threshold
    run = tmp_path / "run"
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    r = invoke("train", tmp_path / "imgs", "--out", run, "--resume")
    assert r.exit_code == 0 and "had trained all 3 epochs and finished: nothing to resume" in " ".join(r.output.split())
    assert "resuming after" not in r.output  # it said "resuming after epoch 3 of 3", then that nothing was to resume
    assert "`--resume --epochs N` with N above 3 trains it longer" in " ".join(r.output.split())
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    cfg = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if k != "anomaly"}))
    r = invoke("train", tmp_path / "imgs", "--out", run, "--resume")  # killed while finishing: finished now
    assert r.exit_code == 0 and "anomaly threshold" in r.output and "nothing to resume" not in r.output, r.output


def test_unreadable_files_are_skipped_and_named(tmp_path):
    make_blobs(tmp_path / "imgs", n=6)
    (tmp_path / "imgs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    (tmp_path / "imgs" / "notes.jpg").write_text("not an image")
    r = invoke("train", tmp_path / "imgs", "--out", tmp_path / "run", "--image-size", 16, "--latent-dim", 2,
               "--base-channels", 2, "--epochs", 1)
    assert r.exit_code == 0, r.output
    assert "6 used, 2 skipped" in r.output
    assert "broken.png" in r.output and "notes.jpg: not an image" in r.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "{empty}", "--out", "{tmp}/r"], "no image files found"),
        (["train", "{junk}", "--out", "{tmp}/r"], "no usable image"),
        (["train", "{tmp}/does-not-exist"], "does not exist"),
        (["train", "{junk}", "--image-size", "8"], "--image-size must be from 16 to 1024, or up to 3072 for a surface (or 0 for auto), got 8"),
        (["train", "{junk}", "--channels", "2"], "must be auto, 1 or 3"),
        (["train", "{junk}", "--device", "tpu"], "tpu"),
        (["sample-data", "digits", "{tmp}/d", "--normal", "12"], "12"),
        (["sample-data", "digits", "{junk}/a.png/d"], "a.png is a file, not a folder"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.png").write_text("text")
    args = [a.format(tmp=tmp_path, empty=tmp_path / "empty", junk=tmp_path / "junk") for a in args]
    r = invoke(*args)
    assert r.exit_code == 2, r.output
    assert message in r.output
    assert "Traceback" not in r.output


@pytest.mark.parametrize("out", ["notes.txt", "notes.txt/sub", "notes.txt/sub/run"])
def test_an_out_that_is_or_lies_under_a_file_is_one_line_and_exit_2(tmp_path, out):
    make_blobs(tmp_path / "imgs", n=6)
    (tmp_path / "notes.txt").write_text("precious")
    r = invoke("train", tmp_path / "imgs", "--out", tmp_path / out, "--epochs", 1)
    flat = "".join(r.output.split())
    assert r.exit_code == 2 and "notes.txtisafile,notafolder" in flat, r.output
    assert "Traceback" not in r.output and "Errno" not in r.output
    assert (tmp_path / "notes.txt").read_text() == "precious"


def test_existing_run_needs_resume_or_overwrite(tmp_path):
    make_blobs(tmp_path / "imgs", n=6)
    base = ["train", tmp_path / "imgs", "--out", tmp_path / "run", "--image-size", 16, "--latent-dim", 2, "--base-channels", 2, "--epochs", 1]
    assert invoke(*base).exit_code == 0
    r = invoke(*base)
    assert r.exit_code == 2 and "--resume" in r.output
    assert invoke(*base, "--overwrite").exit_code == 0


def test_sample_data_digits_layout(tmp_path):
    r = invoke("sample-data", "digits", tmp_path / "d", "--normal", 3, "--size", 16)
    assert r.exit_code == 0, r.output
    for sub in ("train", "test/normal", "test/anomalous"):
        assert any((tmp_path / "d" / sub).glob("*.png")), sub
    assert all(p.name.startswith("digit3_") for p in (tmp_path / "d" / "train").glob("*.png"))


def _no_heavy_imports(cmd):
    # run the command inside a Python that records what got imported
    code = (
        "import sys, runpy; sys.argv = ['vaekit'] + sys.argv[1:]\n"
        "try:\n    runpy.run_module('vaekit', run_name='__main__')\n"
        "except SystemExit as e:\n    code = e.code\n"
        "heavy = sorted(m for m in ('torch', 'gradio', 'onnxruntime', 'sklearn') if m in sys.modules)\n"
        "print('HEAVY=' + ','.join(heavy))\n"
    )
    return subprocess.run([sys.executable, "-c", code, *cmd], capture_output=True, text=True, cwd=ROOT)


def test_help_does_not_import_torch_or_gradio():
    out = _no_heavy_imports(["--help"])
    assert "HEAVY=\n" in out.stdout, out.stdout[-300:] + out.stderr
    assert "train" in out.stdout and "sample-data" in out.stdout
    out = _no_heavy_imports(["train", "--help"])
    assert "HEAVY=\n" in out.stdout and "--image-size" in out.stdout


@pytest.mark.slow
def test_installed_executable_and_python_m_agree(tmp_path):
    a = subprocess.run([EXE, "--help"], capture_output=True, text=True, cwd=tmp_path)
    b = subprocess.run([sys.executable, "-m", "vaekit", "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert a.returncode == b.returncode == 0
    assert a.stdout == b.stdout and "sample-data" in a.stdout
    # errors come out the same way from the real executable: one line, exit code 2
    (tmp_path / "empty").mkdir()
    c = subprocess.run([EXE, "train", "empty"], capture_output=True, text=True, cwd=tmp_path,
                       env={**os.environ, "VAEKIT_THREADS": "1"})
    assert c.returncode == 2 and "no image files found" in c.stderr and "Traceback" not in c.stderr
    assert not (tmp_path / "runs").exists()  # a refused run leaves no folder behind


def test_threads_are_parsed_once_and_reach_the_engine_as_a_value(tmp_path, monkeypatch):
    """--threads is read by the CLI's callback alone and handed to vaekit.load as a value
    (the onnxruntime sessions and torch's pool of the model a command opens)."""
    import vaekit
    from vaekit_cli import output

    monkeypatch.delenv("VAEKIT_THREADS", raising=False)
    seen = []
    monkeypatch.setattr(vaekit, "load", lambda path, device="auto", threads=None: seen.append(threads))
    try:
        invoke("--threads", "3", "threshold", tmp_path / "no-such-run")  # the callback runs first
        assert output.THREADS == 3 and "VAEKIT_THREADS" not in os.environ
        output.load_model(tmp_path / "model.onnx")
        assert seen == [3]
    finally:
        output.set_threads(0)


def test_threads_option_never_imports_torch_by_itself():
    # `vaekit --threads 1 anomaly-score model.onnx ...` must stay torch-free
    code = ("import sys; from vaekit_cli import output; output.set_threads(2)\n"
            "output.apply_threads(); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "False", out.stderr


def test_paths_that_look_like_markup_are_printed_verbatim(tmp_path):
    # rich would read "[/b]" as a closing tag and crash; every path printed must be escaped
    folder = tmp_path / "scans[/b]"
    make_blobs(folder, n=6)
    (folder / "bad[red].png").write_text("not an image")
    r = invoke("train", folder, "--out", tmp_path / "run[/i]", "--image-size", 16, "--latent-dim", 2,
               "--base-channels", 2, "--epochs", 1)
    assert r.exit_code == 0, r.output
    assert "bad[red].png: not an image" in r.output and "run[/i]" in r.output


def test_missing_optional_dependency_names_the_extra(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_torch(name, *a, **k):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError("No module named 'torch'", name="torch")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    torch_users = ("vaekit.train", "vaekit.training.job", "vaekit.training.loop", "vaekit.training.trainer",
                   "vaekit.training.checkpoint", "vaekit.training.crossfit", "vaekit.training.finish",
                   "vaekit.training.finish_reader", "vaekit.training.data", "vaekit.training.distributed",
                   "vaekit.training.rundir", "vaekit.model.vae", "vaekit.model.objective", "vaekit.inference.engine_torch")
    for mod in [m for m in sys.modules if m in torch_users or m.startswith("torch")]:
        monkeypatch.delitem(sys.modules, mod)
        if mod.startswith("vaekit."):  # else `from vaekit.training import rundir` finds the package's attribute, no import
            parent, leaf = mod.rsplit(".", 1)
            monkeypatch.delattr(sys.modules[parent], leaf, raising=False)
    r = invoke("train", ROOT / "tests")
    assert r.exit_code == 2 and "pip install 'vaekit[train]'" in r.output, r.output


def test_epoch_lines_name_their_estimators_and_print_bits_only_for_a_code_length():
    from vaekit_cli.train import _epoch_line

    row = {"epoch": 7, "train_loss": -10.0, "train_recon": -12.0, "train_kl": 2.0, "val_loss": -9.5,
           "val_bits_per_dim": -0.02, "images_per_s": 100.0, "val_estimator": "z = mu", "bits_are_code_length": False}
    gauss = _epoch_line(row)
    assert "val -ELBO (z = μ)     -9.50 nats" in gauss and "bits/dim" not in gauss
    logistic = _epoch_line({**row, "val_loss": 900.0, "val_bits_per_dim": 1.6531, "bits_are_code_length": True})
    assert "900.00 nats = 1.6531 bits/dim" in logistic
    crossfit = _epoch_line({**row, "val_estimator": "1 draw (training images)"})
    assert "train loss (1 draw)" in crossfit and "val" not in crossfit


def test_a_surface_trained_on_crops_says_its_loss_is_per_crop():
    """A 512 px surface's training loss (per 64 px crop) was printed as nats/image, 1/64 of what
    anomaly-score then gave the same images."""
    from vaekit_cli.train_summary import loss_unit as _loss_unit

    grid = {"model": {"layout": "grid", "image_size": 512, "read_size": 0}, "train": {"crop": 0}}
    assert _loss_unit(grid) == "nats per 64 px crop"
    assert _loss_unit({**grid, "train": {"crop": 96}}) == "nats per 96 px crop"
    assert _loss_unit({"model": {"layout": "grid", "image_size": 64, "read_size": 0}, "train": {"crop": 0}}) == "nats/image"
    assert _loss_unit({"model": {"layout": "vector", "image_size": 64}, "train": {"crop": 0}}) == "nats/image"


@pytest.mark.slow  # trains a model in its body
def test_files_skipped_are_named_before_the_training_not_after_it(tmp_path):
    """A user learnt of a broken file only after minutes of training: the summary named it. Now
    the plan line does, once, before the first epoch."""
    make_blobs(tmp_path / "imgs", n=12)
    (tmp_path / "imgs" / "broken.png").write_bytes(b"not a png")
    r = invoke("--threads", 1, "train", tmp_path / "imgs", "--out", tmp_path / "run", "--image-size", 16,
               "--latent-dim", 4, "--base-channels", 4, "--epochs", 1, "--batch-size", 4, "--device", "cpu")
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    named = [i for i, line in enumerate(lines) if line.startswith("skipped") and "broken.png" in line]
    first_epoch = next(i for i, line in enumerate(lines) if line.startswith("epoch"))
    assert len(named) == 1 and named[0] < first_epoch, r.output
    assert "12 used, 1 skipped" in r.output


def test_the_summary_says_when_the_threshold_lies_beyond_every_score_it_came_from(tmp_path, capsys, monkeypatch):
    """Eight held-out scores of a surface's reader, the largest 0.4388, set a threshold of their
    fitted tail's 0.99 quantile far above it: a new user saw 0 of 16 obvious defects flagged and
    only `vaekit threshold` said why (h2)."""
    from types import SimpleNamespace

    import numpy as np

    from vaekit.anomaly import threshold_section
    from vaekit_cli.train_summary import print_summary

    scores = np.array([0.24, 0.26, 0.30, 0.31, 0.33, 0.35, 0.38, 0.4388])
    section = threshold_section({"defect": scores}, 0.99, "held-out fold", default="defect")
    assert section["threshold"] > 0.4388
    from vaekit.training import rundir

    config = {"anomaly": section, "data": {"val_images": 0}, "model": {"image_size": 64, "layout": "grid", "latent_dim": 8}}
    monkeypatch.setattr(rundir, "read_config", lambda run: config)
    result = SimpleNamespace(run_dir=tmp_path, device="cpu", epochs_done=3, best_epoch=3, best_val=1.0, seconds=1.0,
                             epoch_seconds=1.0, threshold=section["threshold"])
    print_summary(result, SimpleNamespace(paths=[None] * 40, skipped=[], cache_hit=False))
    out = " ".join(capsys.readouterr().out.replace("│", " ").split())
    assert "which is beyond the largest of 8 held-out fold scores (0.4388), at their fitted tail's quantile" in out
    assert "--normal MORE_GOOD/` sets it from more images" in out
