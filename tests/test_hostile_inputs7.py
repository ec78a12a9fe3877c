"""What a hostile tester found in round 7: decodes interrupted halfway (while the PNGs were
written, and while they were moved into place), threshold options at the edge of floating point,
and ... (each test names what it did before)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_hostile_inputs4 import _images, invoke, tiny_rgb_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_rgb_run(tmp_path_factory.mktemp("inputs7"))


@pytest.fixture(scope="module")
def archives(run, tmp_path_factory):
    """A code file and a lossy .vkc of 12 images, written by the tiny run."""
    root = tmp_path_factory.mktemp("archives7")
    src = _images(root / "src", 12, seed=3)
    for name, extra in (("a.codes", []), ("a.vkc", ["--quality", "4"])):
        r = invoke("encode", run, src, "-o", root / name, *extra)
        assert r.exit_code == 0, r.output
    return {"codes": root / "a.codes", "vkc": root / "a.vkc"}


def _one_line_error(r, code: int = 2) -> str:
    assert r.exit_code == code, r.output
    assert "Traceback" not in r.output
    return r.output


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


# --- decode interrupted halfway ------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["codes", "vkc"])
@pytest.mark.parametrize("phase", ["decoding", "moving"])
def test_a_decode_interrupted_halfway_leaves_no_output(run, archives, tmp_path, monkeypatch, kind, phase):
    """A code file's decode wrote each PNG straight to its name: a Ctrl-C halfway left the first
    ones, and the next decode refused them as existing outputs. A .vkc's decode staged its PNGs,
    but a Ctrl-C while they were moved into place left those moved so far (18 of 2,000 in one try)."""
    import vaekit.fileio.staging as staging
    import vaekit.images as imageio

    calls = {"n": 0}
    target = (imageio, "save_png") if phase == "decoding" else (staging, "_move")
    real = getattr(*target)

    def third_interrupts(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(*target, third_interrupts)
    out = tmp_path / "out"
    r = invoke("decode", run, archives[kind], "-o", out)
    assert r.exit_code == 130, r.output
    assert calls["n"] == 3  # it was stopped halfway, after two files
    assert _files(out) == [] and not out.exists()  # the folder it made goes too
    monkeypatch.setattr(*target, real)
    r = invoke("decode", run, archives[kind], "-o", out)  # no --overwrite needed: nothing was left
    assert r.exit_code == 0, r.output
    assert len([p for p in out.iterdir() if p.suffix == ".png"]) == 12


def test_a_move_interrupted_into_an_existing_folder_takes_back_only_its_own_files(run, archives, tmp_path, monkeypatch):
    """Into a folder that holds the user's files and sub-folders: the files it moved go again, the
    folders it made for them too, and what was there before stays."""
    import vaekit.fileio.staging as staging

    src = _images(tmp_path / "src", 3)
    (src / "sub").mkdir()
    (src / "img02.png").rename(src / "sub" / "img02.png")
    r = invoke("encode", run, src, "-o", tmp_path / "n.codes")
    assert r.exit_code == 0, r.output
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    before = _files(out)
    real, calls = staging._move, {"n": 0}

    def last_interrupts(s, t, *rest):  # (_move gained replace=)
        calls["n"] += 1
        if calls["n"] == 3:  # img00, img01 moved; sub/ made for sub/img02 is not yet
            raise KeyboardInterrupt
        return real(s, t, *rest)

    monkeypatch.setattr(staging, "_move", last_interrupts)
    r = invoke("decode", run, tmp_path / "n.codes", "-o", out)
    assert r.exit_code == 130, r.output
    assert _files(out) == before and (out / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("stop", [KeyboardInterrupt, OSError])
def test_a_decode_with_overwrite_stopped_while_it_moves_puts_back_the_files_it_replaced(run, tmp_path, monkeypatch,
                                                                                        stop):
    # the files replaced before the stop kept the new decode: not all or nothing (a helper's review)
    import vaekit.fileio.staging as staging

    src = _images(tmp_path / "src", 3)
    assert invoke("encode", run, src, "-o", tmp_path / "n.codes").exit_code == 0
    out = tmp_path / "out"
    out.mkdir()
    for name in ("img00.png", "img01.png", "img02.png"):
        (out / name).write_bytes(b"the user's " + name.encode())
    (out / "img00.png").chmod(0o640)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real, calls = staging._move, {"n": 0}

    def third_fails(s, t, *rest):
        calls["n"] += 1
        if calls["n"] == 3:  # img00 and img01 already replaced
            raise staging.cannot_write(OSError(28, "No space left on device"), t) if stop is OSError else stop
        return real(s, t, *rest)

    monkeypatch.setattr(staging, "_move", third_fails)
    r = invoke("decode", run, tmp_path / "n.codes", "-o", out, "--overwrite")
    assert r.exit_code == (130 if stop is KeyboardInterrupt else 2), r.output
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert oct((out / "img00.png").stat().st_mode & 0o777) == oct(0o640)
    monkeypatch.undo()
    r = invoke("decode", run, tmp_path / "n.codes", "-o", out, "--overwrite")
    assert r.exit_code == 0 and all((out / n).read_bytes().startswith(b"\x89PNG") for n in before), r.output
    assert sorted(p.name for p in out.iterdir()) == sorted(before)


def test_a_ctrl_c_while_the_staging_folder_goes_still_removes_it(run, tmp_path, monkeypatch):
    # after the last move, a Ctrl-C cut the removal of the staging folder short: it stayed, with
    # hard links to every file --overwrite had replaced, and exit 130 said the complete decode was not
    # (two helpers' reviews)
    import shutil as shutil_module

    import vaekit.fileio.staging as staging

    src = _images(tmp_path / "src", 3)
    assert invoke("encode", run, src, "-o", tmp_path / "n.codes").exit_code == 0
    out = tmp_path / "out"
    assert invoke("decode", run, tmp_path / "n.codes", "-o", out).exit_code == 0
    real, calls = shutil_module.rmtree, {"n": 0}

    def interrupted_once(path, *a, **k):
        calls["n"] += 1
        if calls["n"] == 1 and ".vaekit-decode-" in str(path):
            raise KeyboardInterrupt
        return real(path, *a, **k)

    monkeypatch.setattr(staging.shutil, "rmtree", interrupted_once)
    r = invoke("decode", run, tmp_path / "n.codes", "-o", out, "--overwrite")
    assert r.exit_code == 0 and calls["n"] == 2, r.output
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in src.iterdir())  # no staging folder left


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["codes", "vkc"])
def test_ctrl_c_on_a_decode_in_a_fresh_process_leaves_all_or_nothing(run, tmp_path, kind):
    """Through the executable: Ctrl-C as soon as a PNG exists anywhere under the output (staged or
    not). Either the decode finished first (exit 0, every image) or nothing is left (exit 130)."""
    src = tmp_path / "src"
    src.mkdir()
    one = next(iter(sorted(_images(tmp_path / "one", 1).iterdir())))
    for i in range(1500):
        shutil.copyfile(one, src / f"t{i:04d}.png")
    archive = tmp_path / f"a.{kind}"
    r = invoke("encode", run, src, "-o", archive, *(["--quality", "4"] if kind == "vkc" else []))
    assert r.exit_code == 0, r.output
    out = tmp_path / "out"
    exe = Path(sys.executable).with_name("vaekit")
    p = subprocess.Popen([str(exe), "--threads", "1", "decode", str(run), str(archive), "-o", str(out), "--size", "original"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    while p.poll() is None and not (out.is_dir() and next(out.rglob("*.png"), None)):
        time.sleep(0.001)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=300)
    assert p.returncode in (0, 130), err
    pngs = [f for f in out.rglob("*.png")] if out.exists() else []
    assert len(pngs) == (1500 if p.returncode == 0 else 0), (p.returncode, len(pngs))


# --- threshold options at the edge of floating point ---------------------------------------------

@pytest.fixture
def own_run(run, tmp_path):
    """A copy of the module's run that a test may move the threshold of."""
    return Path(shutil.copytree(run, tmp_path / "run"))


