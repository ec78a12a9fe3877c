"""The second hardening pass (issue 15): each case a hostile user found, through the CLI.

Grouped as the issue groups them: data loss, foreign programs, hangs, failing open, memory,
resume and the cache, terminal output and damaged files. Web cases are in test_web_safety.py.
A FIFO would hang the old code forever; `fifo_guard` opens its other end after a moment, so a
reader that (wrongly) opened it gets end-of-file and the test fails on its reason, not on time.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from vaekit_cli.main import app

EXE = shutil.which("vaekit", path=str(Path(sys.executable).parent)) or "vaekit"
TINY = ["--image-size", "16", "--latent-dim", "4", "--base-channels", "4", "--device", "cpu", "--batch-size", "8"]


def invoke(*args, env=None):
    from vaekit_cli import output

    try:
        return CliRunner().invoke(app, ["--threads", "1", *map(str, args)], env={"COLUMNS": "250", **(env or {})})
    finally:
        for c in (output.console, output.err_console):
            c._buffer.clear()


from hostile import flat, tree  # noqa: E402  (tests/hostile.py: shared with test_hostile)


def write_images(folder: Path, n: int = 10, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        x = np.full((20, 20), 30, np.uint8)
        r, c = rng.integers(2, 12, 2)
        x[r : r + 6, c : c + 6] = 200
        Image.fromarray(x).save(folder / f"img_{i:02d}.png")
    return folder


@contextmanager
def fifo_guard(fifo: Path, after: float = 2.0):
    """Open the FIFO's other end (O_RDWR never blocks on Linux) every `after` seconds, so a
    reader blocked on it wakes up with end-of-file instead of hanging the test run."""
    done = threading.Event()

    def unblock():
        while not done.wait(after):
            try:
                os.close(os.open(fifo, os.O_RDWR | os.O_NONBLOCK))
            except OSError:
                pass

    t = threading.Thread(target=unblock, daemon=True)
    t.start()
    try:
        yield
    finally:
        done.set()
        t.join()


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tmp_path_factory.mktemp("hardening")


@pytest.fixture(scope="module")
def images(base):
    return write_images(base / "images")


@pytest.fixture(scope="module")
def run(base, images):
    """A tiny gray model, trained for 2 epochs, with a stored threshold."""
    from vaekit.config import ModelConfig, TrainConfig
    from vaekit.train import train

    out = base / "run"
    train(images, out, ModelConfig(image_size=16, channels=1, latent_dim=4, base_channels=4),
          TrainConfig(epochs=2, batch_size=8, device="cpu"), channels=1, cache_dir=base / "cache")
    return out


@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.setenv("VAEKIT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


def copy_run(run: Path, dst: Path) -> Path:
    return Path(shutil.copytree(run, dst))


def edit_config(run: Path, change) -> None:
    cfg = json.loads((run / "config.json").read_text())
    change(cfg)
    (run / "config.json").write_text(json.dumps(cfg))


# --- 1. data loss ------------------------------------------------------------------------------

def test_anomaly_score_never_writes_maps_into_its_input_or_replaces_a_users_csv(run, images, work):
    imgs = Path(shutil.copytree(images, work / "imgs"))
    before = tree(imgs)
    (work / "results.csv").write_text("my own results\n")
    for maps in (imgs, imgs / "maps"):  # not even with --overwrite
        r = invoke("anomaly-score", run, imgs, "--maps", maps, "-o", work / "results.csv", "--overwrite")
        assert r.exit_code == 2, r.output
        assert "insidetheinputfolder" in flat(r.output)
    r = invoke("anomaly-score", run, imgs, "-o", work / "results.csv")
    assert r.exit_code == 2 and "alreadyexists;pass--overwrite" in flat(r.output), r.output
    assert tree(imgs) == before and (work / "results.csv").read_text() == "my own results\n"
    r = invoke("anomaly-score", run, imgs, "-o", work / "results.csv", "--overwrite", "--maps", work / "maps")
    assert r.exit_code == 0, r.output
    assert (work / "results.csv").read_text().startswith("path,score")
    assert tree(imgs) == before
    # the heat maps of a second run would replace the first run's: only with --overwrite
    r = invoke("anomaly-score", run, imgs, "--maps", work / "maps")
    assert r.exit_code == 2 and "heatmapfile(s)alreadyexist" in flat(r.output), r.output


def test_reconstruct_and_encode_never_write_into_their_input(run, images, work):
    imgs = Path(shutil.copytree(images, work / "imgs"))
    before = tree(imgs)
    r = invoke("reconstruct", run, imgs, "-o", imgs / "recon")
    assert r.exit_code == 2 and "insidetheinputfolder" in flat(r.output), r.output
    r = invoke("encode", run, imgs, "-o", imgs / "images.codes")
    assert r.exit_code == 2 and "insidetheinputfolder" in flat(r.output), r.output
    assert tree(imgs) == before


def test_images_named_as_files_are_never_replaced_by_outputs(run, images, work):
    """Inputs given as files: an output folder that holds one (its files are named after the
    inputs) is refused, with or without --overwrite."""
    imgs = Path(shutil.copytree(images, work / "imgs"))
    before = tree(imgs)
    a, b = sorted(p for p in imgs.rglob("*.png"))[:2]
    for args in (["--maps", a.parent], ["--maps", a.parent, "--overwrite"]):
        r = invoke("anomaly-score", run, a, b, *args)
        assert r.exit_code == 2 and "holdstheinputimage" in flat(r.output), r.output
    r = invoke("reconstruct", run, a, "-o", a.parent, "--overwrite")
    assert r.exit_code == 2 and "holdstheinputimage" in flat(r.output), r.output
    assert tree(imgs) == before
    r = invoke("anomaly-score", run, a, b, "--maps", work / "maps")  # elsewhere: fine
    assert r.exit_code == 0, r.output


def test_an_output_under_a_file_names_that_file(run, images, work):
    (work / "notes.txt").write_text("mine")
    r = invoke("anomaly-score", run, images, "-o", work / "notes.txt" / "x.csv")
    flat = "".join(r.output.split())
    assert r.exit_code == 2 and "notes.txtisafile,notafolder" in flat and "Fileexists" not in flat, r.output
    assert (work / "notes.txt").read_text() == "mine"


def test_evaluate_refuses_to_replace_an_existing_plot(run, images, work):
    (work / "notes.png").write_text("do not lose me")
    r = invoke("evaluate", run, "--normal", images, "--anomalous", images, "--plot", work / "notes.png")
    assert r.exit_code == 2 and "--plot" in r.output and "already exists" in r.output, r.output
    assert (work / "notes.png").read_text() == "do not lose me"
    for name in ("roc.pdf", "roc.txt", "roc"):  # the plot is a PNG: a name that says otherwise is refused
        r = invoke("evaluate", run, "--normal", images, "--anomalous", images, "--plot", work / name)
        assert r.exit_code == 2 and "mustbea.pngfile" in flat(r.output), r.output
        assert not (work / name).exists()
    r = invoke("evaluate", run, "--normal", images, "--anomalous", images, "--plot", images / "roc.png")
    assert r.exit_code == 2 and "insidetheinputfolder" in flat(r.output), r.output
    assert not (images / "roc.png").exists()


@pytest.mark.parametrize("taken", ["model.onnx", "model.encoder.onnx", "model.decoder.onnx"])
def test_export_refuses_to_replace_any_of_its_three_files(run, work, taken):
    (work / taken).write_text("someone else's model")
    r = invoke("export", run, "-o", work / "model.onnx")
    assert r.exit_code == 2, r.output
    assert taken in r.output and "already exists" in r.output
    assert (work / taken).read_text() == "someone else's model"
    assert sorted(p.name for p in work.iterdir() if p.name != "cache") == [taken]  # no staging folder either


def test_train_refuses_a_folder_vaekit_did_not_make_with_or_without_overwrite(images, work):
    out = work / "mine"
    (out / "checkpoint").mkdir(parents=True)
    for name in ("model.safetensors", "preview.png", "metrics.jsonl", "checkpoint/epoch-0000.safetensors"):
        (out / name).write_text(f"the user's {name}")
    before = tree(out)
    for extra in ([], ["--overwrite"]):
        r = invoke("train", images, "--out", out, *TINY, "--epochs", "1", *extra)
        assert r.exit_code == 2 and "holdsfilesvaekitdidnotwrite" in flat(r.output), r.output
        assert tree(out) == before
    # a config.json that is not vaekit's does not make it vaekit's
    (out / "config.json").write_text(json.dumps({"format": "someone-else/3", "model": {}}))
    r = invoke("train", images, "--out", out, *TINY, "--epochs", "1", "--overwrite")
    assert r.exit_code == 2, r.output
    assert (out / "model.safetensors").read_text() == "the user's model.safetensors"


def test_overwrite_removes_only_the_files_vaekit_wrote(run, images, work):
    out = copy_run(run, work / "run")
    (out / "notes.txt").write_text("mine")
    (out / "checkpoint" / "keep.txt").write_text("mine too")
    r = invoke("train", images, "--out", out, *TINY, "--epochs", "1")
    assert r.exit_code == 2 and "alreadyholdsarun" in flat(r.output), r.output
    r = invoke("train", images, "--out", out, *TINY, "--epochs", "1", "--overwrite")
    assert r.exit_code == 0, r.output
    assert (out / "notes.txt").read_text() == "mine" and (out / "checkpoint" / "keep.txt").read_text() == "mine too"
    assert json.loads((out / "config.json").read_text())["train"]["epochs"] == 1


def test_runs_from_before_the_marker_still_load_resume_and_overwrite(run, images, work):
    import vaekit

    out = copy_run(run, work / "old")
    (out / ".vaekit-run").unlink()
    (out / ".vaekit.lock").unlink()
    assert vaekit.load(out).info.threshold is not None
    r = invoke("train", images, "--out", out, "--resume", "--epochs", "3")
    assert r.exit_code == 0, r.output
    r = invoke("train", images, "--out", out, *TINY, "--epochs", "1", "--overwrite")
    assert r.exit_code == 0, r.output


def test_a_run_directory_in_use_is_refused_naming_the_process(run, images, work):
    from vaekit.training import runlock

    out = copy_run(run, work / "busy")
    before = tree(out / "checkpoint")
    with runlock.locked(out):  # what a training process holds
        for args in (["--resume", "--epochs", "3"], [*TINY, "--overwrite"]):
            r = invoke("train", images, "--out", out, *args)
            assert r.exit_code == 2, r.output
            assert f"in use by process {os.getpid()}" in r.output
    assert tree(out / "checkpoint") == before


def test_a_run_that_is_training_is_not_read_as_a_model(run, images, work):
    """While a training holds the run's lock its weights and config are still changing: scoring,
    exporting or sampling from it would use a half-trained model. Refused (exit 2) until the lock goes."""
    import vaekit
    from vaekit.errors import InUse
    from vaekit.training import runlock

    out = copy_run(run, work / "training")
    with runlock.locked(out):
        with pytest.raises(InUse, match=f"in use by process {os.getpid()}"):
            vaekit.load(out)
        before = (out / "config.json").read_bytes()
        for args in (["anomaly-score", out, images], ["export", out, "-o", work / "m.onnx"],
                     ["threshold", out, "--value", "5"], ["threshold", out, "--quantile", "0.9"],
                     ["threshold", out, "--normal", images]):
            r = invoke(*args)
            assert r.exit_code == 2 and "inuseby" in flat(r.output), r.output
        assert not (work / "m.onnx").exists() and (out / "config.json").read_bytes() == before
    assert vaekit.load(out).info.threshold is not None  # the lock gone, the run reads again
    assert vaekit.load(out).info.threshold is not None  # and the probe itself left no lock behind


def test_a_checkpoint_folder_from_another_run_is_not_resumed(run, images, work):
    """Each run's config.json names it (run_id) and every resume.json repeats that name: a
    checkpoint folder copied in from another run is refused, not trained on as if it were this one's."""
    a, b = copy_run(run, work / "a"), copy_run(run, work / "b")
    edit_config(b, lambda cfg: cfg.__setitem__("run_id", "0123456789abcdef"))  # another run with the same data
    r = invoke("train", images, "--out", b, "--resume", "--epochs", "3")
    assert r.exit_code == 2 and "belongstoanotherrun" in flat(r.output), r.output
    r = invoke("train", images, "--out", a, "--resume", "--epochs", "3")  # its own checkpoint resumes
    assert r.exit_code == 0, r.output
    resume = json.loads((a / "checkpoint" / "resume.json").read_text())
    assert resume["run"] == json.loads((a / "config.json").read_text())["run_id"]


