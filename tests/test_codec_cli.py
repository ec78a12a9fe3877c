"""`vaekit encode --quality / --lossless` and `vaekit decode` of a .vkc, through Typer's runner and
once through the installed executable."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from test_codec import _digits
from vaekit_cli.main import app

runner = CliRunner()
EXE = shutil.which("vaekit", path=str(Path(sys.executable).parent)) or "vaekit"


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from export_support import random_run

    root = tmp_path_factory.mktemp("cli-vkc")
    run = random_run(root / "run", image_size=16, channels=1, latent_dim=4, base_channels=4, likelihood="logistic")
    _digits(root / "train", 30, seed=1)
    _digits(root / "src", 12)
    return root, run


def test_encode_quality_fits_the_tables_and_decode_writes_the_images(setup, tmp_path):
    root, run = setup
    r = invoke("encode", run, root / "src", "-o", tmp_path / "a.vkc", "--quality", 8, "--fit", root / "train", "--json")
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["images"] == 12 and info["mode"] == "lossy" and info["bytes"] == (tmp_path / "a.vkc").stat().st_size
    r = invoke("decode", run, tmp_path / "a.vkc", "-o", tmp_path / "out")
    assert r.exit_code == 0, r.output
    for p in (root / "src").rglob("*.png"):
        got = np.asarray(Image.open(tmp_path / "out" / p.relative_to(root / "src"))).astype(int)
        assert np.abs(got - np.asarray(Image.open(p)).astype(int)).max() <= 3  # quality 8: within delta/2 (+1)
    r = invoke("encode", run, root / "src", "-o", tmp_path / "b.vkc", "--quality", 2)  # the stored tables
    assert r.exit_code == 0 and "quality 2" in r.output


@pytest.mark.slow
def test_lossless_round_trip_through_the_installed_executable(setup, tmp_path):
    root, run = setup
    subprocess.run([EXE, "encode", str(run), str(root / "src"), "-o", str(tmp_path / "l.vkc"), "--lossless"],
                   check=True, capture_output=True, timeout=300)
    subprocess.run([EXE, "decode", str(run), str(tmp_path / "l.vkc"), "-o", str(tmp_path / "out")], check=True,
                   capture_output=True, timeout=300)
    for p in (root / "src").rglob("*.png"):
        assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / p.relative_to(root / "src"))), np.asarray(Image.open(p)))


@pytest.mark.parametrize("why", ["exists", "inside", "folder"])
def test_a_refused_encode_with_fit_leaves_the_tables_alone(setup, tmp_path, why):
    """--fit used to store the new tables before encode's checks; a refused encode then
    stranded every .vkc the run had written."""
    root, run = setup
    shutil.copytree(run, tmp_path / "run")
    run = tmp_path / "run"
    out = {"exists": tmp_path / "there.vkc", "inside": root / "src" / "x.vkc", "folder": tmp_path}[why]
    if why == "exists":
        out.write_bytes(b"mine")
    before = (run / "config.json").read_bytes()
    r = invoke("encode", run, root / "src", "-o", out, "--quality", 3, "--fit", root / "train")
    assert r.exit_code == 2 and (run / "config.json").read_bytes() == before, r.output
    if why == "exists":
        assert out.read_bytes() == b"mine"
    elif why == "inside":
        assert not out.exists()


@pytest.mark.parametrize("args,message", [
    (["--quality", "9"], "lessthanorequalto8"),
    (["--quality", "3", "--lossless"], "notboth"),
    (["--quality", "3", "--resume"], "resume"),
    (["--fit", "TRAIN"], "--fitgoeswith--quality"),
    (["--quality", "3", "--fit", "RUN"], "istherundirectory:givethetrainingimages"),  # its preview.png is no training set
    ([], "x.vkcnamesanentropy-codedarchive:give--quality1..8or--lossless,ornameitx.codes"),  # not fixed-length codes
])
def test_bad_codec_options_exit_2(setup, tmp_path, args, message):
    root, run = setup
    r = invoke("encode", run, root / "src", "-o", tmp_path / "x.vkc", *[{"TRAIN": str(root / "train"), "RUN": str(run)}.get(a, a) for a in args])
    flat = "".join(r.output.replace("│", " ").split())  # rich wraps and boxes the message
    assert r.exit_code == 2 and message in flat and not (tmp_path / "x.vkc").exists()


def test_a_damaged_vkc_is_one_line_and_exit_2(setup, tmp_path):
    root, run = setup
    assert invoke("encode", run, root / "src", "-o", tmp_path / "a.vkc", "--lossless").exit_code == 0
    data = (tmp_path / "a.vkc").read_bytes()
    (tmp_path / "cut.vkc").write_bytes(data[: len(data) // 2])
    r = invoke("decode", run, tmp_path / "cut.vkc", "-o", tmp_path / "out")
    assert r.exit_code == 2 and "truncated" in r.output and r.output.strip().count("\n") == 0
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
@pytest.mark.slow  # starts the installed vaekit in a fresh process
def test_decoding_a_fifo_is_exit_2_and_never_waits(setup, tmp_path):
    root, run = setup
    os.mkfifo(tmp_path / "pipe.vkc")
    p = subprocess.run([EXE, "--threads", "1", "decode", str(run), str(tmp_path / "pipe.vkc"), "-o", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "not a regular file" in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert not (tmp_path / "out").exists()


def _with_quality(data: bytes, quality: int) -> bytes:
    """A lossy .vkc with another quality byte and a valid checksum: "VKC3", the header's length
    (a varint), then the mode and the quality."""
    import hashlib

    body = bytearray(data[:-8])
    at = 6 + next(i for i in range(5) if body[4 + i] < 128)  # the varint ends at 4 + i; then the mode
    body[at] = quality
    return bytes(body) + hashlib.sha256(bytes(body)).digest()[:8]


@pytest.mark.parametrize("damage,command,message", [
    ("quality 9", "decode", "namesquality9"),
    ("quality 200", "decode", "namesquality200"),
    ("latent_shape []", "encode", "latent_shape[]"),
    ("latent_shape ['x']", "encode", "latent_shape['x']"),
    ("latent_shape [4, 1]", "decode", "latentshape[4,1]"),
    ("earlier 'x'", "decode", "damagedentropy-codingtables"),
])
def test_a_damaged_archive_or_codec_section_is_one_line_and_exit_2(setup, tmp_path, damage, command, message):
    root, run = setup
    run = Path(shutil.copytree(run, tmp_path / "run"))
    assert invoke("encode", run, root / "src", "-o", tmp_path / "a.vkc", "--quality", 3, "--fit", root / "train").exit_code == 0
    key, value = damage.split(" ", 1)
    if key == "quality":
        (tmp_path / "a.vkc").write_bytes(_with_quality((tmp_path / "a.vkc").read_bytes(), int(value)))
    else:
        cfg = json.loads((run / "config.json").read_text())
        cfg["codec"][key] = eval(value)
        (run / "config.json").write_text(json.dumps(cfg))
    args = ["-o", tmp_path / "out"] if command == "decode" else [root / "src", "-o", tmp_path / "b.vkc", "--quality", 3]
    r = invoke(command, run, *([tmp_path / "a.vkc"] if command == "decode" else []), *args)
    flat = "".join(r.output.replace("│", " ").split())
    assert r.exit_code == 2 and message in flat and r.output.strip().count("\n") == 0, r.output
    assert not (tmp_path / "out").exists() and not (tmp_path / "b.vkc").exists()


@pytest.mark.parametrize("command,target", [("decode", "."), ("decode", "sub"), ("encode", "x.vkc")])
def test_no_codec_output_goes_into_the_run_directory(setup, tmp_path, command, target):
    """decode -o RUN --overwrite could replace the run's own files (config.json, the weights)."""
    root, run = setup
    run = Path(shutil.copytree(run, tmp_path / "run"))
    assert invoke("encode", run, root / "src", "-o", tmp_path / "a.vkc", "--quality", 3, "--fit", root / "train").exit_code == 0
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    out = run / target
    if command == "decode":
        r = invoke("decode", run, tmp_path / "a.vkc", "-o", out, "--overwrite")
    else:
        r = invoke("encode", run, root / "src", "-o", out, "--quality", 3, "--overwrite")
    flat = "".join(r.output.replace("│", " ").split())
    assert r.exit_code == 2 and "isinsidethemodel'srundirectory" in flat, r.output
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("target", ["a.vkc/x.vkc", "a.vkc/sub/x.vkc"])
def test_an_output_under_a_file_is_one_line_saying_so(setup, tmp_path, target):
    root, run = setup
    (tmp_path / "a.vkc").write_bytes(b"mine")
    r = invoke("encode", run, root / "src", "-o", tmp_path / target, "--quality", 3)
    flat = "".join(r.output.replace("│", " ").split())
    assert r.exit_code == 2 and "a.vkcisafile,notafolder" in flat and "Errno" not in r.output, r.output
    assert (tmp_path / "a.vkc").read_bytes() == b"mine"


