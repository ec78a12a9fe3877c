"""encode and reconstruct stream, resume and shard like anomaly-score (issue 21, item 12):
`--batch-size`, `--workers`, `--resume` and `--shard` on both, and each way of running gives
the file(s) an uninterrupted, unsharded run writes, byte for byte."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from export_support import random_run, stopped_reconstruct
from hostile import flat, tree
from cli_support import invoke

N_IMAGES = 22  # batch size 4: 6 batches


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("commands")
    run = random_run(root / "run", image_size=16, channels=1, latent_dim=4, base_channels=4)
    data = root / "images"
    data.mkdir()
    rng = np.random.default_rng(3)
    for i in range(N_IMAGES):
        Image.fromarray(rng.integers(0, 256, (16 + i % 4, 16), np.uint8)).save(data / f"img{i:03d}.png")
    (data / "img005.png").write_bytes(b"broken")
    return run, data


def test_encode_shards_merge_into_the_unsharded_code_file(setup, tmp_path):
    run, data = setup
    whole = tmp_path / "whole.codes"
    r = invoke("encode", run, data, "-o", whole, "--batch-size", "4", "--workers", "2")
    assert r.exit_code == 0, r.output
    out = tmp_path / "parts.codes"
    for i in (2, 0, 1):
        r = invoke("encode", run, data, "-o", out, "--batch-size", "4", "--shard", f"{i}/3", "--json")
        assert r.exit_code == 0, r.output
        if i != 1:
            assert json.loads(r.stdout)["merged"] is False and not out.exists()
    assert json.loads(r.stdout)["images"] == N_IMAGES - 1
    assert out.read_bytes() == whole.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["parts.codes", "whole.codes"]


def test_reconstruct_resumes_a_stopped_job_to_the_same_files(setup, tmp_path):
    run, data = setup
    r = invoke("reconstruct", run, data, "-o", tmp_path / "whole", "--batch-size", "4", "--json")
    assert r.exit_code == 0, r.output
    whole = json.loads(r.stdout)
    out = tmp_path / "rec"
    stopped_reconstruct(run, data, out, after=2)
    assert (tmp_path / "rec.partial").exists() and not (out / "comparison.png").exists()
    r = invoke("reconstruct", run, data, "-o", out, "--batch-size", "4")
    assert r.exit_code == 2 and "--resume" in flat(r.output)
    r = invoke("reconstruct", run, data, "-o", out, "--batch-size", "4", "--resume", "--json")
    assert r.exit_code == 0, r.output
    again = json.loads(r.stdout)
    assert [(i["name"], i["psnr"], i["ssim"]) for i in again["images"]] == \
        [(i["name"], i["psnr"], i["ssim"]) for i in whole["images"]]
    assert tree(out) == tree(tmp_path / "whole") and not (tmp_path / "rec.partial").exists()


def test_reconstruct_shards_write_the_same_folder(setup, tmp_path):
    run, data = setup
    assert invoke("reconstruct", run, data, "-o", tmp_path / "whole", "--batch-size", "4").exit_code == 0
    out = tmp_path / "rec"
    r = invoke("reconstruct", run, data, "-o", out, "--batch-size", "4", "--shard", "1/2")
    assert r.exit_code == 0 and "share1/2done" in flat(r.output), r.output
    assert not (out / "comparison.png").exists()
    r = invoke("reconstruct", run, data, "-o", out, "--batch-size", "4", "--shard", "0/2")
    assert r.exit_code == 0, r.output
    assert tree(out) == tree(tmp_path / "whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rec", "whole"]


def test_reconstruct_resume_never_replaces_a_users_png(setup, tmp_path):
    run, data = setup
    out = tmp_path / "rec"
    stopped_reconstruct(run, data, out, after=2)  # batches 0 and 1 done; batch 2 (files 8..11) in hand
    (out / "img017.png").write_bytes(b"mine")  # batch 4: never written by the stopped job
    r = invoke("reconstruct", run, data, "-o", out, "--batch-size", "4", "--resume")
    assert r.exit_code == 2 and "img017.png" in flat(r.output) and (out / "img017.png").read_bytes() == b"mine"


def test_a_tampered_reconstruct_journal_is_exit_2(setup, tmp_path):
    run, data = setup
    out = tmp_path / "rec"
    stopped_reconstruct(run, data, out, after=2)
    j = tmp_path / "rec.partial"
    entries = [json.loads(line) for line in j.read_text().splitlines()]
    entries[1]["rows"][0]["name"] = "../../etc/passwd"
    j.write_text("".join(json.dumps(e) + "\n" for e in entries))
    r = invoke("reconstruct", run, data, "-o", out, "--batch-size", "4", "--resume")
    assert r.exit_code == 2 and "damagedatline" in flat(r.output) and "Traceback" not in r.output


@pytest.mark.parametrize("command", ["encode", "reconstruct"])
def test_batch_size_and_workers_are_options_and_bounded(setup, tmp_path, command):
    run, data = setup
    r = invoke(command, run, data, "-o", tmp_path / "x", "--batch-size", "0")
    assert r.exit_code == 2 and "batch-size" in r.output
    r = invoke(command, run, data, "-o", tmp_path / "x", "--shard", "0/1000000000")
    assert r.exit_code == 2 and "atmost4096" in flat(r.output)
    assert not (tmp_path / "x").exists()