def test_a_target_fpr_too_small_for_a_float_is_named_as_given(own_run):
    """--target-fpr 1e-300 is in (0, 1), but 1 - 1e-300 is 1.0: it was refused as 'threshold
    quantile must be in (0, 1), got 1.0', an option and a value the user never gave."""
    before = (own_run / "config.json").read_bytes()
    said = _one_line_error(invoke("threshold", own_run, "--target-fpr", "1e-300"))
    assert "target false-positive rate 1e-300" in said and "quantile" not in said
    assert (own_run / "config.json").read_bytes() == before
    assert invoke("threshold", own_run, "--target-fpr", "1e-16").exit_code == 0


def test_a_quantile_just_below_one_is_not_printed_as_one(own_run):
    """--quantile 0.99999999999 was shown as 'quantile 1', a quantile that is refused."""
    r = invoke("threshold", own_run, "--quantile", "0.99999999999")
    assert r.exit_code == 0, r.output
    assert "(quantile 0.99999999999)" in r.output and "quantile 1)" not in r.output
    flat = "".join(r.output.replace("│", " ").split())
    assert "(thatneeds99999999999)" in flat, flat  # was 99999991725: 1 - q in floats
    src = _images(own_run.parent / "imgs", 1)
    r = invoke("anomaly-score", own_run, src)
    assert r.exit_code == 0, r.output
    assert "quantile 0.99999999999 of" in r.output.replace("\n", " ")


