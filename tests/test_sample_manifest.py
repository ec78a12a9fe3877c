"""`sample-data --overwrite` replaces only the files an earlier call wrote: each set lists its PNGs
with their sha256 in vaekit-sample-data.sha256, and a PNG that merely has a sample's name (a
user's own, or a sample changed since) is refused with one line, never deleted.

Real components: the sample-data writers and the CLI through Typer's runner, in tmp_path.
"""

from __future__ import annotations

import hashlib
import io

import numpy as np
from PIL import Image
from typer.testing import CliRunner

MANIFEST = "vaekit-sample-data.sha256"  # vaekit.sample_data.common.MANIFEST
from vaekit_cli.main import app


def invoke(*args):
    return CliRunner().invoke(app, ["sample-data", *map(str, args)], env={"COLUMNS": "300"})


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (16, 16, 3), np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_overwrite_leaves_a_users_png_that_has_a_samples_name(tmp_path):
    out = tmp_path / "data"
    (out / "train").mkdir(parents=True)
    mine = out / "train" / "part_0000.png"
    mine.write_bytes(_png(1))  # the user's own image, named as a sample is
    r = invoke("shapes", out, "--size", "16", "--overwrite")
    assert r.exit_code != 0 and len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output, r.output
    assert "part_0000.png was not written by" in r.output, r.output
    assert mine.read_bytes() == _png(1) and not (out / "README.txt").exists()


def test_overwrite_leaves_a_sample_the_user_replaced_since(tmp_path):
    out = tmp_path / "data"
    assert invoke("digits", out, "--size", "8").exit_code == 0
    victim = sorted((out / "test" / "anomalous").glob("*.png"))[0]
    victim.write_bytes(_png(2))  # the user's image put in its place, under its name
    r = invoke("digits", out, "--size", "8", "--overwrite")
    assert r.exit_code != 0 and len(r.output.strip().splitlines()) == 1, r.output
    assert f"{victim.name} was not written by" in r.output, r.output
    assert victim.read_bytes() == _png(2)


def test_overwrite_still_replaces_its_own_set_and_the_manifest_checks_with_sha256sum(tmp_path):
    out = tmp_path / "data"
    assert invoke("shapes", out, "--size", "16").exit_code == 0
    first = (out / "train" / "part_0000.png").read_bytes()
    r = invoke("shapes", out, "--size", "16", "--seed", "3", "--overwrite")
    assert r.exit_code == 0, r.output
    assert (out / "train" / "part_0000.png").read_bytes() != first
    lines = (out / MANIFEST).read_text().splitlines()
    pngs = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert sorted(line.split("  ")[1] for line in lines) == pngs
    for line in lines:
        digest, name = line.split("  ")
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest


def test_a_users_file_at_the_manifests_name_is_refused_not_replaced(tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    (out / MANIFEST).write_text("my checksums\n")
    r = invoke("digits", out, "--size", "8")
    assert r.exit_code != 0 and f"{MANIFEST} was not written by" in r.output, r.output
    assert (out / MANIFEST).read_text() == "my checksums\n"


def test_overwrite_of_an_older_vaekits_set_without_a_manifest_says_so(tmp_path):
    # the set's README is vaekit's, only the manifest is missing: the refusal said its first PNG
    # "was not written by `vaekit sample-data`" and to move that one file away (then the next, ...)
    out = tmp_path / "data"
    assert invoke("digits", out).exit_code == 0
    (out / MANIFEST).unlink()  # as a vaekit before the manifest left it
    before = sorted(p.relative_to(out) for p in out.rglob("*.png"))
    r = invoke("digits", out, "--overwrite")
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output, r.output
    assert "without vaekit-sample-data.sha256" in r.output and "older vaekit" in r.output, r.output
    assert "was not written by" not in r.output and sorted(p.relative_to(out) for p in out.rglob("*.png")) == before
