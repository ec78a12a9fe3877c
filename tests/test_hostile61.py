"""Hostile cases found in the sixty-first round."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest

from vaekit.errors import VaekitError

from export_support import random_job


def test_a_loss_that_overflows_under_a_huge_beta_names_beta_not_only_the_learning_rate(tmp_path):
    """--beta 1e308 made the loss inf in the first epoch, and the one line said "try a lower
    --lr", which does not help; with beta above 1 the hint names --beta (and its value) first."""
    from vaekit.training.loop import TrainingError, _check_finite

    with pytest.raises(TrainingError, match=r"try a lower --beta \(it is 1e\+308\) or --lr") as e:
        _check_finite([0.0, 0.0, float("inf")], 0, tmp_path, beta=1e308)
    assert "nothing was saved yet" in str(e.value)
    with pytest.raises(TrainingError, match=r"; try a lower --lr\. the last good checkpoint \(epoch 3\)"):
        _check_finite([0.0, 0.0, float("nan")], 3, tmp_path, beta=1.0)


@pytest.mark.parametrize("code", [errno.EILSEQ, errno.EINVAL])
def test_a_name_the_file_system_refuses_is_one_line_not_a_traceback_from_removing_what_never_came_to_be(tmp_path, monkeypatch, code):
    """A name the output's file system refuses (exFAT or vfat: a byte that is not UTF-8, EILSEQ;
    a '|' or '"', EINVAL) is one line naming the file, exit 2: the removal of the temporary file
    that never came to be raised the same error over it, a traceback (exit 3)."""
    from vaekit.fileio import atomic, atomic_write_bytes

    real_open, real_unlink = os.open, os.unlink

    def refuse(path, *a, **k):
        if str(path).endswith(".tmp"):
            raise OSError(code, os.strerror(code), str(path))
        return real_open(path, *a, **k)

    def refuse_unlink(path, *a, **k):
        if str(path).endswith(".tmp"):
            raise OSError(code, os.strerror(code), str(path))
        return real_unlink(path, *a, **k)

    monkeypatch.setattr(atomic, "_unnamed", lambda folder: None)  # no O_TMPFILE (FUSE, macOS)
    monkeypatch.setattr(os, "open", refuse)
    monkeypatch.setattr(os, "unlink", refuse_unlink)
    with pytest.raises(VaekitError) as e:
        atomic_write_bytes(tmp_path / "a\udcff.png", b"x")
    assert "a\\xff.png" in str(e.value) or "a\udcff.png" in str(e.value)


def _case_pair(folder):
    """Case.png and case.png (two files here), and x.png."""
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(1)
    for name in ("Case.png", "case.png", "x.png"):
        Image.fromarray(rng.integers(0, 256, (16, 16), np.uint8)).save(folder / name)
    return folder


def test_the_probe_runs_only_where_names_could_meet_and_leaves_nothing(tmp_path, monkeypatch):
    """The probe creates two files of its own and removes them, in the folder or in its nearest
    parent while it is not there, never in /dev; and only for names that a folding disk could take
    for one (Case.png, case.png), so every other job's names and files are as they were."""
    from vaekit.fileio import folding

    assert folding.folds(tmp_path) == (False, False)  # the test's Linux disk keeps them apart
    assert folding.name_key(tmp_path, ["Case.png", "case.png"]) is None
    made = []
    real = folding._takes_for
    monkeypatch.setattr(folding, "_takes_for", lambda where, a, b: (made.append(where), real(where, a, b))[1])
    assert folding.name_key(tmp_path, ["a.png", "b/c.jpg", "b.png", "a.jpg"]) is None and made == []
    assert folding.name_key(tmp_path / "not" / "yet", ["Sub/a.png", "sub/b.png"]) is None and made == [tmp_path] * 2
    assert folding.name_key(Path("/dev/shm/x"), ["A.png", "a.png"]) is None and len(made) == 2  # never probed there
    monkeypatch.setattr(folding.os.path, "lexists", lambda p: True)  # a disk that folds both
    key = folding.name_key(tmp_path, ["\u03c3.png", "\u03c2.png"])  # sigma and final sigma: exFAT takes one for the other
    assert key("\u03a3.PNG") == key("\u03c2.png") == key("\u03c3.png") and key("cafe\u0301") == key("CAF\u00c9")
    assert list(tmp_path.iterdir()) == []  # the probe's files are removed, found or not