# --- a source removed while the job runs ---------------------------------------------------------

@pytest.mark.parametrize("kind", ["codes", "vkc"])
def test_a_source_removed_after_it_was_read_is_skipped_and_named(run, tmp_path, monkeypatch, kind):
    """encode decodes a batch, encodes it, then reads each file's header again for its original
    size and bytes: a file removed meanwhile (a folder another process empties) ended the whole
    job with 'error: [Errno 2] No such file or directory', the .codes journal left behind."""
    from vaekit import stream

    src = _images(tmp_path / "src", 6)
    victim = src / "img02.png"
    real = stream.iter_batches

    def read_then_remove(*a, **k):
        for b in real(*a, **k):
            victim.unlink(missing_ok=True)  # after its batch was read, before its size is
            yield b

    monkeypatch.setattr(stream, "iter_batches", read_then_remove)
    out = tmp_path / f"a.{kind}"
    r = invoke("encode", run, src, "-o", out, *(["--quality", "4"] if kind == "vkc" else []))
    assert r.exit_code == 0, r.output
    assert "img02.png: removed or replaced while the job ran" in r.output.replace("\n", "")
    assert "5 encoded, 1 skipped" in r.output and not Path(f"{out}.partial").exists()
    monkeypatch.setattr(stream, "iter_batches", real)
    r = invoke("decode", run, out, "-o", tmp_path / "dec")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "dec").iterdir()) == [f"img0{i}.png" for i in (0, 1, 3, 4, 5)]


# --- outputs that are the model's own files ------------------------------------------------------

@pytest.fixture(scope="module")
def export(tmp_path_factory):
    from export_support import exported

    return exported(tmp_path_factory)


