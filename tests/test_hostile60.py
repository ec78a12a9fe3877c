"""Hostile cases found in the sixtieth round: inputs that change under a finished job's feet."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from export_support import acting_model, random_job


def test_an_input_removed_after_its_batch_leaves_a_grey_tile_in_the_grid_not_a_failed_reconstruct(tmp_path):
    """The comparison grid decodes the first inputs again at the end. One removed after its batch
    was reconstructed failed the whole job there (exit 2, every PNG written, the journal left, and
    --resume refused, since the file list had changed): now its tile is grey and the job is done."""
    from vaekit.inference.reconstruct import reconstruct_to_folder

    run, images = random_job(tmp_path / "job", 6)
    gone = images / "img000.png"
    model = acting_model(run, "reconstruct", at=2, action=gone.unlink)  # as batch 2 of 3 begins
    report = reconstruct_to_folder(model, images, tmp_path / "out", batch_size=2, workers=0)
    assert not gone.exists() and len(report.names) == 6
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "comparison.png", *(f"img{i:03d}.png" for i in range(6))]
    assert not list((tmp_path / "out").glob("*.partial"))  # the job finished: no journal left
    with Image.open(report.grid) as g:
        grid = np.asarray(g)
    tile = grid[2:18, 2:18]  # the first input's place (2 px gaps, 16 px tiles)
    assert (tile == 128).all()
    again = np.asarray(Image.open(tmp_path / "out" / "img000.png"))
    np.testing.assert_array_equal(grid[2:18, 20:36], again)  # its reconstruction beside it


@pytest.mark.skipif(not hasattr(os, "O_TMPFILE"), reason="no unnamed files here: the lock is created, then written")
def test_a_share_opening_the_merge_lock_while_another_creates_it_never_finds_it_empty(tmp_path, monkeypatch):
    """OUT.merging was created, then written: a share that opened it in between read an empty file
    and refused it as "not vaekit's shard merge lock" (4 of 300 two-share races), and a SIGKILL
    there left an empty one that every later share refused. The name now appears only written."""
    import os

    from vaekit.stream import merge_lock as shares

    out, real_write, seen = tmp_path / "out.csv", os.write, []
    lock = shares.merging_path(out)

    def write(fd, data):
        if data == shares.LOCK_TEXT:  # a share about to write its lock's text: not yet under the name
            seen.append(os.path.lexists(lock) and os.stat(lock).st_ino == os.fstat(fd).st_ino)
            if len(seen) == 1:
                with shares.merge_lock(out) as mine:  # the second share, in that very instant
                    seen.append(mine)
        return real_write(fd, data)

    monkeypatch.setattr(shares.os, "write", write)
    with shares.merge_lock(out) as first:
        assert seen == [False, False, True] and first  # the second merged and let go; then the first took it
        assert lock.read_bytes() == shares.LOCK_TEXT
    assert not os.path.lexists(lock)


def test_where_the_lock_cannot_be_linked_in_whole_it_is_created_then_written(tmp_path, monkeypatch):
    """No /proc, or a file system that refuses linkat: the lock is made as before, created then written."""
    import os

    from vaekit.stream import merge_lock as shares

    out, real_link = tmp_path / "out.csv", os.link

    def link(src, dst, *a, **k):
        if str(src).startswith("/proc/self/fd/"):
            raise PermissionError(1, "linkat refused")
        return real_link(src, dst, *a, **k)

    monkeypatch.setattr(shares.os, "link", link)
    with shares.merge_lock(out) as mine:
        assert mine and shares.merging_path(out).read_bytes() == shares.LOCK_TEXT
        with shares.merge_lock(out) as other:  # another share meanwhile: vaekit's lock, held
            assert other is False
    assert not os.path.lexists(shares.merging_path(out)) and sorted(os.listdir(tmp_path)) == []


def test_reader_members_trained_side_by_side_are_the_members_trained_one_after_another():
    """The members now train in threads of their own, one torch thread each, when torch has more
    than one: the weights are those of the one-thread run, member for member, and torch's thread
    count is set back afterwards."""
    import torch

    from vaekit.reader.net import ReaderConfig
    from vaekit.reader.train import train_reader

    crops = np.random.default_rng(0).integers(0, 256, (40, 1, 32, 32), dtype=np.uint8)
    cfg = ReaderConfig(steps=12, members=3, batch=4, width=4, depth=2)
    seen, before = [], torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = train_reader(crops, None, cfg, seed=5)
        torch.set_num_threads(2)
        beside = train_reader(crops, None, cfg, seed=5, progress=lambda d, t, **m: seen.append((d, t)))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert alone.keys() == beside.keys()
    for k in alone:
        torch.testing.assert_close(alone[k], beside[k], rtol=0, atol=0)
    assert sorted(seen)[-1] == (36, 36) and len(seen) == 3  # each member's last step, counted over all
    first = [k for k in alone if k.startswith("members.0.") and alone[k].is_floating_point() and alone[k].ndim == 4][0]
    assert not torch.equal(alone[first], alone[first.replace("members.0.", "members.1.")])  # their own seeds


def test_a_run_directory_removed_while_training_is_not_made_again(tmp_path):
    """`rm -rf runs/x` (or `mv`) while `vaekit train` ran: the next epoch's writes made the folder
    again, holding a checkpoint, metrics and weights but no config.json or marker, so the job then
    failed with "run config not found" and `--overwrite` refused the folder as not vaekit's. Now
    the first write after it is refused, naming what happened, and nothing is made again."""
    import shutil

    from vaekit.config import ModelConfig, TrainConfig
    from vaekit.errors import InUse
    from vaekit.sample_data import write_digits
    from vaekit.train import train

    write_digits(tmp_path / "digits", size=16, n_anomalous=4)
    out = tmp_path / "run"

    def progress(done, total, phase=None, **m):
        if phase == "epoch" and done == 1 and out.exists():
            shutil.rmtree(out)

    with pytest.raises(InUse, match="was removed or moved while this process wrote it"):
        train(tmp_path / "digits" / "train", out, ModelConfig(image_size=16, latent_dim=4, base_channels=4),
              TrainConfig(epochs=4, device="cpu"), cache_dir=tmp_path / "cache", progress=progress)
    assert not out.exists()


def test_a_threshold_set_on_the_training_images_own_scores_promises_a_floor_not_a_rate(tmp_path):
    """One training image: nothing is held out, the threshold is its own score's, and the summary
    said "expected false positives 50%" while every new digit was flagged. It says "at least" now;
    a run with held-out images keeps its rate."""
    from cli_support import invoke

    folder = tmp_path / "one"
    folder.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16), np.uint8)).save(folder / "a.png")
    r = invoke("train", folder, "--out", tmp_path / "run", "--epochs", "1")
    assert r.exit_code == 0, r.output
    assert "at least 50% of normal images" in " ".join(r.output.split()), r.output
    shown = invoke("threshold", tmp_path / "run")
    assert shown.exit_code == 0 and "at least 50%" in " ".join(shown.output.split()), shown.output


def test_two_trainings_at_once_leave_torch_at_the_thread_count_they_found():
    """The web app trains tabs side by side, and the readers' training sets torch's (process-wide)
    thread count to one meanwhile: two overlapping trainings must not leave it at one."""
    import torch

    from vaekit.reader.members import one_thread

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        first = one_thread()
        assert first.__enter__() == 2 and torch.get_num_threads() == 1
        with one_thread() as second:  # begins while the first runs, ends before it
            assert second == 2
        assert torch.get_num_threads() == 1  # the first is still inside
        first.__exit__(None, None, None)
        assert torch.get_num_threads() == 2
        first = one_thread()
        first.__enter__()
        second = one_thread()
        second.__enter__()
        first.__exit__(None, None, None)  # the first ends before the second
        assert torch.get_num_threads() == 1
        second.__exit__(None, None, None)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_a_member_that_fails_stops_the_others_at_their_next_step():
    """Its error waited for the members before it to train every step (an out-of-memory error
    surfaced a member's whole training late)."""
    import time

    from vaekit.reader.members import train_members

    stopped = [False, False]

    def steady(k):
        def job(stop):  # runs until told to stop (a minute at most: the code before never told it)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if stop():
                    stopped[k] = True
                    break
                time.sleep(0.005)
            return k
        return job

    def failing(stop):
        raise MemoryError("a member ran out of memory")

    with pytest.raises(MemoryError, match="ran out of memory"):
        train_members([steady(0), failing, steady(1)], None, threads=2)
    assert stopped == [True, True]  # both told to stop by the failure, not left to run to their end


def test_a_run_that_failed_before_its_first_checkpoint_is_not_served_as_finished(tmp_path, monkeypatch):
    """A full disk at the first checkpoint left weights and config.json but no resume.json and no
    threshold: anomaly-score then scored with it (exit 0, "threshold: none") and export wrote it."""
    import errno

    from cli_support import invoke
    from vaekit.config import ModelConfig, TrainConfig
    from vaekit.sample_data import write_digits
    from vaekit.train import train
    from vaekit.training import checkpoint

    write_digits(tmp_path / "digits", size=16, n_anomalous=4)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_checkpoint", full)
    with pytest.raises(OSError):
        train(tmp_path / "digits" / "train", tmp_path / "run", ModelConfig(image_size=16, latent_dim=4, base_channels=4),
              TrainConfig(epochs=2, device="cpu"), cache_dir=tmp_path / "cache")
    monkeypatch.undo()
    assert (tmp_path / "run" / "model.safetensors").exists()
    for args in (("anomaly-score", tmp_path / "run", tmp_path / "digits" / "test" / "normal"),
                 ("export", tmp_path / "run", "-o", tmp_path / "m.onnx")):
        r = invoke(*args)
        assert r.exit_code == 2 and "stopped before its first checkpoint" in r.output, r.output
    assert not (tmp_path / "m.onnx").exists()


def test_a_full_disk_anywhere_is_one_line_and_exit_2_not_a_traceback(tmp_path, monkeypatch):
    """sample-data, export, a .vkc's spill and decode's move journal wrote without naming their
    failures: a full disk there was a traceback and exit 3."""
    import errno

    from cli_support import invoke
    from vaekit.sample_data import digits

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(digits, "write_manifest", full)
    r = invoke("sample-data", "digits", tmp_path / "d")
    assert r.exit_code == 2 and "No space left on device" in r.output and "Traceback" not in r.output, r.output


def test_a_full_disk_names_the_output_the_user_gave(tmp_path, monkeypatch):
    """Where the file's own write failed (the manifest, a .vkc's spill, export's graphs), the
    message said "cannot write the output": Python names no file on a failed write."""
    import errno
    from pathlib import Path

    from cli_support import invoke
    from export_support import random_job

    from vaekit.codec import container

    run, images = random_job(tmp_path / "job", 3)

    def full(method: str, hit) -> None:  # Path.<method> fails as a full disk for the paths `hit` takes
        real = getattr(Path, method)

        def write(self, *a, **k):
            if hit(self):
                raise OSError(errno.EFBIG, "File too large")
            return real(self, *a, **k)

        monkeypatch.setattr(Path, method, write)

    full("write_text", lambda p: p.name == "vaekit-sample-data.sha256")
    r = invoke("sample-data", "digits", tmp_path / "d")
    assert r.exit_code == 2 and "vaekit-sample-data.sha256: File too large" in r.output, r.output
    monkeypatch.undo()

    class Full:  # a spill file on a full disk
        closed = False

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self):
            self.closed = True

    real_init = container.Spill.__init__

    def spill(self, out):
        real_init(self, out)
        self._f.close()
        self._f = Full()

    monkeypatch.setattr(container.Spill, "__init__", spill)
    r = invoke("encode", run, images, "-o", tmp_path / "a.vkc", "--lossless")
    assert r.exit_code == 2 and f"cannot write {tmp_path / 'a.vkc'}" in " ".join(r.output.split()), r.output
    monkeypatch.undo()
    full("write_bytes", lambda p: p.suffix == ".onnx")
    r = invoke("export", run, "-o", tmp_path / "m.onnx")
    assert r.exit_code == 2 and f"cannot write {tmp_path / 'm.onnx'}" in " ".join(r.output.split()), r.output
    assert not list(tmp_path.glob(".m.onnx.vaekit-export-*"))  # its staging folder went