def test_out_inside_the_input_folder_is_refused(images, work):
    imgs = Path(shutil.copytree(images, work / "imgs"))
    for out in (imgs, imgs / "runs" / "a"):
        r = invoke("train", imgs, "--out", out, *TINY, "--epochs", "1")
        assert r.exit_code == 2 and "insidetheinputfolder" in flat(r.output), r.output
    assert not (imgs / "runs").exists() and not (imgs / "preview.png").exists()
    other = Path(shutil.copytree(images, work / "other"))  # reached through a folder link: an input too
    (imgs / "more").symlink_to(other, target_is_directory=True)
    r = invoke("train", imgs, "--out", other / "run", *TINY, "--epochs", "1")
    assert r.exit_code == 2 and "insidetheinputfolder" in flat(r.output), r.output
    assert not (other / "run").exists()


# --- 2. foreign programs -----------------------------------------------------------------------

EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 20 20\n%%EndComments\n"
       b"newpath 0 0 moveto 20 20 lineto stroke showpage\n%%EOF\n")


def test_a_postscript_file_named_png_is_skipped_and_never_rendered(run, images, work, monkeypatch):
    import PIL.EpsImagePlugin

    from vaekit import images as imageio

    ran = []
    monkeypatch.setattr(PIL.EpsImagePlugin, "Ghostscript", lambda *a, **k: ran.append(a) or 1 / 0)
    imgs = Path(shutil.copytree(images, work / "imgs"))
    (imgs / "x.png").write_bytes(EPS)
    report = imageio.load_images(imageio.find_images(imgs), 16, 1)
    assert [(p.name, r) for p, r in report.skipped] == [("x.png", "not an image")]
    assert imageio.gray_mode(imgs / "img_00.png") is True
    with pytest.raises(imageio.ImageReadError, match="not an image"):
        imageio.gray_mode(imgs / "x.png")
    r = invoke("anomaly-score", run, imgs)
    # the terminal wraps long paths (a deeper temporary folder moves the break): read it unwrapped
    assert r.exit_code == 0 and "x.png: not an image" in r.output.replace("\n", ""), r.output
    assert ran == []


