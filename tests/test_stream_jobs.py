"""Inference jobs that stream: anomaly-score and encode killed and resumed, sharded, under a real
torchrun, and in bounded memory (no step holds the whole folder).

The model is untrained (random weights, 16x16 gray): these tests are about which rows end up in
which file, not about detection, and every comparison is exact (byte for byte).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import vaekit
from export_support import random_run
from vaekit import anomaly, codes, stream
from vaekit.inference import reconstruct
from vaekit.errors import BadInput
from vaekit_cli.main import app

N_IMAGES = 90  # with --batch-size 4: 23 batches, the last one short
BATCH = "4"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("jobs")
    run = random_run(root / "run", image_size=16, channels=1, latent_dim=4, base_channels=4)
    data = root / "images"
    rng = np.random.default_rng(0)
    for i in range(N_IMAGES):
        folder = data / ("a" if i % 3 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (16 + i % 5, 16), np.uint8)).save(folder / f"img{i:03d}.png")
    (data / "a" / "broken.png").write_bytes(b"not a png")  # a skipped file in the middle
    return root, run, data


def invoke(*args):
    return CliRunner().invoke(app, ["--threads", "1", *map(str, args)])


def score(setup, out: Path, *extra) -> bytes:
    _, run, data = setup
    r = invoke("anomaly-score", run, data, "-o", out, "--batch-size", BATCH, "--threshold", "0", *extra)
    assert r.exit_code == 0, r.output
    return out.read_bytes()


@pytest.fixture(scope="module")
def reference(setup, tmp_path_factory):
    """The uninterrupted, unsharded outputs: CSV and JSON."""
    where = tmp_path_factory.mktemp("reference")
    return {fmt: score(setup, where / f"scores.{fmt}") for fmt in ("csv", "json")}


def test_streamed_rows_are_those_of_score_images(setup, reference):
    _, run, data = setup
    report = anomaly.score_images(vaekit.load(run), data, threshold=0.0, batch_size=4)  # the same slices
    assert anomaly.rows_csv(report.rows).encode() == reference["csv"]
    assert len(report.rows) == N_IMAGES and [p.name for p, _ in report.skipped] == ["broken.png"]


@pytest.mark.slow
def test_resume_after_sigkill_at_random_moments_gives_the_same_rows(setup, reference, tmp_path):
    """Kill `vaekit anomaly-score` (SIGKILL: no clean-up) when its journal holds a random number
    of batches, again and again, then let --resume finish: the file equals an uninterrupted run's."""
    _, run, data = setup
    out = tmp_path / "scores.csv"
    partial = Path(f"{out}.partial")
    cmd = [sys.executable, "-m", "vaekit", "--threads", "1", "anomaly-score", str(run), str(data), "-o", str(out),
           "--batch-size", BATCH, "--threshold", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rng = np.random.default_rng(1)
    kills = 0
    for target in sorted(rng.choice(np.arange(2, 22), 4, replace=False)):
        p = subprocess.Popen(cmd + (["--resume"] if kills else []), env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while p.poll() is None and time.monotonic() < deadline:
            lines = partial.read_bytes().count(b"\n") if partial.exists() else 0
            if lines > target:  # the settings line, then one line per batch
                p.send_signal(signal.SIGKILL)
                break
            time.sleep(0.002)
        p.wait()
        assert p.returncode in (0, -signal.SIGKILL), p.stderr.read().decode()
        kills += p.returncode == -signal.SIGKILL
        if p.returncode == 0:
            break
        assert not out.exists() and partial.exists()
    assert kills >= 1  # at least one kill landed mid-job
    r = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == reference["csv"]
    assert not partial.exists()


def test_a_leftover_journal_needs_resume_and_the_same_settings(setup, tmp_path):
    _, run, data = setup
    out = tmp_path / "s.csv"
    Path(f"{out}.partial").write_text('{"vaekit_journal": 1, "job": "encode"}\n')
    r = invoke("anomaly-score", run, data, "-o", out, "--batch-size", BATCH)
    assert r.exit_code == 2 and "--resume" in r.output
    r = invoke("anomaly-score", run, data, "-o", out, "--batch-size", BATCH, "--resume")
    assert r.exit_code == 2 and "other settings" in r.output and not out.exists()


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_two_shards_merge_into_the_unsharded_file(setup, reference, tmp_path, fmt):
    _, run, data = setup
    out = tmp_path / f"scores.{fmt}"
    r = invoke("anomaly-score", run, data, "-o", out, "--batch-size", BATCH, "--threshold", "0", "--shard", "1/2")
    assert r.exit_code == 0, r.output
    assert not out.exists() and "share 1/2 scored" in r.output.replace("\n", " ")
    r = invoke("anomaly-score", run, data, "-o", out, "--batch-size", BATCH, "--threshold", "0", "--shard", "0/2")
    assert r.exit_code == 0, r.output
    assert out.read_bytes() == reference[fmt]
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # journals and lock gone


def test_shards_take_whole_batches_in_turn(setup):
    _, _, data = setup
    paths = stream.find_inputs(data).paths
    mine = [stream.shard(paths, i, 3, 4) for i in range(3)]
    assert sorted(sum(mine, [])) == list(range(len(paths)))
    assert mine[1][:4] == [4, 5, 6, 7] and mine[0][4:8] == [12, 13, 14, 15]


def test_bad_shards_and_resume_without_output_are_refused(setup, tmp_path):
    _, run, data = setup
    for shard in ("2/2", "x", "1/0"):
        r = invoke("anomaly-score", run, data, "-o", tmp_path / "s.csv", "--shard", shard)
        assert r.exit_code == 2 and "shard" in r.output, r.output
    r = invoke("anomaly-score", run, data, "--resume")
    assert r.exit_code == 2 and "-o" in r.output


def _stop_in_fourth_batch(model, data, out, maps) -> list[int]:
    """Ctrl-C in the job's fourth batch (batch_size 4); the sizes of the batches scored."""
    calls, real = [], model.score

    def dying(x, **kw):
        calls.append(len(x))
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(x, **kw)

    model.score = dying
    try:
        with pytest.raises(KeyboardInterrupt):
            anomaly.score_to_file(model, data, out, maps, threshold=0.0, batch_size=4)
    finally:
        model.score = real
    return calls


def test_heat_maps_are_written_batch_by_batch_and_resume_keeps_them(setup, tmp_path):
    _, run, data = setup
    out, maps = tmp_path / "s.csv", tmp_path / "maps"
    model = vaekit.load(run)
    calls = _stop_in_fourth_batch(model, data, out, maps)
    first = sum(calls[:3])  # 11: broken.png is in the first batch
    assert len(list(maps.rglob("*.png"))) == first and not out.exists()
    report = anomaly.score_to_file(model, data, out, maps, threshold=0.0, batch_size=4, resume=True)
    assert report.resumed == 3 and report.maps == N_IMAGES - first
    assert len(list(maps.rglob("*.png"))) == N_IMAGES and report.count == N_IMAGES


def test_resume_rewrites_the_maps_of_a_batch_stopped_before_its_journal_line(setup, tmp_path):
    _, run, data = setup
    out, maps = tmp_path / "s.csv", tmp_path / "maps"
    model = vaekit.load(run)
    anomaly.score_to_file(model, data, tmp_path / "whole.csv", tmp_path / "whole", threshold=0.0, batch_size=4)
    _stop_in_fourth_batch(model, data, out, maps)
    # as if the fourth batch's maps were written just before the stop, its journal line not: the
    # very bytes the job writes (one with other bytes is not its own: tests/test_hostile14.py)
    fourth = anomaly.map_targets(stream.find_inputs(data).names)[12:16]
    for rel in fourth:
        (maps / rel).write_bytes((tmp_path / "whole" / rel).read_bytes())
    with pytest.raises(BadInput, match="heat map"):  # a new job may not replace them
        anomaly.score_to_file(model, data, tmp_path / "other.csv", maps, threshold=0.0, batch_size=4)
    report = anomaly.score_to_file(model, data, out, maps, threshold=0.0, batch_size=4, resume=True)
    assert report.resumed == 3 and report.count == N_IMAGES
    assert out.read_bytes() == (tmp_path / "whole.csv").read_bytes()
    assert all((maps / rel).read_bytes() == (tmp_path / "whole" / rel).read_bytes() for rel in fourth)


@pytest.mark.slow
def test_torchrun_two_processes_write_one_file_equal_to_one_process(setup, reference, tmp_path):
    _, run, data = setup
    out = tmp_path / "scores.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "vaekit", "--threads", "1", "anomaly-score", str(run), str(data), "-o", str(out),
           "--batch-size", BATCH, "--threshold", "0"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert out.read_bytes() == reference["json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]


# --- encode ------------------------------------------------------------------------------------

@pytest.mark.parametrize("precision", codes.PRECISIONS)
def test_streamed_code_file_is_byte_equal_to_the_in_memory_one(setup, tmp_path, precision):
    _, run, data = setup
    model = vaekit.load(run)
    rep = codes.encode_folder(model, data, tmp_path / "c.codes", precision, batch_size=4)
    # the same latents, computed over the same slices (float results depend on the batch), all in memory
    found = stream.find_inputs(data)
    batches = list(stream.iter_batches(found.paths, 16, 1, 4))
    mu = np.concatenate([model.encode(b.images)[0] for b in batches])
    kept = [p for b in batches for p in b.paths]
    sizes = np.array([codes.original_size(p) for p in kept], np.int32)
    names = [stream.relative_name(p, [data]) for p in kept]
    c, scale, offset = codes.quantize(mu, precision)
    cf = codes.CodeFile(c, names, sizes, precision, model.info.fingerprint, 16, 1, scale, offset)
    assert (tmp_path / "c.codes").read_bytes() == codes.to_bytes(cf)
    assert rep.count == N_IMAGES and rep.file_bytes == (tmp_path / "c.codes").stat().st_size
    assert [p.name for p, _ in rep.skipped] == ["broken.png"]


def test_encode_resumes_a_killed_job(setup, tmp_path):
    _, run, data = setup
    model = vaekit.load(run)
    whole = codes.encode_folder(model, data, tmp_path / "whole.codes", "q8", batch_size=4)
    real, calls = model.encode, []

    def dying(x):
        calls.append(len(x))
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(x)

    model.encode = dying
    with pytest.raises(KeyboardInterrupt):
        codes.encode_folder(model, data, tmp_path / "c.codes", "q8", batch_size=4)
    assert not (tmp_path / "c.codes").exists() and (tmp_path / "c.codes.partial").exists()
    model.encode = real
    r = invoke("encode", run, data, "-o", tmp_path / "c.codes")  # without --resume: refused, nothing lost
    assert r.exit_code == 2 and "--resume" in r.output
    calls.clear()
    model.encode = lambda x: calls.append(len(x)) or real(x)
    codes.encode_folder(model, data, tmp_path / "c.codes", "q8", batch_size=4, resume=True)
    assert sum(calls) == N_IMAGES - 15  # the four finished batches (one file broken) were not encoded again
    assert (tmp_path / "c.codes").read_bytes() == whole.path.read_bytes()
    assert not (tmp_path / "c.codes.partial").exists()


# --- bounded memory ------------------------------------------------------------------------------

def test_no_job_decodes_or_scores_the_whole_folder_at_once(setup, tmp_path, monkeypatch):
    """Every inference job reads through vaekit.stream in batches: the all-at-once loader is
    never called, and the engine never sees more than one batch."""
    from vaekit.images import load as image_load

    _, run, data = setup
    model = vaekit.load(run)

    def whole_folder(*a, **k):
        raise AssertionError("the whole folder was decoded at once")

    for module in (image_load, vaekit.images):
        monkeypatch.setattr(module, "load_images", whole_folder)
    model.load_images = whole_folder
    seen = []
    for name in ("score", "encode", "reconstruct"):
        real = getattr(model, name)
        setattr(model, name, lambda x, _real=real, **kw: seen.append(len(x)) or _real(x, **kw))
    anomaly.score_to_file(model, data, tmp_path / "s.json", tmp_path / "maps", threshold=0.0, batch_size=4)
    codes.encode_folder(model, data, tmp_path / "c.codes", batch_size=4)
    reconstruct.reconstruct_to_folder(model, data, tmp_path / "rec", batch_size=4)
    anomaly.score_to_file(model, data, batch_size=4)
    assert seen and max(seen) <= 4