@pytest.mark.parametrize("name", [b"a\\b.png", b"caf\\xe9.png"])  # a backslash (a name that is not UTF-8 round-trips)
@pytest.mark.parametrize("how", [["--quality", 3], ["--lossless"], []])
def test_a_name_that_decode_could_not_write_back_is_refused_before_encoding(setup, tmp_path, name, how):
    # a backslash: an archive holding it would decode nothing
    root, run = setup
    src = tmp_path / "src"
    shutil.copytree(root / "src", src)
    first = sorted(src.rglob("*.png"))[0]
    shutil.copy(first, os.path.join(os.fsencode(first.parent), name))
    out = tmp_path / ("a.codes" if not how else "a.vkc")
    r = invoke("encode", run, src, "-o", out, *how)
    flat = "".join(r.output.replace("│", " ").split())
    assert r.exit_code == 2 and "cannotencode" in flat and "renameit" in flat and "Traceback" not in r.output, r.output
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_a_decode_under_a_file_is_one_line_saying_so(setup, tmp_path):
    root, run = setup
    assert invoke("encode", run, root / "src", "-o", tmp_path / "a.vkc", "--quality", 3, "--fit", root / "train").exit_code == 0
    (tmp_path / "f").write_bytes(b"mine")
    r = invoke("decode", run, tmp_path / "a.vkc", "-o", tmp_path / "f" / "out")
    flat = "".join(r.output.replace("│", " ").split())
    assert r.exit_code == 2 and "fisafile,notafolder" in flat and "Traceback" not in r.output, r.output
    assert (tmp_path / "f").read_bytes() == b"mine" and sorted(p.name for p in tmp_path.iterdir()) == ["a.vkc", "f"]