# --- 3. hangs ----------------------------------------------------------------------------------

def test_a_png_link_to_a_fifo_is_skipped_by_train_and_scoring(run, images, work):
    """A FIFO named like an image, or a link to one, is named as skipped, never opened."""
    imgs = Path(shutil.copytree(images, work / "imgs"))
    fifo = work / "pipe"
    os.mkfifo(fifo)
    os.symlink(fifo, imgs / "pipe.png")
    os.mkfifo(imgs / "zpipe.png")
    with fifo_guard(fifo), fifo_guard(imgs / "zpipe.png"):
        r = invoke("anomaly-score", run, imgs)
        assert r.exit_code == 0, r.output
        assert "pipe.png:notaregularfile" in flat(r.output) and "zpipe.png:notaregularfile" in flat(r.output), r.output
        r = invoke("train", imgs, "--out", work / "run", *TINY, "--epochs", "1", "--channels", "auto")
        assert r.exit_code == 0, r.output
    cfg = json.loads((work / "run" / "config.json").read_text())
    why = "not a regular file (a FIFO, socket or device)"
    assert cfg["data"]["skipped"] == [["pipe.png", why], ["zpipe.png", why]]


@pytest.mark.parametrize("where", ["config.json", "checkpoint/resume.json", "checkpoint/epoch-0001.safetensors"])
def test_a_run_file_that_is_a_fifo_is_exit_2(run, images, work, where):
    out = copy_run(run, work / "run")
    (out / where).unlink()
    os.mkfifo(out / where)
    with fifo_guard(out / where):
        r = invoke("train", images, "--out", out, "--resume", "--epochs", "3")
        assert r.exit_code == 2 and "notaregularfile" in flat(r.output), r.output
        if where == "config.json":
            r = invoke("anomaly-score", out, images)
            assert r.exit_code == 2 and "notaregularfile" in flat(r.output), r.output


