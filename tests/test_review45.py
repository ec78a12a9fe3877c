"""Review 45: bugs found in the pixel cache's bound, the no-replace writes and their callers."""

from __future__ import annotations

import numpy as np
from PIL import Image

from test_cache_limit import folder as _folder  # four 16 px RGB images, seeded
from vaekit.training import cache


def test_an_entry_just_built_is_not_lost_to_another_runs_bound_while_it_is_read_back(tmp_path, monkeypatch):
    """Run A builds its entry; while A reads it back (its sha256: minutes for a large entry),
    run B, using another entry, applies the bound (VAEKIT_CACHE_MAX_GB=0, or a cache too small
    for both) and removes A's entry. A had its pixels: it must go on with them, not fail with
    'could not be read back' (CannotWrite past MEMORY_FALLBACK) after all its decoding."""
    root = tmp_path / "cache"
    other = cache.load_cached(_folder(tmp_path / "b", 1), 16, 3, cache_dir=root).key
    monkeypatch.setenv("VAEKIT_CACHE_MAX_GB", "0")
    monkeypatch.setattr(cache, "MEMORY_FALLBACK", 0)  # as for any entry over 1 GB
    real = cache.open_file_sha256
    fired = []

    def sha_then_other_run(path):
        digest = real(path)
        if not fired:  # run B's use of its own entry, between A's checksum and A's mapping
            fired.append(1)
            cache._used(root, other, 0)
        return digest

    monkeypatch.setattr(cache, "open_file_sha256", sha_then_other_run)
    paths = _folder(tmp_path / "a", 2)
    got = cache.load_cached(paths, 16, 3, cache_dir=root)
    assert fired and got.images.shape == (4, 3, 16, 16)
    expected = np.stack([np.asarray(Image.open(p)).transpose(2, 0, 1) for p in paths])
    assert np.array_equal(np.asarray(got.images), expected)


def test_a_hit_read_while_another_run_removes_it_is_still_a_hit(tmp_path, monkeypatch):
    """The same on a hit: removed between its checksum and its mapping, the entry was decoded again."""
    root = tmp_path / "cache"
    paths = _folder(tmp_path / "a", 2)
    mine = cache.load_cached(paths, 16, 3, cache_dir=root).key
    other = cache.load_cached(_folder(tmp_path / "b", 1), 16, 3, cache_dir=root).key
    import os
    os.utime(root / f"{mine}.json", (1000, 1000))  # A's entry used longest ago
    real = cache.open_file_sha256
    fired = []

    def sha_then_other_run(path):
        digest = real(path)
        if not fired:
            fired.append(1)
            cache._used(root, other, 0)
        return digest

    monkeypatch.setattr(cache, "open_file_sha256", sha_then_other_run)
    got = cache.load_cached(paths, 16, 3, cache_dir=root)
    assert fired and got.hit and got.key == mine


def test_a_staged_move_never_replaces_a_file_put_at_its_target_after_the_look(tmp_path, monkeypatch):
    """decode without --overwrite (staged(replace=False)) looked at each target, then renamed onto
    it: a file put there between the two was replaced, and then unlinked as 'ours' if a later
    move failed. The move itself must refuse it (a hard link, as atomic_writer(replace=False))."""
    import os
    import pytest
    from vaekit.errors import OutputExists
    from vaekit.fileio import staging

    out = tmp_path / "out"
    targets = [out / "a.png", out / "b.png"]
    users = b"the user's file"
    real_replace, real_link = os.replace, os.link

    def put_first(src, dst, *a, **kw):  # the user's file lands just after the look
        if os.fspath(dst) == os.fspath(targets[1]) and not os.path.lexists(dst):
            targets[1].write_bytes(users)
        return (real_link if put_first.link else real_replace)(src, dst, *a, **kw)

    monkeypatch.setattr(staging.os, "replace", lambda s, d, **kw: (setattr(put_first, "link", False),
                                                                   put_first(s, d, **kw))[1])
    monkeypatch.setattr(staging.os, "link", lambda s, d, **kw: (setattr(put_first, "link", True),
                                                                put_first(s, d, **kw))[1])
    with pytest.raises(OutputExists, match="b.png appeared while this job ran"):
        with staging.staged(out, targets, replace=False) as paths:
            for p in paths:
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(b"ours")
    assert targets[1].read_bytes() == users
    assert not targets[0].exists()  # all or nothing: the PNG moved before is taken back
    assert sorted(q.name for q in out.iterdir()) == ["b.png"]  # no staging folder, no temporary file


