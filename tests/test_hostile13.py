"""The thirteenth hostile round, on journals, shares and resume: what a hostile or unlucky user
could still do to a streaming job that the earlier rounds left open. A job gives the file an
uninterrupted job gives, or refuses with one line and exit 2, and never replaces a file it did
not create unless --overwrite names it.

Real components: an untrained 16 px model, noise PNGs in tmp_path, the library's jobs and the CLI.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

import vaekit
from export_support import random_job
from vaekit import anomaly
from vaekit.codes import encode_folder
from vaekit.errors import OutputExists
from cli_support import invoke

torch.set_num_threads(1)
USERS = b"a file of the user's, put at the output's name while the job ran\n"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return random_job(tmp_path_factory.mktemp("hostile13"), 12)


def _appearing(model, out: Path, method: str = "score", at: int = 2):
    """`model` whose batch `at` puts the user's file at `out` (the job checked it was free at its start)."""
    real, calls = getattr(model, method), []

    def meanwhile(x, **kw):
        calls.append(len(x))
        if len(calls) == at:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(USERS)
        return real(x, **kw)

    setattr(model, method, meanwhile)
    return model


# --- 1. an output put in place while the job ran is not replaced without --overwrite -----------

@pytest.mark.parametrize("name", ["scores.csv", "scores.json"])
def test_a_file_put_at_the_scores_output_while_the_job_ran_is_not_replaced(setup, tmp_path, name):
    # before: the finished job renamed its file over the user's, which was not there at its start
    run, data = setup
    out = tmp_path / name
    model = _appearing(vaekit.load(run), out)
    with pytest.raises(OutputExists, match="appeared while this job ran"):
        anomaly.score_to_file(model, data, out, threshold=0.0, batch_size=4)
    assert out.read_bytes() == USERS
    assert Path(f"{out}.partial").exists()  # the work is kept: --resume --overwrite writes it
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    ref = tmp_path / f"ref-{name}"
    assert invoke("anomaly-score", run, data, "-o", ref, "--batch-size", 4, "--threshold", 0).exit_code == 0
    r = invoke("anomaly-score", run, data, "-o", out, "--batch-size", 4, "--threshold", 0, "--resume")
    assert r.exit_code == 2 and "--overwrite" in r.output and "Traceback" not in r.output, r.output
    r = invoke("anomaly-score", run, data, "-o", out, "--batch-size", 4, "--threshold", 0, "--resume", "--overwrite")
    assert r.exit_code == 0, r.output
    assert out.read_bytes() == ref.read_bytes() and not Path(f"{out}.partial").exists()


def test_with_overwrite_a_file_put_at_the_output_while_the_job_ran_is_replaced(setup, tmp_path):
    run, data = setup
    out = tmp_path / "scores.csv"
    model = _appearing(vaekit.load(run), out)
    anomaly.score_to_file(model, data, out, threshold=0.0, batch_size=4, overwrite=True)
    assert out.read_bytes().startswith(b"path,score")


def test_the_cli_says_so_in_one_line_and_exit_2(setup, tmp_path, monkeypatch):
    run, data = setup
    out = tmp_path / "scores.csv"
    load = vaekit.load
    monkeypatch.setattr(vaekit, "load", lambda *a, **kw: _appearing(load(*a, **kw), out))
    r = invoke("anomaly-score", run, data, "-o", out, "--batch-size", 4, "--threshold", 0)
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    assert "appeared while this job ran" in r.output and "--overwrite" in r.output
    assert out.read_bytes() == USERS


@pytest.mark.parametrize("name", ["codes.npz", "codes.codes"])
def test_a_file_put_at_the_code_files_name_while_encode_ran_is_not_replaced(setup, tmp_path, name):
    run, data = setup
    out = tmp_path / name
    model = _appearing(vaekit.load(run), out, "encode")
    with pytest.raises(OutputExists, match="appeared while this job ran"):
        encode_folder(model, data, out, batch_size=4)
    assert out.read_bytes() == USERS and Path(f"{out}.partial").exists()
    ref = tmp_path / f"ref-{name}"
    encode_folder(vaekit.load(run), data, ref, batch_size=4)
    encode_folder(vaekit.load(run), data, out, batch_size=4, resume=True, overwrite=True)
    assert out.read_bytes() == ref.read_bytes()