def test_a_model_or_code_file_that_is_a_fifo_is_exit_2(run, images, work):
    fifo = work / "model.onnx"
    os.mkfifo(fifo)
    os.mkfifo(work / "x.codes")
    with fifo_guard(fifo), fifo_guard(work / "x.codes"):
        r = invoke("anomaly-score", fifo, images)
        assert r.exit_code == 2 and "noraregular.onnxfile" in flat(r.output), r.output
        r = invoke("decode", run, work / "x.codes", "-o", work / "out")
        assert r.exit_code == 2 and "notaregularfile" in flat(r.output), r.output


# --- 4. fail closed ----------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "0.5", [1.0]])
def test_a_non_finite_or_malformed_threshold_in_config_json_is_exit_2(run, images, work, bad):
    out = copy_run(run, work / "run")
    edit_config(out, lambda c: c["anomaly"].update(threshold=bad))
    r = invoke("anomaly-score", out, images, "--fail-on-anomaly")
    assert r.exit_code == 2, r.output
    assert "anomalysectionisdamaged" in flat(r.output) and "config.json" in flat(r.output), r.output


def test_threshold_command_fails_closed_and_escapes_what_it_prints(run, work):
    out = copy_run(run, work / "run")
    edit_config(out, lambda c: c["anomaly"].update(source="\x1b[2Jvalidation"))
    r = invoke("threshold", out)
    assert r.exit_code == 0 and "\x1b" not in r.output and "\\x1b[2Jvalidation" in r.output, r.output
    edit_config(out, lambda c: c["anomaly"].update(threshold=float("nan")))
    r = invoke("threshold", out)
    assert r.exit_code == 2 and "anomalysectionisdamaged" in flat(r.output), r.output
    for fix in (["--value", "40"], ["--quantile", "0.9"]):  # what the message tells the user to do mends it
        edit_config(out, lambda c: c["anomaly"]["by_score"][c["anomaly"]["score"]].update(threshold=float("nan")))
        r = invoke("threshold", out, *fix)
        assert r.exit_code == 0, r.output
        assert invoke("threshold", out).exit_code == 0
    edit_config(out, lambda c: c["anomaly"].update(threshold=1.0, by_score={"excess": {"threshold": 1.0, "scores": "x"}}))
    r = invoke("threshold", out, "--quantile", "0.9")
    assert r.exit_code == 2 and "anomalysectionisdamaged" in flat(r.output), r.output


@pytest.mark.parametrize("field,bad", [("n", None), ("n", "x"), ("n", True), ("n", -1), ("threshold", None)])
def test_threshold_command_refuses_a_damaged_count_or_a_missing_threshold(run, work, field, bad):
    """An 'n' that is not a count reached the few-scores note's arithmetic (TypeError), a null
    threshold its formatting: both are a damaged config.json, one line and exit 2."""
    out = copy_run(run, work / "run")
    edit_config(out, lambda c: c["anomaly"].update({field: bad}))
    r = invoke("threshold", out)
    assert r.exit_code == 2, r.output  # a TypeError would be exit 1 here
    assert "anomalysectionisdamaged" in flat(r.output) and "config.json" in flat(r.output), r.output


def _nan_model(run: Path, dst: Path) -> Path:
    """A run whose weights give NaN scores (every weight NaN), its fingerprint updated."""
    import torch

    from vaekit.training import rundir

    out = copy_run(run, dst)
    tensors, meta = rundir.load_tensors(out / rundir.WEIGHTS, "weights")
    tensors = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in tensors.items()}
    rundir.save_tensors(out / rundir.WEIGHTS, tensors, meta)
    edit_config(out, lambda c: c.update(fingerprint=rundir.fingerprint(tensors)))
    return out