@pytest.mark.slow  # trains and exports a model (export_support.exported), ~9 s
@pytest.mark.parametrize("part", ["encoder", "decoder"])
def test_encode_never_writes_over_a_part_of_the_export_it_encodes_with(export, tmp_path, part):
    """`encode digits.onnx IMGS -o digits.decoder.onnx --overwrite` replaced the export's own
    decoder with the archive (a .vkc or a code file), and the export never loaded again; the
    same -o is refused for anomaly-score and reconstruct (docs/data-safety.md)."""
    from vaekit.inference.engine_onnx import part_paths

    victim = part_paths(export.onnx)[part]
    before = victim.read_bytes()
    src = export.digits / "test" / "normal"
    for extra in (["--quality", "3"], []):
        said = _one_line_error(invoke("encode", export.onnx, src, "-o", victim, "--overwrite", *extra))
        assert f"is a file of the model {export.onnx}" in said.replace("\n", "")
    assert victim.read_bytes() == before


def test_evaluate_never_plots_into_the_run(run, tmp_path):
    """evaluate --plot RUN/preview.png --overwrite replaced the run's preview (every other output
    of the commands that read a model refuses the run directory)."""
    before = (run / "preview.png").read_bytes()
    normal, anomalous = _images(tmp_path / "n", 3), _images(tmp_path / "a", 3, seed=5)
    said = _one_line_error(invoke("evaluate", run, "--normal", normal, "--anomalous", anomalous,
                                  "--plot", run / "preview.png", "--overwrite"))
    assert f"inside the model's run directory {run}" in said.replace("\n", "")
    assert (run / "preview.png").read_bytes() == before


# --- a run whose training was stopped before its finish ------------------------------------------

def stopped_copy(run: Path, dest: Path) -> Path:
    """A copy of `run` as a Ctrl-C during the fold models leaves it (measured: every epoch's
    checkpoint and model.safetensors written; config.json without anomaly, fingerprint, codec)."""
    import json

    stopped = Path(shutil.copytree(run, dest))
    cfg = json.loads((stopped / "config.json").read_text())
    for key in ("anomaly", "fingerprint", "codec"):
        cfg.pop(key, None)
    (stopped / "config.json").write_text(json.dumps(cfg))
    return stopped


def test_a_run_stopped_before_its_finish_is_not_exported_or_coded(run, tmp_path):
    """export wrote an .onnx of it, 'parity ok', exit 0, with no threshold and no coding tables;
    encode --quality told a command-line user to call vaekit.codec.fit_prior + save_prior. Both now
    say the training did not finish and give the --resume that finishes it."""
    stopped = stopped_copy(run, tmp_path / "stopped")
    src = _images(tmp_path / "src", 2)
    for args in (["export", stopped, "-o", tmp_path / "s.onnx"], ["encode", stopped, src, "-o", tmp_path / "s.vkc", "--quality", "3"]):
        said = _one_line_error(invoke(*args)).replace("\n", "")
        assert "stopped before it finished" in said and f"--out {stopped} --resume" in said, said
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src", "stopped"]


def test_tables_are_not_fitted_into_a_run_stopped_before_its_finish(run, tmp_path):
    """encode --fit stored its tables in such a run and wrote the .vkc; `train --resume` then
    finished the run, whose finish stores freshly fitted tables in their place (no earlier set
    kept), and the .vkc decoded no more ('coded with tables X, but RUN has Y')."""
    stopped = stopped_copy(run, tmp_path / "stopped")
    before = (stopped / "config.json").read_bytes()
    src = _images(tmp_path / "src", 2)
    said = _one_line_error(invoke("encode", stopped, src, "-o", tmp_path / "s.vkc", "--quality", "3", "--fit", src))
    assert "stopped before it finished" in said.replace("\n", "")
    assert (stopped / "config.json").read_bytes() == before and not (tmp_path / "s.vkc").exists()