def test_a_merging_share_leaves_a_file_put_at_the_output_and_every_journal(setup, tmp_path):
    run, data = setup
    out = tmp_path / "scores.csv"
    args = ("anomaly-score", run, data, "-o", out, "--batch-size", 4, "--threshold", 0)
    assert invoke(*args, "--shard", "0/2").exit_code == 0
    model = _appearing(vaekit.load(run), out, at=1)  # share 1 of 12 files in 4s: batch 1 alone
    with pytest.raises(OutputExists):
        anomaly.score_to_file(model, data, out, threshold=0.0, batch_size=4, shard=(1, 2))
    assert out.read_bytes() == USERS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.csv", "scores.csv.shard-0-of-2.partial",
                                                          "scores.csv.shard-1-of-2.partial"]
    r = invoke(*args, "--shard", "1/2", "--resume", "--overwrite")
    assert r.exit_code == 0 and out.read_bytes().startswith(b"path,score"), r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.csv"]


def test_a_file_put_at_a_heat_maps_name_while_the_job_ran_is_not_replaced(setup, tmp_path):
    # the maps were checked free when the job began; one put at a later batch's name was replaced
    run, data = setup
    out, maps = tmp_path / "scores.csv", tmp_path / "maps"
    late = maps / "img009.png"  # batch 2's
    model = _appearing(vaekit.load(run), late)
    with pytest.raises(OutputExists, match="img009.png appeared while this job ran"):
        anomaly.score_to_file(model, data, out, maps, threshold=0.0, batch_size=4)
    assert late.read_bytes() == USERS and Path(f"{out}.partial").exists() and not out.exists()
    args = ("anomaly-score", run, data, "-o", out, "--maps", maps, "--batch-size", 4, "--threshold", 0, "--resume")
    r = invoke(*args)  # the stopped batch's maps are kept only where they are its own bytes (test_hostile14)
    assert r.exit_code == 2 and "img009.png appeared while this job ran" in r.output, r.output
    assert late.read_bytes() == USERS
    r = invoke(*args, "--overwrite")
    assert r.exit_code == 0, r.output
    assert late.read_bytes().startswith(b"\x89PNG")


def test_a_file_put_at_a_reconstructions_name_while_the_job_ran_is_not_replaced(setup, tmp_path):
    from vaekit.inference.reconstruct import reconstruct_to_folder

    run, data = setup
    out = tmp_path / "rec"
    late = out / "img009.png"
    model = _appearing(vaekit.load(run), late, "reconstruct")
    with pytest.raises(OutputExists, match="img009.png appeared while this job ran"):
        reconstruct_to_folder(model, data, out, batch_size=4)
    assert late.read_bytes() == USERS and Path(f"{out}.partial").exists() and not (out / "comparison.png").exists()
    shutil.rmtree(out)
    Path(f"{out}.partial").unlink()
    model = _appearing(vaekit.load(run), late, "reconstruct")
    reconstruct_to_folder(model, data, out, batch_size=4, overwrite=True)
    assert late.read_bytes().startswith(b"\x89PNG")


def test_a_file_put_at_the_comparison_grids_name_while_the_job_ran_is_not_replaced(setup, tmp_path):
    from vaekit.inference.reconstruct import reconstruct_to_folder

    run, data = setup
    out = tmp_path / "rec"
    model = _appearing(vaekit.load(run), out / "comparison.png", "reconstruct")
    with pytest.raises(OutputExists, match="comparison.png appeared while this job ran"):
        reconstruct_to_folder(model, data, out, batch_size=4)
    assert (out / "comparison.png").read_bytes() == USERS


def test_a_file_put_at_a_vkcs_name_while_encode_ran_is_not_replaced(tmp_path, monkeypatch):
    from export_support import random_run
    from test_codec import _digits
    from vaekit.codec import container

    run = random_run(tmp_path / "run", image_size=16, channels=1, latent_dim=4, base_channels=4, likelihood="logistic")
    _digits(tmp_path / "src", 4)
    out = tmp_path / "a.vkc"
    write = container.write

    def late(path, *a, **kw):  # the user's file arrives as the last chunk is coded
        out.write_bytes(USERS)
        return write(path, *a, **kw)

    monkeypatch.setattr(container, "write", late)
    r = invoke("encode", run, tmp_path / "src", "-o", out, "--lossless")
    assert r.exit_code == 2 and "appeared while this job ran" in r.output and "Traceback" not in r.output, r.output
    assert out.read_bytes() == USERS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.vkc", "run", "src"]  # no spill, no temporary file