def test_nan_scores_are_anomalous_and_json_output_stays_valid_json(run, images, work):
    out = _nan_model(run, work / "nan-run")
    r = invoke("anomaly-score", out, images, "-o", work / "scores.json", "--fail-on-anomaly")
    assert r.exit_code == 1, r.output  # anomalous, never "normal"
    assert "ANOMALOUS" in r.output and "normal" not in r.output

    def refuse(token):
        raise AssertionError(f"bare {token} in JSON output")

    doc = json.loads((work / "scores.json").read_text(), parse_constant=refuse)
    assert doc["n_anomalous"] == len(doc["images"]) == 10
    assert all(row["anomalous"] is True and row["score"] is None for row in doc["images"])


# --- 5. memory bounds --------------------------------------------------------------------------

def test_an_extremely_elongated_image_is_skipped_before_resizing(run, images, work):
    imgs = Path(shutil.copytree(images, work / "imgs"))
    Image.new("L", (1_000_000, 1), 128).save(imgs / "strip.png")  # 2 KB on disk
    r = invoke("anomaly-score", run, imgs)
    assert r.exit_code == 0, r.output
    assert "strip.png:aspectratiotooextreme" in flat(r.output), r.output


def test_one_file_that_runs_out_of_memory_is_skipped_not_the_run(images, monkeypatch):
    from vaekit import images as imageio

    real = imageio.resize

    def resize(x, size, crop=True, full=None):
        if x.shape[1] == 21:
            raise MemoryError
        return real(x, size, crop, full)

    paths = imageio.find_images(images)
    Image.new("L", (21, 20)).save(images.parent / "wide.png")
    monkeypatch.setattr(imageio.read, "resize", resize)  # where load_image looks it up
    report = imageio.load_images([*paths, images.parent / "wide.png"], 16, 1)
    assert len(report.paths) == len(paths)
    assert [(p.name, r) for p, r in report.skipped] == [("wide.png", "not enough memory to resize it")]


def test_image_size_and_latent_dim_are_bounded(run, images, work):
    r = invoke("train", images, "--out", work / "r", "--image-size", "100000")
    assert r.exit_code == 2 and "--image-size must be from 16 to 1024, or up to 3072 for a surface (or 0 for auto), got 100000" in r.output, r.output
    r = invoke("train", images, "--out", work / "r", "--image-size", "8")
    # both ends in one message (they were "16 to 1024" and "16 to 3072")
    assert r.exit_code == 2 and "--image-size must be from 16 to 1024, or up to 3072 for a surface (or 0 for auto), got 8" in r.output, r.output
    out = copy_run(run, work / "run")
    edit_config(out, lambda c: c["model"].update(latent_dim=100000))
    r = invoke("anomaly-score", out, images)
    assert r.exit_code == 2 and "latentdimmustbeanintegerfrom1to4096" in flat(r.output), r.output
    # within the bound but not the weights' size: refused by shape, before the model is built
    edit_config(out, lambda c: c["model"].update(latent_dim=4000))
    r = invoke("anomaly-score", out, images)
    assert r.exit_code == 2 and "weightsdonotmatchtheconfig" in flat(r.output), r.output


def test_sample_data_sizes_are_bounded(work):
    for kind in ("digits", "shapes"):
        r = invoke("sample-data", kind, work / kind, "--size", "100000")
        assert r.exit_code == 2 and "from" in r.output and "to 1024" in r.output, r.output
        assert not (work / kind).exists()


def test_a_code_file_cannot_ask_decode_for_giant_originals(run, images, work, monkeypatch):
    from vaekit import codes

    r = invoke("encode", run, images, "-o", work / "a.codes")
    assert r.exit_code == 0, r.output
    cf = codes.load(work / "a.codes")
    cf.orig_size[0] = (30000, 30000)
    with monkeypatch.context() as m:  # forge it: vaekit itself would never write this
        m.setattr(codes.format, "MAX_ORIG_PIXELS", 10**12)  # where validate looks it up
        codes.save(cf, work / "big.codes")
    r = invoke("decode", run, work / "big.codes", "-o", work / "out", "--size", "original")
    assert r.exit_code == 2 and "largerthananyimagevaekitreads" in flat(r.output), r.output
    assert not (work / "out").exists()


# --- 6. resume and the cache -------------------------------------------------------------------

def test_resume_refuses_settings_it_cannot_change_and_records_those_it_can(run, images, work):
    out = copy_run(run, work / "run")
    have = json.loads((out / "config.json").read_text())["model"]["likelihood"]  # chosen from the data
    other = "gaussian" if have == "bernoulli" else "bernoulli"
    r = invoke("train", images, "--out", out, "--resume", "--epochs", "3", "--latent-dim", "8", "--likelihood", other)
    assert r.exit_code == 2, r.output
    assert "--latent-dim8(therunhas4)" in flat(r.output) and f"--likelihood{other}(therunhas{have})" in flat(r.output)
    r = invoke("train", images, "--out", out, "--resume", "--epochs", "3", "--lr", "0.0005", "--beta", "0.5",
               "--image-size", "16")  # the run's own value: no change
    assert r.exit_code == 0, r.output
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["train"]["lr"], cfg["train"]["beta"], cfg["train"]["epochs"]) == (0.0005, 0.5, 3)
    assert cfg["resumed"] == [{"from_epoch": 3, "epochs": 3, "lr": 0.0005, "beta": 0.5}]


