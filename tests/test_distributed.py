"""Distributed training under a real torchrun (2 CPU processes, gloo), and the batch reader.

The torchrun runs are compared with single-process runs of the same seed and global batch:
every rank shuffles alike, takes an interleaved share of each global batch, and draws each
image's noise by its place in the global batch, so the losses agree up to float rounding.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vaekit
from vaekit import images
from vaekit.training import cache
from vaekit.config import ModelConfig, TrainConfig
from vaekit.training.data import gather
from vaekit.training.distributed import Dist
from vaekit.training.trainer import _share
from vaekit.train import train

pytestmark = pytest.mark.slow  # torchrun and training: left out by `dev.py test --fast`

# 31 images with val_fraction and calibration_fraction 0.1: 3 + 3 held out, 25 train, so the last global batch of 8 holds one image
# and rank 1 gets none (it must still take part in the gradient all-reduce). --folds 0: held-out splits, not the
# cross-fitting that fewer than 200 images get by default (it would train on all 31).
N_IMAGES, SIZE, BATCH, EPOCHS = 31, 16, 8, 2
ARGS = ["--image-size", str(SIZE), "--latent-dim", "4", "--base-channels", "8", "--batch-size", str(BATCH),
        "--device", "cpu", "--seed", "3", "--folds", "0", "--layout", "vector"]
# what `vaekit train` ARGS build (rectangles anywhere in the image are a surface to --layout auto,
# which would add a defect reader; this test is about the VAE's distributed training)
MODEL = ModelConfig(image_size=SIZE, channels=1, latent_dim=4, base_channels=8, layout="vector")
TRAIN = TrainConfig(epochs=EPOCHS, batch_size=BATCH, seed=3, device="cpu", folds=0)
RTOL = 1e-4


def write_rectangles(root: Path, n: int) -> Path:
    """Bright rectangles on a dark background: structure the VAE can learn in two epochs."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        x = np.full((SIZE, SIZE), 20, np.uint8)
        r, c = rng.integers(0, SIZE - 6, 2)
        h, w = rng.integers(3, 7, 2)
        x[r : r + h, c : c + w] = rng.integers(150, 256)
        Image.fromarray(x).save(root / f"rect{i:03d}.png")
    return root


