"""Hostile inputs, pass 22: absurd numbers, switches that are not switches, a stale environment.

- `vaekit train --epochs 99999999999` (or `--kl-warmup` of as many) was accepted and trained for
  ever at a learning rate still warming up; now at most 1,000,000, refused before any work.
- the Python API's switches took any value: `decode_file(..., overwrite="no")`, a truthy
  string, replaced the files it meant to keep; now BadInput naming the switch.
- `vaekit demo` stopped by Ctrl-C exited 0 (Gradio catches the interrupt): now 130, as every command.
- RANK / WORLD_SIZE / LOCAL_RANK left over in a plain shell: `train` failed with torch's rendezvous
  traceback (exit 3), `anomaly-score -o` scored one share of two, exited 0 and wrote no -o file.
- a pixel cache (VAEKIT_CACHE_DIR, the API's cache_dir) inside the training folder: vaekit wrote
  its entries among the user's images.
- (a guard, never broken) a threshold, quantile or rate that is not a finite number in range is
  one line, exit 2, and the run's config is left as it was.

Real components: one 16 px model trained through the CLI on generated images in tmp_path.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from cli_support import invoke, one_line_exit_2
from test_hostile21 import TINY, write_images  # the same tiny model on the same generated images


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile22")
    data, run = write_images(root / "data"), root / "run"
    r = invoke("train", data, "--out", run, *TINY)
    assert r.exit_code == 0, r.output
    return run, data


def files_of(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- 1. a threshold that is no finite number in range (a guard: refused before this pass too) ---

@pytest.mark.parametrize("args", [("--value", "1e309"), ("--value", "inf"), ("--value", "-inf"), ("--value", "nan"),
                                  ("--quantile", "nan"), ("--quantile", "1.5"), ("--target-fpr", "nan"),
                                  ("--target-fpr", "-0.1")])
def test_threshold_refuses_a_value_that_is_no_finite_number_in_range(trained, args):
    run, _ = trained
    before = files_of(run)
    assert "must be" in one_line_exit_2(invoke("threshold", run, *args))
    assert files_of(run) == before


def test_anomaly_score_refuses_a_nan_threshold(trained, tmp_path):
    run, data = trained
    text = one_line_exit_2(invoke("anomaly-score", run, data, "--threshold", "nan", "-o", tmp_path / "s.csv"))
    assert "finite number" in text and not list(tmp_path.iterdir())


# --- 2. absurd numbers of epochs ---------------------------------------------------------------

def no_training(monkeypatch):
    """Training fails at once if it starts (it trained for ever before this pass's bound)."""
    import vaekit.training.job

    def started(*args, **kwargs):
        raise RuntimeError("training started")

    monkeypatch.setattr(vaekit.training.job, "_train", started)


@pytest.mark.parametrize("option", ["--epochs", "--kl-warmup"])
def test_train_refuses_an_absurd_number_of_epochs_before_any_work(trained, tmp_path, monkeypatch, option):
    _, data = trained
    monkeypatch.setenv("VAEKIT_CACHE_DIR", str(tmp_path / "cache"))
    no_training(monkeypatch)
    r = invoke("train", data, "--out", tmp_path / "run", *TINY, option, "99999999999")
    assert "1,000,000" in one_line_exit_2(r) and "99999999999" in r.output
    assert not list(tmp_path.iterdir())  # no run, no pixel cache: nothing was decoded


def test_a_resume_to_an_absurd_number_of_epochs_is_refused_and_the_run_kept(trained, tmp_path, monkeypatch):
    run, data = trained
    no_training(monkeypatch)
    shutil.copytree(run, tmp_path / "run")
    before = files_of(tmp_path / "run")
    r = invoke("train", data, "--out", tmp_path / "run", "--resume", *TINY[2:], "--epochs", "99999999999")
    assert "1,000,000" in one_line_exit_2(r)
    after = files_of(tmp_path / "run")
    after.pop(".vaekit.lock", None)
    before.pop(".vaekit.lock", None)
    assert after == before


@pytest.mark.parametrize("field", ["epochs", "kl_warmup", "checkpoint_every"])
def test_the_api_bounds_epochs_too(field):
    from vaekit.config import TrainConfig
    from vaekit.errors import BadInput

    assert getattr(TrainConfig(**{field: 1_000_000}), field) == 1_000_000
    with pytest.raises(BadInput, match="from 0 to 1,000,000"):
        TrainConfig(**{field: 1_000_001})


def test_the_bounds_are_in_the_train_help():
    from typer.testing import CliRunner

    from vaekit_cli.main import app

    shown = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "400"}).output
    text = " ".join(shown.replace("│", " ").split())  # the help's boxes wrap a phrase over two lines
    assert text.count("at most 1,000,000") == 2 and "at most 4096" in text and "1 to 4096" in text