def test_the_summary_says_larger_when_the_file_is_larger_than_its_sources():
    from vaekit_cli.codec import vs_sources

    assert vs_sources(1124, 1352) == "1,124 bytes, 1.20× larger"
    assert vs_sources(5896, 92) == "5,896 bytes, 64.1× smaller"
    assert vs_sources(100, 100) == "100 bytes, 1.00× smaller"
    assert vs_sources(1265950, 1326900) == "1,265,950 bytes, 1.05× larger"  # was "1.0× smaller" for 0.954


def test_train_resume_of_a_finished_run_keeps_the_tables_earlier_files_were_coded_with(tmp_path):
    """`train --resume` of a finished run fitted the codec tables again at its finish, and wrote
    them over the section: the tables of an `encode --fit` and every earlier set were gone, and the
    .vkc files coded with them were refused ("coded with tables X, but the run has Y"). Since
    2026-12-07 such a resume does nothing at all, and the tables stay as `encode --fit` left them."""
    _digits(tmp_path / "imgs", 12)
    _digits(tmp_path / "other", 12, seed=5)
    r = invoke("train", tmp_path / "imgs", "--out", tmp_path / "run", "--epochs", 2, "--batch-size", 4)
    assert r.exit_code == 0, r.output
    r = invoke("encode", tmp_path / "run", tmp_path / "other", "-o", tmp_path / "a.vkc", "--quality", "6",
               "--fit", tmp_path / "other")
    assert r.exit_code == 0, r.output
    fitted = json.loads((tmp_path / "run" / "config.json").read_text())["codec"]["hash"]
    r = invoke("decode", tmp_path / "run", tmp_path / "a.vkc", "-o", tmp_path / "before")
    assert r.exit_code == 0, r.output
    r = invoke("train", tmp_path / "imgs", "--out", tmp_path / "run", "--resume")
    assert r.exit_code == 0 and "nothing to resume" in r.output, r.output
    assert json.loads((tmp_path / "run" / "config.json").read_text())["codec"]["hash"] == fitted
    r = invoke("decode", tmp_path / "run", tmp_path / "a.vkc", "-o", tmp_path / "after")
    assert r.exit_code == 0, r.output
    for p in sorted((tmp_path / "before").rglob("*.png")):
        after = tmp_path / "after" / p.relative_to(tmp_path / "before")
        assert np.array_equal(np.asarray(Image.open(p)), np.asarray(Image.open(after)))


def test_earlier_table_sets_of_other_weights_are_not_kept():
    """A resume that trains on changes the weights: tables of the old weights can decode nothing
    (decode refuses a file of another fingerprint first), so they are dropped, not piled up."""
    from vaekit.codec.store import with_earlier

    old = {"fingerprint": "a", "hash": "1", "earlier": [{"fingerprint": "a", "hash": "0"}, {"fingerprint": "b", "hash": "9"}]}
    assert with_earlier({"fingerprint": "a", "hash": "2"}, old)["earlier"] == [{"fingerprint": "a", "hash": "0"},
                                                                              {"fingerprint": "a", "hash": "1"}]
    assert with_earlier({"fingerprint": "c", "hash": "2"}, old) == {"fingerprint": "c", "hash": "2"}
    assert with_earlier({"fingerprint": "a", "hash": "1"}, old)["earlier"] == [{"fingerprint": "a", "hash": "0"}]


