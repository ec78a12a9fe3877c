"""Hostile inputs, pass 21: the environment and the training folder changing under a run.

- a VAEKIT_CACHE_DIR or XDG_CACHE_HOME naming the home folder of a user this machine does not know
  (`~nosuchuser/cache`) was a RuntimeError traceback and exit 3, not one line naming the setting;
- an image replaced with a truncated file of the same size and modification time between a stop and
  its --resume was skipped by the resumed session: 23 images split anew, so images held out for
  validation and calibration were trained on, and config.json still said 24.
- a folder made by hand at a name a run writes (model.safetensors, preview.png, .vaekit-run, ...):
  `train --overwrite` deleted the run's files and trained, then stopped at the write with exit 2,
  leaving a gutted run; `--resume` trained an epoch first, then stopped the same way.
- `vaekit threshold model.onnx` on an install without torch (the runtime extra only) said "this needs
  torch, pip install vaekit[train]" instead of that an export's threshold is moved in its run.
- the web app's Train tab on an install without torch (`vaekit demo model.onnx`) waited for ever:
  its worker thread died importing torch before it could report, holding one of the four training slots.

Real components: a 16 px model trained through the CLI on generated images in tmp_path.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from PIL import Image

import built_once
from cli_support import invoke, one_line_exit_2

TINY = ["--epochs", "1", "--image-size", "16", "--workers", "0", "--layout", "vector", "--folds", "0",
        "--base-channels", "4", "--latent-dim", "4", "--batch-size", "8", "--augment", "off"]


def write_images(folder, n=24):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray((rng.random((16, 16)) * 255).astype(np.uint8)).save(folder / f"{i:02d}.png")
    return folder


@pytest.mark.parametrize("variable", ["VAEKIT_CACHE_DIR", "XDG_CACHE_HOME"])
def test_a_cache_folder_under_an_unknown_users_home_is_one_line_naming_the_setting(tmp_path, monkeypatch, variable):
    data = write_images(tmp_path / "data")
    monkeypatch.delenv("VAEKIT_CACHE_DIR", raising=False)
    monkeypatch.setenv(variable, "~no-such-user-h21/cache")
    r = invoke("train", data, "--out", tmp_path / "run", *TINY)
    assert variable in one_line_exit_2(r)
    assert not (tmp_path / "run").exists()


def test_a_resume_whose_image_no_longer_decodes_is_refused_not_split_anew(tmp_path, monkeypatch):
    monkeypatch.setenv("VAEKIT_CACHE_DIR", str(tmp_path / "cache"))
    data, run = write_images(tmp_path / "data"), tmp_path / "run"
    assert invoke("train", data, "--out", run, *TINY).exit_code == 0
    image = data / "05.png"
    good = image.read_bytes()
    stat = image.stat()
    image.write_bytes(good[:50].ljust(len(good), b"\0"))  # same size, same time: the same fingerprint
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    before = {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".vaekit.lock"}

    r = invoke("train", data, "--out", run, "--resume", *TINY[:1], "2", *TINY[2:])
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    said = r.output.strip().splitlines()[-1]  # after the decoding pass's progress line
    assert said.startswith("error: ") and "05.png no longer decodes" in said, r.output
    after = {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".vaekit.lock"}
    assert after == before

    image.write_bytes(good)  # the very file again: the resume goes on
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert invoke("train", data, "--out", run, "--resume", *TINY[:1], "2", *TINY[2:]).exit_code == 0
    shutil.rmtree(tmp_path / "cache")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """data/ and the run/ that `train data --out run TINY` made of it, once for the module: copy, never change."""
    root = tmp_path_factory.mktemp("tiny-run")
    mp = pytest.MonkeyPatch()
    mp.setenv("VAEKIT_CACHE_DIR", str(root / "cache"))
    try:
        assert invoke("train", write_images(root / "data"), "--out", root / "run", *TINY).exit_code == 0
    finally:
        mp.undo()
    return root


@pytest.mark.parametrize("name", ["model.safetensors", "metrics.jsonl", "preview.png", "checkpoint/resume.json",
                                  ".vaekit-run"])
@pytest.mark.parametrize("how", ["--overwrite", "--resume"])
def test_a_folder_at_a_name_the_run_writes_is_refused_before_the_run_is_cleared_or_trained(tmp_path, monkeypatch,
                                                                                          tiny_run, name, how):
    monkeypatch.setenv("VAEKIT_CACHE_DIR", str(tmp_path / "cache"))
    # the module's run, copied; its images are the module's own, which no test changes (a copy of them
    # would be other images to --resume, which names each file by its real path)
    data, run = tiny_run / "data", built_once.copy(tiny_run / "run", tmp_path / "run")
    (run / name).unlink()
    (run / name).mkdir()
    (run / name / "mine.txt").write_text("kept")
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".vaekit.lock"}

    r = invoke("train", data, "--out", run, how, *TINY[:1], "2", *TINY[2:])
    assert name in one_line_exit_2(r) and "epoch" not in r.output  # not after an epoch was trained
    after = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".vaekit.lock"}
    assert after == before


BLOCK_TORCH = """
import sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, NoTorch())
"""  # a child Python on an install without torch

NO_TORCH = BLOCK_TORCH + """
sys.argv = ["vaekit", "--threads", "1", *sys.argv[1:]]
from vaekit_cli.main import main
main()
"""


def test_threshold_given_an_export_says_so_on_an_install_without_torch(tmp_path):
    import subprocess
    import sys

    export = tmp_path / "model.onnx"
    export.write_bytes(b"an export; threshold refuses any file before reading it")
    r = subprocess.run([sys.executable, "-c", NO_TORCH, "threshold", str(export)], capture_output=True, text=True,
                       timeout=300, env={**os.environ, "COLUMNS": "300"})
    assert r.returncode == 2 and "is a file" in r.stderr and "torch" not in r.stderr, r.stderr


TRAIN_TAB_NO_TORCH = BLOCK_TORCH + """
import threading
from vaekit_demo.training import train_events
slot = threading.Semaphore(1)
slot.acquire()
try:
    list(train_events(sys.argv[1], sys.argv[2], 16, 4, 1, threading.Event(), slot))
except ModuleNotFoundError as e:
    print("raised", e.name)
print("slot given back", slot.acquire(blocking=False))
"""


def test_the_train_tab_without_torch_says_so_and_gives_its_slot_back_instead_of_hanging(tmp_path):
    import subprocess
    import sys

    data = write_images(tmp_path / "data", n=4)
    r = subprocess.run([sys.executable, "-c", TRAIN_TAB_NO_TORCH, str(data), str(tmp_path / "run")],
                       capture_output=True, text=True, timeout=300)  # it waited for ever for its worker
    assert r.stdout.split("\n")[:2] == ["raised torch", "slot given back True"], r.stdout + r.stderr