# --- 3. the API's switches are True or False ------------------------------------------------------

def test_decode_with_overwrite_given_a_truthy_string_leaves_the_files_it_would_replace(trained, tmp_path):
    import vaekit
    from vaekit.codes.jobs import decode_file, encode_folder
    from vaekit.errors import BadInput

    run, data = trained
    model = vaekit.load(run, device="cpu")
    encode_folder(model, data, tmp_path / "c.codes")
    out = tmp_path / "out"
    out.mkdir()
    (out / "00.png").write_bytes(b"mine")
    with pytest.raises(BadInput, match="overwrite must be True or False, got 'no'"):
        decode_file(model, tmp_path / "c.codes", out, overwrite="no")
    assert files_of(out) == {"00.png": b"mine"}


def _calls(run, data, tmp_path):
    """API calls that take a switch, each given the truthy string "no"."""
    import vaekit
    from vaekit import anomaly, codec
    from vaekit.codes.walk import write_grid
    from vaekit.config import ModelConfig, TrainConfig
    from vaekit.export import export
    from vaekit.sample_data import write_shapes
    from vaekit.train import train

    model = vaekit.load(run, device="cpu")
    taken = tmp_path / "taken.png"
    return {
        "codec.decode": lambda: codec.decode(model, tmp_path / "none.vkc", tmp_path, overwrite="no"),
        "codec.encode": lambda: codec.encode(model, data, taken, lossless="no"),
        "score_to_file": lambda: anomaly.score_to_file(model, data, taken, overwrite="no"),
        "score_to_file resume": lambda: anomaly.score_to_file(model, data, tmp_path / "s.csv", resume="no"),
        "score_images maps": lambda: anomaly.score_images(model, data, maps="no"),
        "write_grid": lambda: write_grid(np.zeros((1, 1, 16, 16), np.float32), taken, overwrite="no"),
        "export": lambda: export(run, taken.with_suffix(".onnx"), overwrite="no"),
        "write_shapes": lambda: write_shapes(tmp_path, overwrite="no"),
        "train": lambda: train(data, tmp_path / "r", ModelConfig(), TrainConfig(), overwrite="no"),
        "TrainConfig amp": lambda: TrainConfig(amp="no"),
    }


NAMES = ["codec.decode", "codec.encode", "score_to_file", "score_to_file resume", "score_images maps", "write_grid",
         "export", "write_shapes", "train", "TrainConfig amp"]


@pytest.mark.parametrize("name", NAMES)
def test_an_api_switch_that_is_not_true_or_false_is_bad_input_naming_it(trained, tmp_path, monkeypatch, name):
    from vaekit.errors import BadInput

    run, data = trained
    no_training(monkeypatch)
    (tmp_path / "taken.png").write_bytes(b"mine")
    (tmp_path / "taken.onnx").write_bytes(b"mine")
    call = _calls(run, data, tmp_path)[name]
    with pytest.raises(BadInput, match=r"(overwrite|resume|lossless|maps|amp) must be True or False, got 'no'"):
        call()
    assert files_of(tmp_path) == {"taken.onnx": b"mine", "taken.png": b"mine"}


# --- 4. Ctrl-C stops the web app with 130 -------------------------------------------------------