def test_encode_fit_overwrite_keeps_the_old_file_when_the_tables_cannot_be_stored(setup, tmp_path, monkeypatch):
    """With --fit --overwrite the new file replaced the old one before the tables were stored; when
    storing them failed (another command holding the run's lock) the new file was deleted, and the
    old one was already gone. Now the new file takes the old one's place only once its tables are
    stored, and nothing of it is left behind."""
    from vaekit.codec import store
    from vaekit.errors import BadInput

    root, run = setup
    shutil.copytree(run, tmp_path / "run")
    out = tmp_path / "out" / "a.vkc"
    out.parent.mkdir()
    out.write_bytes(b"mine")
    before = (tmp_path / "run" / "config.json").read_bytes()

    def locked(*_, **__):
        raise BadInput("the run is locked: another vaekit command is writing it")

    monkeypatch.setattr(store, "save_prior", locked)
    r = invoke("encode", tmp_path / "run", root / "src", "-o", out, "--quality", 5, "--fit", root / "train", "--overwrite")
    assert r.exit_code == 2 and "locked" in r.output, r.output
    assert out.read_bytes() == b"mine" and [p.name for p in out.parent.iterdir()] == ["a.vkc"]
    assert (tmp_path / "run" / "config.json").read_bytes() == before
    monkeypatch.undo()
    r = invoke("encode", tmp_path / "run", root / "src", "-o", out, "--quality", 5, "--fit", root / "train", "--overwrite")
    assert r.exit_code == 0, r.output
    assert out.read_bytes()[:4] == b"VKC3" and [p.name for p in out.parent.iterdir()] == ["a.vkc"]
    r = invoke("decode", tmp_path / "run", out, "-o", tmp_path / "dec")
    assert r.exit_code == 0, r.output


def test_decoding_one_image_says_image(setup, tmp_path):
    root, run = setup
    shutil.copytree(run, tmp_path / "run")
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(next(iter(sorted((root / "src").glob("*.png")))), one)
    assert invoke("encode", tmp_path / "run", one, "-o", tmp_path / "a.vkc", "--quality", 4).exit_code == 0
    r = invoke("decode", tmp_path / "run", tmp_path / "a.vkc", "-o", tmp_path / "dec")
    assert r.exit_code == 0 and "wrote 1 image (lossy)" in r.output, r.output


def test_a_file_put_at_the_target_while_encode_fit_codes_is_not_replaced(setup, tmp_path):
    """`encode --fit` codes beside its target and moves the file there at the end; without
    --overwrite a file that appeared there meanwhile was replaced by os.replace. Each staged file
    has a name of its own, so one left by a killed run is never in the way."""
    import vaekit
    from vaekit.codec import store
    from vaekit.errors import OutputExists

    root, run = setup
    shutil.copytree(run, tmp_path / "run")
    model = vaekit.load(tmp_path / "run")
    prior = store.fit_prior(model, model.load_images(root / "train").images)
    before = (tmp_path / "run" / "config.json").read_bytes()
    target = tmp_path / "out" / "a.vkc"
    target.parent.mkdir()
    with pytest.raises(OutputExists):
        with store.staged_for_fit(target, prior, tmp_path / "run", model) as staged:
            assert staged.parent == target.parent and staged.name.startswith(".vaekit-fit-")
            staged.write_bytes(b"coded")
            target.write_bytes(b"theirs")
    assert target.read_bytes() == b"theirs" and [p.name for p in target.parent.iterdir()] == ["a.vkc"]
    assert (tmp_path / "run" / "config.json").read_bytes() == before
    with store.staged_for_fit(target, prior, tmp_path / "run", model, overwrite=True) as again:
        assert again != staged
        again.write_bytes(b"coded")
    assert target.read_bytes() == b"coded" and [p.name for p in target.parent.iterdir()] == ["a.vkc"]


@pytest.mark.parametrize("content", [b"", b"XKC3" + b"\0" * 60])
def test_an_empty_or_damaged_vkc_is_refused_as_a_vkc(tmp_path, content):
    """An empty .vkc, or one whose first byte was damaged, went to the code-file reader: "code file
    x.vkc is corrupt ... not a safetensors file" (or a header of 4e17 bytes)."""
    from typer.testing import CliRunner

    from export_support import random_run
    from vaekit_cli.main import app

    run = random_run(tmp_path / "run", image_size=16, channels=1, latent_dim=4, base_channels=4)
    (tmp_path / "x.vkc").write_bytes(content)
    r = CliRunner().invoke(app, ["decode", str(run), str(tmp_path / "x.vkc"), "-o", str(tmp_path / "out")])
    assert r.exit_code == 2 and "is not a .vkc file" in r.output and "code file" not in r.output, r.output
    assert not (tmp_path / "out").exists()