def test_a_shard_of_five_thousand_digits_is_a_bad_value_not_a_traceback():
    from cli_support import invoke

    from vaekit.errors import BadInput
    from vaekit.stream import parse_shard

    with pytest.raises(BadInput, match="invalid shard"):
        parse_shard("0/" + "9" * 5000)  # int() refuses more than 4,300 digits: a ValueError, exit 3
    r = invoke("anomaly-score", "no-such-run", ".", "--shard", "0/" + "9" * 5000)
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output


def test_an_image_whose_path_is_too_long_is_not_called_corrupt():
    from vaekit.images.read import _reason

    import errno

    assert _reason(OSError(errno.ENAMETOOLONG, "File name too long")) == "its path is longer than the file system takes"


def test_a_read_only_run_is_named_as_the_run_not_as_an_out_option_never_given(tmp_path, tmp_path_factory,
                                                                             monkeypatch):
    """`vaekit threshold RUN` on a run it may not write said "--out RUN: cannot write in ...": the
    run was the command's argument, and threshold has no --out."""
    import shutil

    from cli_support import invoke
    from export_support import exported

    import vaekit.fileio as fileio

    run = tmp_path / "run"
    shutil.copytree(exported(tmp_path_factory).run, run)  # a trained run, with its threshold
    real = fileio.os.access
    monkeypatch.setattr(fileio.os, "access",  # read-only for writing: what a read-only mount says
                        lambda p, mode, **k: False if mode & os.W_OK and str(p) == str(run.absolute()) else real(p, mode, **k))
    r = invoke("threshold", run, "--quantile", "0.9")
    assert r.exit_code == 2 and "cannot write in" in r.output and "--out" not in r.output, r.output
    assert f"the run {run}" in " ".join(r.output.split()), r.output