def test_a_staged_move_across_file_systems_still_lands_and_still_never_replaces(tmp_path, monkeypatch):
    """EXDEV (a target folder on another file system): no hard link and no rename there, the copy
    beside the target is put in place, and not over a file put there meanwhile either."""
    import errno
    import os
    import pytest
    from vaekit.errors import OutputExists
    from vaekit.fileio import staging

    real_replace, real_link = os.replace, os.link

    def crossing(real):
        def move(s, d, **kw):
            if ".vaekit-decode-" in os.fspath(s) and ".vaekit-decode-" not in os.fspath(d):
                raise OSError(errno.EXDEV, "Invalid cross-device link")
            return real(s, d, **kw)
        return move

    monkeypatch.setattr(staging.os, "replace", crossing(real_replace))
    monkeypatch.setattr(staging.os, "link", crossing(real_link))
    out = tmp_path / "out"
    targets = [out / "a.png", out / "sub" / "b.png"]
    with staging.staged(out, targets, replace=False) as paths:
        for p, data in zip(paths, (b"A", b"B")):
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
    assert [t.read_bytes() for t in targets] == [b"A", b"B"]
    assert not [p for p in out.rglob(".*")]

    out2 = tmp_path / "out2"
    targets = [out2 / "a.png", out2 / "b.png"]
    real_copy = staging.shutil.copyfile

    def copy_then_user(src, dst):  # the user's file lands while the copy is made
        r = real_copy(src, dst)
        if "b.png" in os.fspath(dst):
            targets[1].write_bytes(b"users")
        return r

    monkeypatch.setattr(staging.shutil, "copyfile", copy_then_user)
    with pytest.raises(OutputExists, match="appeared while this job ran"):
        with staging.staged(out2, targets, replace=False) as paths:
            for p in paths:
                p.write_bytes(b"ours")
    assert targets[1].read_bytes() == b"users" and not targets[0].exists()
    assert sorted(p.name for p in out2.iterdir()) == ["b.png"]


def test_encode_resumes_a_journal_its_default_batch_began_under_an_older_default(tmp_path_factory, tmp_path,
                                                                                  monkeypatch):
    """A journal begun with the old default (256 files, however large the codes) and resumed by the
    same command once the default is bounded by code bytes: 'started with other settings
    (batch_size 256 then, 95 now); use the same command' of the same command. Without --batch-size,
    a resume goes on in the journal's batches."""
    import built_once
    import pytest
    import vaekit
    from vaekit.codes import batch_size as batches, jobs

    washers = built_once.washers(tmp_path_factory, tmp_path_factory.mktemp("review45-washers"))
    model = vaekit.load(washers / "run", device="cpu")
    out = tmp_path / "x.codes"
    monkeypatch.setattr(batches, "BATCH_SIZE", 4)  # the old default: 4 files a batch, whatever their codes
    real, calls = model.encode, []

    def stopped(x, *a, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # killed in its third batch
        return real(x, *a, **kw)

    monkeypatch.setattr(model, "encode", stopped)
    with pytest.raises(KeyboardInterrupt):
        jobs.encode_folder(model, washers / "train", out)
    monkeypatch.setattr(model, "encode", real)
    monkeypatch.setattr(batches, "BATCH_SIZE", 3)  # the default now: 3 a batch (a journal's batches past the
    report = jobs.encode_folder(model, washers / "train", out, resume=True)  # line bound are damaged: test_hostile19)
    assert report.resumed == 2 and report.count == 20
    whole = jobs.encode_folder(model, washers / "train", tmp_path / "whole.codes", batch_size=256)
    assert out.read_bytes() == (tmp_path / "whole.codes").read_bytes()


def test_a_resume_does_not_replace_a_comparison_grid_the_job_did_not_write(tmp_path_factory, tmp_path):
    """A file put at comparison.png while reconstruct ran stops the job ('appeared while this job
    ran ... run the job again with --resume'); the --resume then wrote over it unasked (a resumed
    job's grid was always replaced, as the job's own). Only the job's own grid (a run killed
    between the grid and its journal's removal: the same bytes) is taken as such."""
    import shutil
    import sys
    import pytest
    import vaekit
    from pathlib import Path
    from vaekit.errors import OutputExists
    from vaekit.inference import reconstruct as R
    from vaekit.stream import shares as shares_mod

    sys.path.insert(0, str(Path(__file__).parent))
    from export_support import random_job

    run, data = random_job(tmp_path_factory.mktemp("review45-rec"), 12)
    out = tmp_path / "rec"
    grid = out / "comparison.png"
    model = vaekit.load(run)
    real, calls = model.reconstruct, []

    def meanwhile(x, **kw):
        calls.append(1)
        if len(calls) == 2:
            out.mkdir(parents=True, exist_ok=True)
            grid.write_bytes(b"the user's grid")
        return real(x, **kw)

    model.reconstruct = meanwhile
    with pytest.raises(OutputExists, match="comparison.png appeared while this job ran"):
        R.reconstruct_to_folder(model, data, out, batch_size=4)
    with pytest.raises(OutputExists, match="comparison.png"):
        R.reconstruct_to_folder(vaekit.load(run), data, out, batch_size=4, resume=True)
    assert grid.read_bytes() == b"the user's grid"
    grid.unlink()
    R.reconstruct_to_folder(vaekit.load(run), data, out, batch_size=4, resume=True)  # moved away: it goes on
    assert grid.read_bytes().startswith(b"\x89PNG")

    # the job's own grid, left by a run killed just after writing it: a --resume finishes
    shutil.rmtree(out)
    real_remove = shares_mod.Shares.remove

    def killed(self):
        raise KeyboardInterrupt

    shares_mod.Shares.remove = killed
    try:
        with pytest.raises(KeyboardInterrupt):
            R.reconstruct_to_folder(vaekit.load(run), data, out, batch_size=4)
    finally:
        shares_mod.Shares.remove = real_remove
    assert grid.exists() and Path(f"{out}.partial").exists()
    R.reconstruct_to_folder(vaekit.load(run), data, out, batch_size=4, resume=True)
    assert not Path(f"{out}.partial").exists()