def test_resume_json_must_point_inside_its_own_run(run, images, work):
    import hashlib

    other = copy_run(run, work / "other")
    out = copy_run(run, work / "run")
    target = next((other / "checkpoint").glob("epoch-*.safetensors"))
    (out / "checkpoint" / "resume.json").write_text(json.dumps(
        {"epoch": 1, "file": os.path.relpath(target, out / "checkpoint"),
         "sha256": hashlib.sha256(target.read_bytes()).hexdigest()}))
    r = invoke("train", images, "--out", out, "--resume", "--epochs", "3")
    assert r.exit_code == 2 and "mustnameanepoch-NNNN.safetensors" in flat(r.output), r.output


def test_a_corrupted_pixel_cache_is_rebuilt_not_trained_on(images, tmp_path):
    from vaekit.training import cache
    from vaekit import images as imageio

    paths = imageio.find_images(images)
    first = cache.load_cached(paths, 16, 1, tmp_path)
    want = np.array(first.images)
    data = tmp_path / f"{first.key}.u8"
    raw = bytearray(data.read_bytes())
    raw[100] ^= 0xFF
    data.write_bytes(bytes(raw))
    again = cache.load_cached(paths, 16, 1, tmp_path)
    assert not again.hit
    np.testing.assert_array_equal(np.array(again.images), want)


# --- 8. terminal, CSV and damaged files --------------------------------------------------------

def test_control_characters_in_names_are_escaped_on_the_terminal(run, images, work):
    imgs = Path(shutil.copytree(images, work / "imgs"))
    os.rename(imgs / "img_00.png", imgs / "a\x1b]52;c;aGk=\x07.png")
    (imgs / "\x1b[2J.png").write_bytes(b"not pixels")
    r = invoke("anomaly-score", run, imgs)
    assert r.exit_code == 0, r.output
    assert "\x1b" not in r.output and "\x07" not in r.output
    flat = r.output.replace("\n", "")  # the terminal wraps long paths
    assert "a\\x1b]52;c;aGk=\\x07.png" in flat and "\\x1b[2J.png: not an image" in flat


def test_a_name_that_is_not_utf8_shows_its_byte_on_the_terminal(run, images, work):
    # each undecodable byte printed as one "?" (two names differing only there looked alike);
    # now as \xNN, as the CSV writes it
    imgs = Path(shutil.copytree(images, work / "imgs"))
    os.rename(os.fsencode(imgs / "img_00.png"), os.fsencode(imgs) + b"/caf\xe9.png")
    r = invoke("anomaly-score", run, imgs)
    assert r.exit_code == 0, r.output
    assert "caf\\xe9.png" in r.output.replace("\n", ""), r.output


def test_csv_is_valid_utf8_and_neutralises_formulas(run, images, work, monkeypatch):
    imgs = Path(shutil.copytree(images, work / "imgs"))
    os.rename(imgs / "img_00.png", imgs / os.fsdecode(b"caf\xe9.png"))
    os.rename(imgs / "img_01.png", imgs / "=HYPERLINK(1).png")
    os.rename(imgs / "img_02.png", imgs / "-2+3.png")
    monkeypatch.chdir(imgs)  # `vaekit anomaly-score RUN .`: the names are the cells' first characters
    r = invoke("anomaly-score", run, ".", "-o", work / "s.csv")
    assert r.exit_code == 0, r.output
    text = (work / "s.csv").read_bytes().decode("utf-8")  # strict: raises if not UTF-8
    import csv

    cells = [row[0] for row in csv.reader(text.splitlines())][1:]
    assert "caf\\xe9.png" in cells
    assert "'=HYPERLINK(1).png" in cells and "'-2+3.png" in cells
    assert not [c for c in cells if c[0] in "=+-@"]


def _deep(n: int = 100_000) -> str:
    return "[" * n + "]" * n


@pytest.mark.parametrize("how", ["anomaly a string", "anomaly a list", "deeply nested", "model a list",
                                 "atypicality without its calibration"])
def test_damaged_config_json_is_exit_2_naming_the_file(run, images, work, how):
    out = copy_run(run, work / "run")
    if how == "deeply nested":
        (out / "config.json").write_text('{"format": "vaekit-run/1", "model": ' + _deep() + "}")
    else:
        edit_config(out, {"anomaly a string": lambda c: c.update(anomaly="high"),
                          "anomaly a list": lambda c: c.update(anomaly=[1, 2]),
                          "model a list": lambda c: c.update(model=[16]),
                          # would have scored `excess` against no threshold, saying so in one line only
                          "atypicality without its calibration": lambda c: c["anomaly"].pop("calibration")}[how])
    r = invoke("anomaly-score", out, images)
    assert r.exit_code == 2, r.output
    assert "config.json" in flat(r.output) and "Traceback" not in r.output