def test_a_file_put_at_a_decoded_pngs_name_while_decode_ran_is_not_replaced(setup, tmp_path, monkeypatch):
    # decode stages its PNGs and moves them all at the end: that move replaced a file put there meanwhile
    from vaekit.fileio import staging

    run, data = setup
    codes = tmp_path / "a.codes"
    encode_folder(vaekit.load(run), data, codes, batch_size=4)
    out = tmp_path / "dec"
    late = out / "img007.png"
    move_all = staging._move_all

    def meanwhile(*a, **kw):
        late.write_bytes(USERS)
        return move_all(*a, **kw)

    monkeypatch.setattr(staging, "_move_all", meanwhile)
    r = invoke("decode", run, codes, "-o", out)
    assert r.exit_code == 2 and "img007.png appeared while this job ran" in r.output, r.output
    assert sorted(p.name for p in out.iterdir()) == ["img007.png"] and late.read_bytes() == USERS  # all or nothing
    r = invoke("decode", run, codes, "-o", out, "--overwrite")
    assert r.exit_code == 0 and late.read_bytes().startswith(b"\x89PNG"), r.output


@pytest.mark.parametrize("taken", [False, True])
def test_a_file_system_without_hard_links_still_never_writes_over_a_file_that_appeared(tmp_path, monkeypatch, taken):
    import errno
    import os

    from vaekit.fileio import atomic_write_bytes

    def no_links(*a, **kw):
        raise OSError(errno.EPERM, "Operation not permitted")  # vfat, some FUSE and SMB mounts

    monkeypatch.setattr(os, "link", no_links)
    out = tmp_path / "x.csv"
    if taken:
        out.write_bytes(USERS)
        with pytest.raises(OutputExists, match="appeared while this job ran"):
            atomic_write_bytes(out, b"new", replace=False)
    else:
        atomic_write_bytes(out, b"new", replace=False)
    assert out.read_bytes() == (USERS if taken else b"new")
    assert [p.name for p in tmp_path.iterdir()] == ["x.csv"]  # no temporary file left


# --- 2. encode's final write holds a bounded number of bytes of codes, not 4096 codes ----------

def test_the_code_file_is_assembled_in_chunks_bounded_in_bytes_and_is_the_same_file(tmp_path, monkeypatch):
    # a 512 px grid model's codes are 1 MB an image: 4096 of them (4 GB) were held three times
    # over as the file was written (256 images of it: +1.1 GB at the end of a 0.8 GB job)
    from export_support import random_run
    from vaekit.codes import jobs

    run = random_run(tmp_path / "run", image_size=32, channels=1, latent_dim=4, base_channels=4, layout="grid")
    data = random_job(tmp_path / "j", 10)[1]
    model = vaekit.load(run)
    row = 4 * model.info.latent_dim
    encode_folder(model, data, tmp_path / "whole.codes", batch_size=4)
    seen, write = [], jobs.write_streamed

    def recording(f, chunks, *a, **kw):
        return write(f, lambda: (seen.append(z.nbytes) or z for z in chunks()), *a, **kw)

    monkeypatch.setattr(jobs, "write_streamed", recording)
    monkeypatch.setattr(jobs, "CHUNK_BYTES", 3 * row)
    encode_folder(model, data, tmp_path / "chunked.codes", batch_size=4)
    assert max(seen) == 3 * row and len(seen) > 3
    assert (tmp_path / "chunked.codes").read_bytes() == (tmp_path / "whole.codes").read_bytes()


def test_decode_dequantises_and_decodes_a_bounded_number_of_pixels_at_a_time(setup, tmp_path, monkeypatch):
    # the whole file's codes were dequantised at once (three float32 copies of N x D) and decoded
    # 256 at a time whatever the model's size: a 69 MB code file of a 512 px grid model peaked at 1.5 GB
    from vaekit.codes import jobs

    run, data = setup
    codes = tmp_path / "a.codes"
    encode_folder(vaekit.load(run), data, codes, batch_size=4)
    assert invoke("decode", run, codes, "-o", tmp_path / "whole").exit_code == 0
    model, seen = vaekit.load(run), []
    decode = model.decode
    model.decode = lambda z, **kw: (seen.append(len(z)), decode(z, **kw))[1]
    monkeypatch.setattr(jobs, "BATCH_PIXELS", 5 * 16 * 16)  # five 16 px images
    jobs.decode_file(model, codes, tmp_path / "parts")
    assert seen == [5, 5, 2]
    whole = sorted(p.name for p in (tmp_path / "whole").iterdir())
    assert whole == sorted(p.name for p in (tmp_path / "parts").iterdir())
    assert all((tmp_path / "whole" / n).read_bytes() == (tmp_path / "parts" / n).read_bytes() for n in whole)