def _sigint_default():
    # a runner started in the background (nohup, `cmd &`) hands its children SIGINT ignored
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow  # serves the web app in a process of its own
def test_demo_stopped_by_ctrl_c_exits_130(trained, tmp_path):
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time

    import httpx

    run, _ = trained
    with socket.socket() as s:  # a port free now
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    p = subprocess.Popen([sys.executable, "-m", "vaekit", "--threads", "1", "demo", str(run), "--port", str(port)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path,
                         preexec_fn=_sigint_default)
    try:
        said = p.stdout.readline()  # the app's address, printed before it serves
        assert f"http://127.0.0.1:{port}" in said, said + p.stdout.read()
        deadline = time.monotonic() + 300  # a guard against a server that never answers, not a timing
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and p.poll() is None, p.stdout.read()
                time.sleep(0.2)
        p.send_signal(signal.SIGINT)
        rest = p.communicate(timeout=300)[0]
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 130, said + rest
    assert "interrupted" in rest and "Traceback" not in rest


# --- 7. torchrun's variables, left over in a plain shell -----------------------------------------

def test_train_with_a_stale_rank_and_world_size_is_one_line_not_a_rendezvous(trained, tmp_path, monkeypatch):
    _, data = trained
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    text = one_line_exit_2(invoke("train", data, "--out", tmp_path / "run", *TINY))
    assert "RANK=1 WORLD_SIZE=2" in text and "torchrun" in text
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("env", [{"RANK": "1", "WORLD_SIZE": "2"}, {"RANK": "0", "WORLD_SIZE": "2"},
                                 {"LOCAL_RANK": "3"}])
def test_anomaly_score_with_stale_launcher_variables_scores_no_share_of_them(trained, tmp_path, monkeypatch, env):
    from vaekit.stream.shares import Shares

    def waited(self, timeout, progress=None):  # rank 0 of 2 waited for ever for a share no one scores
        raise RuntimeError("waited for the other shares")

    run, data = trained
    monkeypatch.setattr(Shares, "wait", waited)
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    text = one_line_exit_2(invoke("anomaly-score", run, data, "--threshold", "0", "-o", tmp_path / "s.csv"))
    assert "torchrun" in text and all(k in text for k in env)
    assert not list(tmp_path.iterdir())  # no share's journal waiting for a merge no one will do


def test_the_variables_of_a_world_of_one_are_taken_as_before(trained, tmp_path, monkeypatch):
    run, data = trained
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    for k, v in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(k, v)
    r = invoke("anomaly-score", run, data, "--threshold", "0", "-o", tmp_path / "s.csv")
    assert r.exit_code == 0 and (tmp_path / "s.csv").is_file(), r.output


# --- 8. a pixel cache inside the training folder ---------------------------------------------------

@pytest.mark.parametrize("where", ["sub", "", "sub/../x"])
def test_train_refuses_a_pixel_cache_inside_the_training_folder(trained, tmp_path, monkeypatch, where):
    _, data = trained
    no_training(monkeypatch)
    mine = tmp_path / "data"
    shutil.copytree(data, mine)
    before = files_of(mine)
    monkeypatch.setenv("VAEKIT_CACHE_DIR", str(mine / where) if where else str(mine))
    text = one_line_exit_2(invoke("train", mine, "--out", tmp_path / "run", *TINY))
    assert "VAEKIT_CACHE_DIR" in text and "inside the training folder" in text
    assert files_of(mine) == before and sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_the_api_refuses_a_cache_dir_inside_the_training_folder_but_not_under_a_hidden_one(trained, tmp_path,
                                                                                           monkeypatch):
    from vaekit.config import ModelConfig, TrainConfig
    from vaekit.errors import BadInput
    from vaekit.train import train

    _, data = trained
    no_training(monkeypatch)
    mine = tmp_path / "data"
    shutil.copytree(data, mine)
    model_cfg = ModelConfig(image_size=16, latent_dim=4, base_channels=4, layout="vector")
    train_cfg = TrainConfig(epochs=1, folds=0, augment="off")
    with pytest.raises(BadInput, match="cache_dir .* is inside the training folder"):
        train(mine, tmp_path / "run", model_cfg, train_cfg, cache_dir=mine / "cache")
    assert not (mine / "cache").exists() and not (tmp_path / "run").exists()
    # a hidden folder there, as the image search skips it (~/.cache/vaekit when training on ~): as before
    with pytest.raises(RuntimeError, match="training started"):
        train(mine, tmp_path / "run", model_cfg, train_cfg, cache_dir=mine / ".cache" / "vaekit")