def test_deeply_nested_safetensors_header_is_exit_2(run, images, work):
    out = copy_run(run, work / "run")
    header = ('{"__metadata__": {"format": "vaekit-run/1"}, "x": ' + _deep() + "}").encode()
    (out / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    r = invoke("anomaly-score", out, images)
    assert r.exit_code == 2 and "model.safetensors" in flat(r.output), r.output


@pytest.mark.parametrize("field,value", [("epoch", "1"), ("best", [0]), ("param_groups", {"lr": 1}),
                                         ("history_len", -1)])
def test_checkpoint_metadata_of_the_wrong_type_is_exit_2(run, images, work, field, value):
    import hashlib

    from vaekit.training import rundir

    out = copy_run(run, work / "run")
    pointer = json.loads((out / "checkpoint" / "resume.json").read_text())
    path = out / "checkpoint" / pointer["file"]
    tensors, meta = rundir.load_tensors(path, "checkpoint")
    digest = rundir.save_tensors(path, tensors, {**meta, field: value})
    (out / "checkpoint" / "resume.json").write_text(json.dumps({**pointer, "sha256": digest}))
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    r = invoke("train", images, "--out", out, "--resume", "--epochs", "3")
    assert r.exit_code == 2, r.output
    assert "checkpoint" in r.output and "isdamaged" in flat(r.output), r.output


def _resealed(src: Path, dst: Path, **props: str) -> None:
    """The export's main file with some vaekit metadata changed and its checksum redone, as
    someone who read the format would forge it."""
    import onnx

    from vaekit.inference.engine_onnx import part_paths
    from vaekit.export.metadata import sealed

    for role, p in part_paths(src).items():
        if p.is_file():  # a reader file only for a surface model
            shutil.copy(p, part_paths(dst)[role])
    proto = onnx.load(str(src))
    meta = {p.key: p.value for p in proto.metadata_props}
    meta.update(props)
    onnx.helper.set_model_props(proto, meta)
    dst.write_bytes(sealed(proto))


@pytest.mark.parametrize("props", [{"vaekit.latent_dim": "7"}, {"vaekit.latent_dim": "100000"},
                                   {"vaekit.anomaly": json.dumps({"threshold": "NaN"})},
                                   {"vaekit.anomaly": '{"threshold": NaN}'},
                                   {"vaekit.anomaly": '"high"'},
                                   {"vaekit.anomaly": _deep(50_000)}])
@pytest.mark.slow
def test_forged_onnx_metadata_is_exit_2(props, tmp_path, tmp_path_factory):
    from export_support import exported

    ex = exported(tmp_path_factory)
    main = tmp_path / "model.onnx"
    _resealed(ex.onnx, main, **props)
    r = invoke("anomaly-score", main, ex.digits / "test" / "normal", "--fail-on-anomaly")
    assert r.exit_code == 2, r.output
    assert "model.onnx" in flat(r.output) and "Traceback" not in r.output


def test_an_unreadable_sub_folder_is_named_when_skipped(run, images, work):
    import hostile

    imgs = Path(shutil.copytree(images, work / "imgs"))
    (imgs / "locked").mkdir()
    shutil.copy(imgs / "img_00.png", imgs / "locked" / "inside.png")
    (imgs / "locked").chmod(0)
    try:
        with hostile.unprivileged():
            r = CliRunner().invoke(app, ["--threads", "1", "anomaly-score", str(run), str(imgs)],
                                   env={"COLUMNS": "250"})
    finally:
        (imgs / "locked").chmod(0o755)
    assert r.exit_code == 0, r.output
    assert "imgs/locked:unreadablefolder" in flat(r.output), r.output


@pytest.mark.slow
def test_vaekit_debug_shows_the_traceback(run, images, work):
    out = copy_run(run, work / "run")
    (out / "config.json").write_text("{")
    env = {**os.environ, "VAEKIT_THREADS": "1"}
    quiet = subprocess.run([EXE, "anomaly-score", str(out), str(images)], capture_output=True, text=True, env=env)
    loud = subprocess.run([EXE, "anomaly-score", str(out), str(images)], capture_output=True, text=True,
                          env={**env, "VAEKIT_DEBUG": "1"})
    assert quiet.returncode == loud.returncode == 2
    assert "Traceback" not in quiet.stderr and "error: run config is corrupt" in quiet.stderr
    assert "Traceback (most recent call last)" in loud.stderr and "run config is corrupt" in loud.stderr


@pytest.mark.slow
def test_export_removes_staging_folders_that_a_killed_export_left(run, work):
    from vaekit.fileio.leftovers import PARTIAL_MARK, partial_tag

    stale = work / ".model.onnx.vaekit-export-999999999-0a1b.tmp"  # no such process
    (stale / "int8").mkdir(parents=True)
    (stale / "model.onnx").write_bytes(b"half")
    (stale / PARTIAL_MARK).write_bytes(partial_tag(999999999))
    live = work / f".model.onnx.vaekit-export-{os.getpid()}-ffff.tmp"  # an export still running
    live.mkdir()
    (live / PARTIAL_MARK).write_bytes(partial_tag())
    users = work / ".model.onnx.vaekit-export-999999998-mine.tmp"  # a user's folder, only named like one
    users.mkdir()
    (users / "notes.txt").write_text("precious")
    r = invoke("export", run, "-o", work / "model.onnx")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in work.iterdir() if p.name != "cache") == sorted([
        live.name, users.name, "model.decoder.onnx", "model.encoder.onnx", "model.onnx"])
    assert (users / "notes.txt").read_text() == "precious"