def torchrun(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node 2 -m vaekit --threads 1 train ...` (a free port each time)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "vaekit", "--threads", "1", "train", *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The image folder, single-process reference runs (2 epochs, and one stopped after 1 to resume from), an env."""
    root = tmp_path_factory.mktemp("ddp")
    data = write_rectangles(root / "images", N_IMAGES)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref, _ = train(data, root / "single", MODEL, TRAIN, cache_dir=root / "cache")
        # the same 2-epoch run, stopped at the first step of epoch 2 (its schedule spans 2 epochs,
        # as the reference's does): it keeps epoch 1, which torchrun then resumes from
        steps = iter(range(10**6))
        per_epoch = -(-(N_IMAGES - 6) // BATCH)
        train(data, root / "single1", MODEL, TRAIN, cache_dir=root / "cache",
              should_stop=lambda: next(steps) >= per_epoch)
    finally:
        torch.set_num_threads(threads)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VAEKIT_CACHE_DIR": str(root / "cache"), "COLUMNS": "200"}
    env.pop("WORLD_SIZE", None)
    return root, data, ref, env


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_same_training(run: Path, ref: Path) -> None:
    got, want = metrics(run), metrics(ref)
    assert [m["epoch"] for m in got] == list(range(1, EPOCHS + 1))
    for g, w in zip(got, want):
        for key in ("train_loss", "train_recon", "train_kl", "val_loss"):
            assert g[key] == pytest.approx(w[key], rel=RTOL), (g["epoch"], key)
    assert want[0]["train_loss"] - want[-1]["train_loss"] > 1.0  # it learned something to agree on
    a = vaekit.load(run).info.threshold
    b = vaekit.load(ref).info.threshold
    assert a == pytest.approx(b, rel=RTOL)


def test_torchrun_two_processes_match_one(setup):
    root, data, ref, env = setup
    run = root / "ddp"
    done = torchrun([str(data), "--out", str(run), "--epochs", str(EPOCHS), *ARGS], env)

    # the run directory is complete, has no temp files, and describes the same training
    assert sorted(p.name for p in run.iterdir()) == [".vaekit-run", ".vaekit.lock", "checkpoint", "config.json",
                                                     "metrics.jsonl", "model.safetensors", "preview.png"]
    listing = [sorted(p.name for p in (r / "checkpoint").iterdir()) for r in (run, ref.run_dir)]
    assert listing[0] == listing[1] and len(listing[0]) == 2  # the last checkpoint and resume.json
    cfg, ref_cfg = (json.loads((r / "config.json").read_text()) for r in (run, ref.run_dir))
    assert cfg["model"] == ref_cfg["model"] and cfg["train"] == ref_cfg["train"]
    assert (cfg["data"]["train_images"], cfg["data"]["val_images"], cfg["data"]["calibration_images"]) == (25, 3, 3)
    assert_same_training(run, ref.run_dir)

    # loadable, and it scores like the single-process model
    x = images.load_images(sorted(data.iterdir())[:5], SIZE, 1).images
    got = vaekit.load(run).score(x).score
    want = vaekit.load(ref.run_dir).score(x).score
    np.testing.assert_allclose(got, want, rtol=RTOL)

    # only rank 0 reports progress: one line per epoch
    for epoch in range(1, EPOCHS + 1):
        assert (done.stdout + done.stderr).count(f"epoch {epoch:>3}  train") == 1, done.stderr
    assert done.stdout.count("trained ") == 1, done.stdout


def test_torchrun_resumes_a_single_process_run(setup):
    root, data, ref, env = setup
    run = root / "resumed"
    shutil.copytree(root / "single1", run)
    done = torchrun([str(data), "--out", str(run), "--resume", "--epochs", str(EPOCHS)], env)
    out = done.stdout + done.stderr
    assert "epoch   1  train" not in out and out.count("epoch   2  train") == 1
    assert metrics(run)[0] == metrics(root / "single1")[0]  # the first epoch is kept as it was
    assert_same_training(run, ref.run_dir)


# Run as `torchrun ... THIS_SCRIPT train ...`: rank 1 adds a file to the folder just before it scans
# it, after rank 0 has read the folder, as a file arriving while a torchrun job starts would.
ADD_BETWEEN_RANKS = """
import os, shutil, sys
import vaekit.training.job as job
first = job._first_rank_first
def racing(dist, load, progress):
    def late(report):
        shutil.copy(os.environ["RACE_SRC"], os.environ["RACE_DST"])
        return load(report)
    return first(dist, late if dist.local_rank else load, progress)
job._first_rank_first = racing
from vaekit_cli.main import main
sys.argv = ["vaekit", *sys.argv[1:]]
main()
"""


def test_torchrun_refuses_a_folder_that_changed_between_the_ranks_reads(setup, tmp_path):
    """Rank 1 scans the folder after rank 0 (which fills the pixel cache): a file added in
    between gave the ranks different images. With the same number of steps the run trained on
    each rank's own splits and exited 0 (another model, recorded as rank 0's images); now every
    rank says so in one line, exit 2, and nothing is written."""
    root, data, ref, env = setup
    folder = tmp_path / "images"
    shutil.copytree(data, folder)
    script = tmp_path / "race.py"
    script.write_text(ADD_BETWEEN_RANKS)
    env = {**env, "RACE_SRC": str(folder / "rect000.png"), "RACE_DST": str(folder / "zz_added.png")}
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
           "--threads", "1", "train", str(folder), "--out", str(run), "--epochs", "1", *ARGS]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 2 and lines[0] == lines[1], done.stderr
    assert "changed while the 2 processes read them" in lines[0] and "rank 0: 31, rank 1: 32" in lines[0]
    assert "bug in vaekit" not in done.stderr
    assert re.search(r"exitcode\s*:\s*2\b", done.stderr), done.stderr
    assert not run.exists()


def test_every_image_gets_the_same_noise_row_on_any_number_of_ranks():
    batch = np.random.default_rng(1).permutation(50)[:13]
    single, rows, n = _share(batch, Dist())
    assert n == 13 and list(single) == sorted(batch)
    want = dict(zip(single.tolist(), rows.tolist()))
    assert [want[i] for i in batch] == list(range(13))  # row = place in the global batch
    for world in (2, 3, 8):
        got = {}
        for rank in range(world):
            mine, rows, n = _share(batch, Dist(rank, world))
            assert n == 13 and list(mine) == sorted(mine)
            got.update(zip(mine.tolist(), rows.tolist()))
        assert got == want


def make_cache(tmp_path: Path, n: int = 300) -> np.memmap:
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i:04d}.png")
    entry = cache.load_cached(images.find_images(folder), 32, 3, cache_dir=tmp_path / "cache")
    entry = cache.load_cached(entry.paths, 32, 3, cache_dir=tmp_path / "cache")  # now a hit: a read-only memmap
    assert entry.hit and isinstance(entry.images, np.memmap)
    return entry.images


def test_gather_reads_the_same_pixels_as_indexing(tmp_path):
    arr = make_cache(tmp_path)
    cases = [np.arange(300), np.array([5]), np.array([0, 1, 2, 7, 8, 299]), np.array([9, 3, 4, 3, 200]),
             np.random.default_rng(2).permutation(300)[:64]]
    for idx in cases:
        got = gather(arr, idx)
        assert type(got) is np.ndarray and got.shape == (len(idx), 3, 32, 32)
        np.testing.assert_array_equal(got, np.asarray(arr)[idx])
    np.testing.assert_array_equal(gather(np.asarray(arr).copy(), cases[-1]), np.asarray(arr)[cases[-1]])
    np.testing.assert_array_equal(gather(arr[10:20], np.array([0, 9])), np.asarray(arr)[[10, 19]])  # a view
    with pytest.raises(IndexError, match="out of range for 300 images"):
        gather(arr, np.array([3, 300]))
    want = np.asarray(arr)[cases[2]].copy()
    Path(arr.filename).unlink()  # the cache cleared under a running training: the mapping still reads
    np.testing.assert_array_equal(gather(arr, cases[2]), want)


def mapped_kib(path: Path) -> int:
    """Resident KiB of this process's mappings of `path` (Linux /proc/self/smaps)."""
    total, mine = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if re.match(r"[0-9a-f]+-[0-9a-f]+ ", line):  # a mapping's header line; the file name ends it
            mine = line.split()[-1] == str(path)
        elif mine and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


def test_reading_batches_leaves_the_cache_out_of_resident_memory(tmp_path):
    arr = make_cache(tmp_path)
    path = Path(arr.filename)
    for s in range(0, 300, 64):
        gather(arr, np.arange(s, min(s + 64, 300)))
    assert mapped_kib(path) == 0  # read through the page cache, not the mapping
    np.asarray(arr)[np.arange(300)]
    assert mapped_kib(path) >= 800  # what indexing the memmap would have cost: ~900 KiB