def test_the_default_score_of_a_run_stopped_before_its_finish_is_refused_a_named_score_runs(run, tmp_path):
    """anomaly-score of such a run fell back to the -ELBO with 'threshold: none: the model stores
    no threshold for the neg_elbo score', not a word of the training that did not finish. The
    default score (and evaluate's) now says so and names the --resume; --score neg_elbo still
    scores its weights as they are."""
    stopped = stopped_copy(run, tmp_path / "stopped")
    src, other = _images(tmp_path / "src", 2), _images(tmp_path / "other", 2, seed=1)  # not copies of src
    for args in (["anomaly-score", stopped, src, "-o", tmp_path / "s.csv"],
                 ["evaluate", stopped, "--normal", src, "--anomalous", other]):
        said = _one_line_error(invoke(*args)).replace("\n", "")
        assert "stopped before it finished" in said and f"--out {stopped} --resume" in said, said
        assert "--score neg_elbo" in said
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other", "src", "stopped"]
    r = invoke("anomaly-score", stopped, src, "-o", tmp_path / "s.csv", "--score", "neg_elbo")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "s.csv").read_text().count("\n") == 3  # the header and a row for each image


def test_a_name_decode_could_not_write_is_named_with_the_files_given_not_their_list(run, tmp_path):
    """Given a list of files (as the web app does), the refusal read 'cannot encode
    [PosixPath('...')]: the file name ...'."""
    import vaekit
    from vaekit import codes
    from vaekit.errors import BadInput

    src = _images(tmp_path / "src", 2)
    odd = src / "a\\b.png"
    next(src.iterdir()).rename(odd)
    files = sorted(src.iterdir())
    with pytest.raises(BadInput) as e:
        codes.encode_folder(vaekit.load(run), files, tmp_path / "x.codes")
    said = str(e.value)
    assert said.startswith("cannot encode 2 files: the file name 'a\\\\b.png' holds a backslash"), said
    assert "PosixPath" not in said and not (tmp_path / "x.codes").exists()
    odd.rename(src / "a:b.png")  # a plain Linux name that reads as drive a: on Windows (h2, 2026-12-08: "a backslash")
    with pytest.raises(BadInput, match="'a:b.png' holds a backslash, begins like a Windows drive"):
        codes.encode_folder(vaekit.load(run), src, tmp_path / "x.codes")


@pytest.mark.parametrize("how", [["--quality", "4"], ["--lossless"]])
def test_an_archive_is_not_written_under_a_code_files_name(run, tmp_path, how):
    """`encode --quality 4 -o x.codes` wrote a .vkc named .codes, though a .vkc name without
    --quality is refused; the two kinds of file keep their own names."""
    src = _images(tmp_path / "src", 2)
    said = _one_line_error(invoke("encode", run, src, "-o", tmp_path / "x.codes", *how)).replace("\n", "")
    assert "x.codes names a fixed-length code file" in said and "name it x.vkc" in said, said
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_a_vkc_whose_header_claims_a_strip_no_reader_could_read_is_refused(run, tmp_path):
    """The .vkc's header had only the 179 M-pixel bound: a forged 1 x 5,000,000 original size
    passed it, and decode --size original would build the strip whole (a code file's own check,
    vaekit.codes.format.too_elongated, now guards both)."""
    from vaekit import codec
    from vaekit.codec import container

    src = _images(tmp_path / "src", 1)
    r = invoke("encode", run, src, "-o", tmp_path / "a.vkc", "--quality", "4")
    assert r.exit_code == 0, r.output
    header, offset = container.read_header(tmp_path / "a.vkc")
    data = (tmp_path / "a.vkc").read_bytes()
    (tmp_path / "words").write_bytes(data[offset:len(data) - container.DIGESTS[container.MAGIC]])
    header.orig_size[0] = [1, 5_000_000]  # forged: vaekit's reader refuses a file of that shape
    container.write(tmp_path / "strip.vkc", header, tmp_path / "words")
    said = _one_line_error(invoke("decode", run, tmp_path / "strip.vkc", "-o", tmp_path / "out", "--size", "original"))
    assert "too elongated for an image vaekit encodes" in said.replace("\n", ""), said
    assert not (tmp_path / "out").exists()
    with pytest.raises(container.ArchiveError, match="too elongated"):
        codec.read_info(tmp_path / "strip.vkc")