def test_vaekit_errors_carry_their_exit_codes_and_keep_the_old_base_types(run, work):
    import vaekit
    from vaekit import errors
    from vaekit_cli.main import exit_code_for

    for cls, base in ((errors.BadInput, ValueError), (errors.DamagedFile, ValueError),
                      (errors.ForeignModel, ValueError), (errors.MissingExtra, ImportError), (errors.InUse, OSError)):
        assert issubclass(cls, errors.VaekitError) and issubclass(cls, base)
        assert exit_code_for(cls("x")) == cls.exit_code == 2
    (work / "notes").mkdir()
    (work / "notes" / "config.json").write_text('{"name": "resnet50"}')
    with pytest.raises(errors.ForeignModel, match="not a vaekit run directory"):
        vaekit.load(work / "notes")
    assert exit_code_for(TypeError("a bug")) == 3


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc, where no file can be created")
@pytest.mark.parametrize("command, out", [("anomaly-score", "s.csv"), ("encode", "x.codes"), ("reconstruct", "rec")])
def test_an_output_whose_journal_cannot_be_created_is_one_line_and_exit_2(run, images, command, out):
    # /proc/OUT.partial cannot be created (ENOENT): the journal was opened as None and locked,
    # a TypeError and exit 3 with a traceback
    r = invoke(command, run, images, "-o", f"/proc/{out}")
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and "bug in vaekit" not in r.output
    assert "/proc/" in r.output and len(r.output.strip().splitlines()) <= 2, r.output


def test_train_into_a_folder_that_cannot_be_created_is_one_line_and_exit_2(images, work, monkeypatch):
    # a read-only file system: mkdir's OSError (EROFS) was exit 3, "a bug in vaekit"
    import errno

    real = Path.mkdir
    target = work / "ro" / "run"

    def mkdir(self, *a, **k):
        if str(self).startswith(str(work / "ro")):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    r = invoke("train", images, "--out", target, *TINY, "--epochs", "1")
    assert r.exit_code == 2, r.output
    assert "Read-only file system" in r.output and "bug in vaekit" not in r.output, r.output
    assert not (work / "ro").exists()


def test_ctrl_c_in_a_scoring_job_says_how_to_go_on(run, images, work, monkeypatch):
    # it printed "interrupted" alone; train said how to continue, the jobs with journals did not
    import vaekit.stream.journals as journals

    real, calls = journals.Journal.append, []

    def interrupted(self, *a, **k):  # the first batch is kept, the second interrupted
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(journals.Journal, "append", interrupted)
    r = invoke("anomaly-score", run, images, "-o", work / "s.csv", "--batch-size", "1")
    assert r.exit_code == 130 and (work / "s.csv.partial").exists(), r.output
    assert "interrupted: the batches it finished, if any, are kept; run the same command with --resume" in r.output, r.output
    # rows to stdout keep nothing, and --resume there is refused: no such advice (a helper's review)
    from vaekit.inference.engine import Model

    def ctrl_c(*a, **k):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(Model, "score", ctrl_c)
        r = invoke("anomaly-score", run, images, "--batch-size", "1")
    assert r.exit_code == 130 and "--resume" not in r.output, r.output
    calls.append(1)  # interrupted before its first batch: the job removes its journal, nothing to resume
    r = invoke("anomaly-score", run, images, "-o", work / "t.csv")
    assert r.exit_code == 130 and "--resume" not in r.output and not (work / "t.csv.partial").exists(), r.output


def test_a_ctrl_c_while_the_cli_imports_its_libraries_exits_130_without_a_traceback(tmp_path):
    # the first ~0.3 s: a Ctrl-C printed a traceback from deep in typer's or rich's imports, exit 1
    import subprocess
    import sys

    fake = tmp_path / "typer"
    fake.mkdir()
    (fake / "__init__.py").write_text("import os, signal, time\nos.kill(os.getpid(), signal.SIGINT)\ntime.sleep(30)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    r = subprocess.run([sys.executable, "-c", "from vaekit_cli.main import main"], capture_output=True, text=True,
                       env=env, timeout=60)
    assert r.returncode == 130 and "Traceback" not in r.stderr, r.stderr


def test_a_second_ctrl_c_while_reading_ahead_stops_is_not_printed(monkeypatch):
    # "Exception ignored in: <generator object read_ahead.<locals>.consume>" and a traceback
    import threading

    from vaekit.stream.pipeline import read_ahead

    it = read_ahead(iter(range(100)))
    assert next(it) == 0
    real = threading.Thread.join

    def second_ctrl_c(self, timeout=None):
        real(self, timeout)
        raise KeyboardInterrupt

    monkeypatch.setattr(threading.Thread, "join", second_ctrl_c)
    try:
        it.close()
    except KeyboardInterrupt:
        raised = True  # out of the generator's clean-up (printed as "Exception ignored" when collected)
    else:
        raised = False
    monkeypatch.undo()
    assert not raised


def test_an_import_of_the_cli_that_fails_leaves_ctrl_c_as_it_was(tmp_path):
    # the handler that ends the process at once stayed installed: a notebook that caught the
    # ImportError was then killed outright by its next Ctrl-C
    import subprocess
    import sys

    code = ("import signal, sys\nsys.modules['typer'] = None\ntry:\n    import vaekit_cli.main\n"
            "except ImportError:\n    pass\nprint(signal.getsignal(signal.SIGINT) is signal.default_int_handler)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "True", r.stdout + r.stderr