@pytest.fixture
def folding_disk(monkeypatch):
    """A file system that takes names differing in case or accents for one (exFAT, APFS, NTFS):
    the probe's answer, since the test's own disk keeps them apart."""
    from vaekit.fileio import folding

    monkeypatch.setattr(folding, "folds", lambda folder: (True, True))


def test_decode_to_a_case_folding_disk_refuses_two_names_it_would_hold_as_one_before_writing(tmp_path, folding_disk):
    """Decoding Case.png and case.png onto an exFAT stick: the second PNG replaced the first
    in the staging folder, and the decode failed with a raw "No such file or directory" naming
    that staging folder (or, without --overwrite, with "case.png appeared while this job ran").
    Now one line names both, before anything is written."""
    from vaekit import load
    from vaekit.codes.jobs import decode_file, encode_folder
    from vaekit.errors import BadInput

    run, _ = random_job(tmp_path / "job", 1)
    model = load(run, device="cpu")
    encode_folder(model, _case_pair(tmp_path / "imgs"), tmp_path / "c.codes")
    with pytest.raises(BadInput, match=r"the images 'Case.png' and 'case.png' would be written to one file: .*out "
                                       r"holds 'Case.png' and 'case.png' as one, its file system takes names "
                                       r"that differ only in upper and lower case"):
        decode_file(model, tmp_path / "c.codes", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_reconstruct_to_a_case_folding_disk_refuses_and_heat_maps_are_numbered(tmp_path, folding_disk):
    """reconstruct and --maps exited 0 with one file fewer than the images: case.png's output
    replaced Case.png's. Reconstruct now refuses (its outputs keep the inputs' names); heat maps,
    which number names that are taken, number the folded ones too (the accents' two spellings as well)."""
    from vaekit import load
    from vaekit.anomaly import map_targets
    from vaekit.errors import BadInput
    from vaekit.inference.reconstruct import reconstruct_to_folder

    run, _ = random_job(tmp_path / "job", 1)
    with pytest.raises(BadInput, match="the images 'Case.png' and 'case.png' would be written to one file"):
        reconstruct_to_folder(load(run, device="cpu"), _case_pair(tmp_path / "imgs"), tmp_path / "out", workers=0)
    assert not list((tmp_path / "out").glob("*.png")) if (tmp_path / "out").exists() else True
    names = ["Case.png", "case.png", "caf\u00e9.png", "cafe\u0301.png", "A.JPG", "a.png"]
    assert map_targets(names, tmp_path) == ["Case.png", "case-1.png", "caf\u00e9.png", "cafe\u0301-1.png",
                                            "A.JPG.png", "a.png.png"]
    assert map_targets(names) == names[:4] + ["A.png", "a.png"]  # no folder: names as they are
    assert map_targets(["\u03c3.png", "\u03c2.png"], tmp_path) == ["\u03c3.png", "\u03c2-1.png"]  # casefolded


def test_case_variants_still_decode_to_two_files_on_a_disk_that_keeps_them_apart(tmp_path):
    """On Linux's disks the probe finds no folding: Case.png and case.png are both written."""
    from vaekit import load
    from vaekit.codes.jobs import decode_file, encode_folder

    run, _ = random_job(tmp_path / "job", 1)
    model = load(run, device="cpu")
    encode_folder(model, _case_pair(tmp_path / "imgs"), tmp_path / "c.codes")
    decode_file(model, tmp_path / "c.codes", tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["Case.png", "case.png", "x.png"]


def test_the_comparison_grid_never_takes_the_name_of_an_image_that_differs_from_it_in_case():
    """An input called Comparison.png: on a disk that folds case the grid replaced its reconstruction."""
    from vaekit.inference.reconstruct import grid_name

    assert grid_name(["Comparison.png", "a.png"]) == "comparison-1.png"
    assert grid_name(["COMPARISON.PNG/x.png"]) == "comparison-1.png"
    assert grid_name(["a.png"]) == "comparison.png"


def test_one_mask_is_never_two_images_and_whole_name_masks_tell_dup_png_from_dup_jpg(tmp_path, monkeypatch):
    """Anomalous dup.png and dup.jpg, one mask dup_mask.png: evaluate took it for both (n_masks 3
    from 2 masks) and scored one image against the other's defect. Now that is refused, and each
    can have its own mask named after its whole name (dup.jpg_mask.png)."""
    from types import SimpleNamespace

    from PIL import Image

    import vaekit.anomaly.masks as masks
    from vaekit.errors import BadInput

    model = SimpleNamespace(info=SimpleNamespace(image_size=16, read_size=16, latent_shape=(4,)))  # an object model
    root = tmp_path / "masks"
    root.mkdir()
    for name in ("dup_mask.png", "other_mask.png"):
        Image.fromarray(np.full((16, 16), 255, np.uint8)).save(root / name)
    monkeypatch.setattr(masks, "read_mask", lambda path, name, *a, **k: path)
    with pytest.raises(BadInput, match=r"the mask dup_mask.png matches both anomalous images dup.png and dup.jpg; "
                                       r"name each image's mask after its whole name \(dup.jpg_mask.png\)"):
        masks.masks_for(model, masks.mask_index(root), ["dup.png", "dup.jpg", "other.png"])
    Image.fromarray(np.full((16, 16), 255, np.uint8)).save(root / "dup.jpg_mask.png")
    mask_of = masks.masks_for(model, masks.mask_index(root), ["dup.png", "dup.jpg", "other.png"])
    assert [mask_of(n, None) for n in ("dup.png", "dup.jpg", "other.png")] == [
        root / "dup_mask.png", root / "dup.jpg_mask.png", root / "other_mask.png"]


def test_encode_fit_names_the_fit_images_it_could_not_read(tmp_path):
    """`encode --quality N --fit DIR` dropped DIR's unreadable files without a word (the table's
    "0 skipped" counts the encoded images): each is now named on stderr, and --json counts them."""
    import json

    from typer.testing import CliRunner

    from export_support import random_run
    from test_codec import _digits
    from vaekit_cli.main import app

    run = random_run(tmp_path / "run", image_size=16, channels=1, latent_dim=4, base_channels=4, likelihood="logistic")
    _digits(tmp_path / "train", 20, seed=1)
    _digits(tmp_path / "src", 4)
    (tmp_path / "train" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    r = CliRunner().invoke(app, [str(a) for a in ("encode", run, tmp_path / "src", "-o", tmp_path / "a.vkc",
                                                  "--quality", 4, "--fit", tmp_path / "train", "--json")])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["fit_skipped"] == 1 and json.loads(r.stdout)["skipped"] == 0
    assert "skipped (not fitted on)" in r.stderr and "broken.png" in r.stderr


def test_line_and_paragraph_separators_in_a_name_are_shown_escaped():
    """U+2028 and U+2029 break the line in most terminals: printed raw in the tables."""
    from vaekit_cli.output import safe_text

    assert safe_text("a\u2028b\u2029c.png") == "a\\u2028b\\u2029c.png"


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_pillows_own_bomb_refusal_is_worded_as_vaekits_with_the_limit_vaekit_applies(tmp_path, monkeypatch):
    """Past twice the limit Pillow refuses the file itself, worded its own way and naming twice
    the limit ("exceeds limit of 178956970 pixels, could be decompression bomb DOS attack"), where
    vaekit's own check says "N pixels > limit 89478485": one rule, one wording."""
    from PIL import Image

    from vaekit.images import ImageReadError, load_image

    Image.new("L", (40, 40)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 700)  # 1,600 pixels: past twice the limit
    with pytest.raises(ImageReadError) as e:
        load_image(tmp_path / "big.png", 16, 1)
    assert e.value.reason == "decompression bomb: 1600 pixels > limit 700"
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # under twice: vaekit's own check
    with pytest.raises(ImageReadError) as e:
        load_image(tmp_path / "big.png", 16, 1)
    assert e.value.reason == "decompression bomb: 1600 pixels > limit 1000"
    Image.new("L", (40, 40)).save(tmp_path / "big.webp")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 700)  # a WebP's limit is half: 350, as vaekit's own check says
    with pytest.raises(ImageReadError) as e:
        load_image(tmp_path / "big.webp", 16, 1)
    assert e.value.reason == "decompression bomb: 1600 pixels > limit 350 (a WebP's limit is half the others')"


def test_a_file_given_in_the_wrong_place_is_named_for_what_it_is(tmp_path):
    """A code file given as the model was "not a readable ONNX model ... INVALID_PROTOBUF", a PNG
    given as the code file "not a vaekit code file (header of 727905341920923785 bytes ...)":
    now each says what the file is."""
    from PIL import Image

    import vaekit
    from vaekit.codes import CodeFileError, encode_images, load, save
    from vaekit.inference.engine_onnx import OnnxModelError

    run, images = random_job(tmp_path / "job", 2)
    model = vaekit.load(run, device="cpu")
    x = model.load_images(images).images
    save(encode_images(model, x, ["a.png", "b.png"], np.full((2, 2), 16), "q8"), tmp_path / "a.codes")
    Image.new("L", (8, 8)).save(tmp_path / "x.png")
    Image.new("L", (8, 8)).save(tmp_path / "x.jpg")
    for given, kind in [("a.codes", "a vaekit code file"), ("x.png", "a PNG image"), ("x.jpg", "a JPEG image")]:
        with pytest.raises(OnnxModelError, match=f"{given} is {kind}.*, not a model"):
            vaekit.load(tmp_path / given)
    with pytest.raises(OnnxModelError, match=r"model.safetensors is a safetensors file \(a run's weights\? give the run's"):
        vaekit.load(run / "model.safetensors")
    with pytest.raises(CodeFileError, match="x.png is a PNG image, not a vaekit code file"):
        load(tmp_path / "x.png")
    (tmp_path / "cut.codes").write_bytes((tmp_path / "a.codes").read_bytes()[:6])  # a damaged one stays so
    with pytest.raises(CodeFileError, match="corrupt, truncated or not a vaekit code file"):
        load(tmp_path / "cut.codes")


def test_train_resume_where_no_run_is_says_there_is_nothing_to_resume(tmp_path):
    """`train DATA --out new --resume` said "run config not found: new/config.json (a model is a
    folder written by vaekit train, or an exported .onnx)", the wording for a model given wrong;
    and nothing is left behind (the lock's folder is removed)."""
    from typer.testing import CliRunner

    from vaekit_cli.main import app

    _, images = random_job(tmp_path / "job", 2)
    r = CliRunner().invoke(app, ["train", str(images), "--out", str(tmp_path / "runs" / "new"), "--resume"])
    assert r.exit_code == 2
    assert "nothing to resume: " in r.output and "holds no run (no config.json); leave out --resume to start one" in r.output
    assert not (tmp_path / "runs").exists()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "notes.txt").write_text("mine")  # a folder of the user's, no run
    r = CliRunner().invoke(app, ["train", str(images), "--out", str(tmp_path / "notes"), "--resume"])
    assert r.exit_code == 2 and "holds no run (no config.json)" in " ".join(r.output.split())
    assert sorted(p.name for p in (tmp_path / "notes").iterdir()) == ["notes.txt"]


def test_a_bad_option_value_is_said_plainly_not_in_the_validation_librarys_words(tmp_path):
    """`sample -n 0` said "Input should be greater than or equal to 1", `--threshold abc` "Input
    should be a valid number, unable to parse string as a number", `decode --size huge` "Value
    error, 'huge' is not one of ...": the validation library's phrasing, said plainly now."""
    import subprocess
    import sys
    from pathlib import Path

    exe = str(Path(sys.executable).with_name("vaekit"))
    cases = [(["sample", str(tmp_path), "-n", "0", "-o", "s.png"], "Invalid value for '-n': it must be at least 1 "),
             (["anomaly-score", str(tmp_path), str(tmp_path), "-o", "s.csv", "--threshold", "abc"],
              "Invalid value for '--threshold': not a number "),
             (["decode", str(tmp_path), str(tmp_path), "-o", "d", "--size", "huge"],
              "Invalid value for '--size': 'huge' is not one of 'model', 'original' ")]
    for args, said in cases:
        r = subprocess.run([exe, *args], capture_output=True, text=True, cwd=tmp_path, timeout=120,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert r.returncode == 2 and r.stderr == f"error: {said}(see `vaekit {args[0]} --help`)\n", r.stderr


def test_export_of_an_export_says_it_takes_a_run_directory(tmp_path):
    """`export digits.onnx` said "Invalid value for 'run_dir': dir 'digits.onnx' is a file"."""
    from typer.testing import CliRunner

    from vaekit_cli.main import app

    (tmp_path / "digits.onnx").write_bytes(b"x")
    r = CliRunner().invoke(app, ["export", str(tmp_path / "digits.onnx"), "-o", str(tmp_path / "y.onnx")])
    assert r.exit_code == 2 and "digits.onnx is an export already; `vaekit export` takes the run directory" in r.output
    assert not (tmp_path / "y.onnx").exists()


def test_the_plan_says_when_images_are_not_square_and_what_the_model_never_sees(tmp_path):
    """Labels of 200 x 64 px: an object model learned and scored their centre square (32% of each),
    so an image and its copy with a defect at the edge scored the same, bit for bit, and nothing
    said so; a surface model learned the centre square and scored the whole strip (h7)."""
    from PIL import Image

    from vaekit.training.coverage import crop_note, kept_shares

    (tmp_path / "wide").mkdir()
    (tmp_path / "square").mkdir()
    for i in range(20):
        Image.new("L", (200, 64)).save(tmp_path / "wide" / f"{i}.png")
        Image.new("L", (64, 66)).save(tmp_path / "square" / f"{i}.png")  # 3% off: square enough
    wide, square = sorted((tmp_path / "wide").iterdir()), sorted((tmp_path / "square").iterdir())
    np.testing.assert_allclose(kept_shares(wide), 0.32)
    assert crop_note(square, "vector") is None and crop_note(square + wide[:1], "vector") is None  # 1 of 21
    note = crop_note(wide, "vector")
    assert note.startswith("20 of 20 images are not square: the model learns from and scores the centre square "
                           "of each (a median 32% of it); a defect outside it is never seen")
    assert "scores the whole image, so what lies outside that square is judged by a model that never saw it" in \
        crop_note(wide, "grid")


def test_a_numbered_heat_map_never_meets_an_input_that_differs_from_it_in_case(tmp_path, monkeypatch):
    """a.png twice is numbered a-1.png, which a folding disk takes for A-1.png: the gate must see
    the numbered names, not only the inputs' own spellings (review by h6)."""
    from vaekit.anomaly.outputs import map_targets
    from vaekit.fileio import folding

    monkeypatch.setattr(folding, "folds", lambda folder: (True, True))
    out = map_targets(["a.png", "a.png", "A-1.png"], tmp_path)
    assert len({folding.broadest(t) for t in out}) == 3, out


def test_a_folder_on_the_way_that_cannot_be_searched_leaves_the_names_as_they_are(tmp_path, monkeypatch):
    """Path.is_dir raises PermissionError (not False) below a folder that cannot be searched: the
    probe was a traceback there; now the names are compared as they are, and the job's own checks
    of the output say what is wrong."""
    from pathlib import Path as P

    from vaekit.fileio import folding

    def refused(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(P, "is_dir", refused)
    assert folding.folds(tmp_path / "locked" / "out") == (False, False)
    assert folding.name_key(tmp_path / "locked" / "out", ["A.png", "a.png"]) is None
