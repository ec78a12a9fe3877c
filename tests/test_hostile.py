"""Every command that reads images, over a folder of hostile files mixed with good ones.

For each command: exit code 0 and no traceback; each bad file skipped and named with its reason;
and the results for everything that loads exactly equal to the same command's results on a
folder holding only those files (tests/hostile.py builds both). The commands run without root's
power to read any file (hostile.unprivileged), so the unreadable file really is unreadable.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import hostile
from vaekit_cli.main import app

EXE = shutil.which("vaekit", path=str(Path(sys.executable).parent)) or "vaekit"
TINY = ["--image-size", "16", "--latent-dim", "4", "--base-channels", "4", "--device", "cpu"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tmp_path_factory.mktemp("hostile")


@pytest.fixture(scope="module")
def corpus(base):
    return hostile.build(base / "mixed")


@pytest.fixture(scope="module")
def clean(base):
    return hostile.build(base / "clean", hostile=False)


@pytest.fixture(scope="module")
def anomalous(base):
    """A few clearly different images, for `evaluate`."""
    from PIL import Image

    folder = base / "anomalous"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(folder / f"noise_{i}.png")
    return folder


@pytest.fixture(scope="module")
def run(base, clean):
    """A tiny RGB model trained on the good images."""
    from vaekit.config import ModelConfig, TrainConfig
    from vaekit.train import train

    out = base / "run"
    train(clean.root, out, ModelConfig(image_size=16, channels=3, latent_dim=4, base_channels=4),
          TrainConfig(epochs=2, batch_size=8, seed=0, device="cpu"), channels=3, cache_dir=base / "fixture-cache")
    return out


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A fresh folder, with a pixel cache of its own."""
    monkeypatch.setenv("VAEKIT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


def invoke(*args):
    from vaekit_cli import output

    try:
        with hostile.unprivileged():
            return CliRunner().invoke(app, ["--threads", "1", *map(str, args)], env={"COLUMNS": "250"})
    finally:
        # rich keeps the text of a print that failed (a name it could not encode) and fails
        # every later print with it; one failing command here must not fail the tests after it
        for c in (output.console, output.err_console):
            c._buffer.clear()


from hostile import flat, tree  # noqa: E402


def _train_results(out: Path, root: Path):
    from safetensors.numpy import load_file

    cfg = json.loads((out / "run" / "config.json").read_text())
    weights = load_file(out / "run" / "model.safetensors")
    return {"images": cfg["data"]["images"], "channels": cfg["model"]["channels"],
            "threshold": cfg["anomaly"]["threshold"], "weights": {k: v.tobytes() for k, v in weights.items()}}


def _text(path: Path, root: Path) -> str:
    return path.read_text(encoding="utf-8", errors="surrogateescape").replace(str(root), "<root>")


def _json_results(stdout: str, root: Path):
    def strip(o):
        if isinstance(o, dict):
            # (evaluate's note says the clean folder is the one the run trained on: true of it alone)
            return {k: strip(v) for k, v in o.items() if "skip" not in k and k != "note"}
        if isinstance(o, list):
            return [strip(v) for v in o]
        return o.replace(str(root), "<root>") if isinstance(o, str) else o

    return strip(json.loads(stdout))


# command -> (arguments given the image folder, the output folder, the model, the anomalous
# folder; then how to read its results for comparison)
COMMANDS = {
    "train": (lambda src, out, run, bad: ["train", src, "--out", out / "run", *TINY, "--epochs", "2", "--batch-size", "8"],
              lambda r, out, root: _train_results(out, root)),
    "encode": (lambda src, out, run, bad: ["encode", run, src, "-o", out / "images.codes", "--precision", "f32"],
               lambda r, out, root: (out / "images.codes").read_bytes()),
    "reconstruct": (lambda src, out, run, bad: ["reconstruct", run, src, "-o", out / "recon"],
                    lambda r, out, root: tree(out / "recon")),
    "anomaly-score": (lambda src, out, run, bad: ["anomaly-score", run, src, "-o", out / "scores.csv", "--maps", out / "maps"],
                      lambda r, out, root: (_text(out / "scores.csv", root), tree(out / "maps"))),
    "evaluate": (lambda src, out, run, bad: ["evaluate", run, "--normal", src, "--anomalous", bad, "--json"],
                 lambda r, out, root: _json_results(r.stdout, root)),
}


@pytest.mark.parametrize("command", [pytest.param(c, marks=pytest.mark.slow) if c == "train" else c for c in COMMANDS])
def test_command_skips_bad_files_and_keeps_good_results(command, corpus, clean, run, anomalous, work):
    args, results = COMMANDS[command]
    outs = {}
    for name, c in (("mixed", corpus), ("clean", clean)):
        out = work / name
        out.mkdir()
        r = invoke(*args(c.root, out, run, anomalous))
        assert r.exit_code == 0, f"{command} on the {name} folder: exit {r.exit_code}\n{r.output}"
        assert "Traceback" not in r.output
        outs[name] = (r, out)
    r, out = outs["mixed"]
    said = flat(r.stderr)
    for name, reason in corpus.bad.items():
        assert flat(f"{name}: {reason}") in said, f"{command} did not report {name} ({reason}):\n{r.stderr}"
    assert "cycle/" not in r.output  # the folder that contains itself was scanned once
    if command == "anomaly-score":  # the summary line counts them too (docs/preprocessing.md)
        assert flat(f"; {len(corpus.bad)} skipped (unreadable, named above)") in flat(r.stdout), r.stdout
    mixed, clean_results = (results(*outs[k], c.root) for k, c in (("mixed", corpus), ("clean", clean)))
    assert mixed == clean_results


def test_loader_reports_each_bad_file_with_its_reason(corpus, clean):
    from vaekit import images

    paths = images.find_images(corpus.root)
    assert sorted(p.relative_to(corpus.root).as_posix() for p in paths) == [e.name for e in corpus.entries]
    with hostile.unprivileged():
        report = images.load_images(paths, 16, 3)
        good = images.load_images(images.find_images(clean.root), 16, 3)
    corpus.check_skipped(report.skipped)
    assert [p.relative_to(corpus.root).as_posix() for p in report.paths] == clean.loadable
    np.testing.assert_array_equal(report.images, good.images)


def test_pixel_cache_reports_the_same_and_keeps_each_name(corpus, clean, work):
    """A symlink next to its target shares its real path: both names must come back."""
    from vaekit import images
    from vaekit.training import cache

    paths = images.find_images(corpus.root)
    with hostile.unprivileged():
        first = cache.load_cached(paths, 16, 3, cache_dir=work / "cache")
        again = cache.load_cached(paths, 16, 3, cache_dir=work / "cache")
        good = images.load_images(images.find_images(clean.root), 16, 3)
    assert (first.hit, again.hit) == (False, True)
    for got in (first, again):
        corpus.check_skipped(got.skipped)
        assert [p.relative_to(corpus.root).as_posix() for p in got.paths] == clean.loadable
        np.testing.assert_array_equal(got.images, good.images)


def test_demo_handlers_skip_bad_uploads_and_keep_good_results(corpus, clean, run, work):
    import vaekit
    from demo import handlers

    model = vaekit.load(run)
    got = {}
    for name, c in (("mixed", corpus), ("clean", clean)):
        with hostile.unprivileged():
            comp = handlers.compress(model, c.paths(), work)
            anom = handlers.anomaly(model, c.paths(), 100.0, work)
            latent = handlers.latent_map(model, c.root)
        got[name] = (comp, anom, latent)
    (comp, anom, latent), (comp0, anom0, latent0) = got["mixed"], got["clean"]
    corpus.check_skipped(comp.report.skipped)
    corpus.check_skipped(anom.skipped)
    assert comp.names == comp0.names and comp.report.path.read_bytes() == comp0.report.path.read_bytes()
    assert anom.names == anom0.names
    np.testing.assert_array_equal(anom.scores, anom0.scores)
    assert latent.names == latent0.names
    np.testing.assert_array_equal(latent.xy, latent0.xy)
    # two named images, one of them bad: a clear error naming it
    with pytest.raises(ValueError, match="notes.png: not an image"):
        handlers.interpolation_strip(model, corpus.root / "good_00.png", corpus.root / "notes.png", 3)


def test_demo_training_on_the_corpus_finishes(corpus, work):
    from demo import training

    with hostile.unprivileged():
        events = list(training.train_events(corpus.root, work / "demo-run", 16, 2, 1, threading.Event()))
    assert events[-1].phase == "done"
    cfg = json.loads((work / "demo-run" / "config.json").read_text())
    skipped = dict(cfg["data"]["skipped"])
    assert sorted(skipped) == sorted(corpus.bad)
    assert cfg["data"]["images"] == len(corpus.loadable)


# --- files from elsewhere: tampered, truncated, foreign ----------------------------------------

def _flip_data_byte(path: Path) -> None:
    """Change one byte of a safetensors file's tensor data (its header stays valid)."""
    data = bytearray(path.read_bytes())
    n = int.from_bytes(data[:8], "little")
    data[8 + n + (len(data) - 8 - n) // 2] ^= 0x40
    path.write_bytes(bytes(data))


def _damage_run(run: Path, how: str) -> None:
    from safetensors.numpy import save_file

    weights, config = run / "model.safetensors", run / "config.json"
    if how == "weights altered":
        _flip_data_byte(weights)
    elif how == "weights truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif how == "weights foreign":
        save_file({"encoder.weight": np.zeros((3, 3), np.float32)}, weights)
    elif how == "config foreign":
        config.write_text(json.dumps({"name": "resnet50", "version": 3}))
    elif how == "config truncated":
        config.write_text(config.read_text()[:50])
    elif how == "config mismatched":
        cfg = json.loads(config.read_text())
        cfg["model"]["latent_dim"] += 1
        config.write_text(json.dumps(cfg))
    elif how == "config missing":
        config.unlink()


RUN_DAMAGE = {
    "weights altered": "damaged or was modified",
    "weights truncated": "truncated",
    "weights foreign": "not written by vaekit",
    "config foreign": "not a vaekit run directory",
    "config truncated": "corrupt",
    "config mismatched": "weights do not match the config",
    "config missing": "run config not found",
}


@pytest.mark.parametrize("how", list(RUN_DAMAGE))
def test_damaged_or_foreign_run_directory_is_one_clear_error_and_no_output(how, run, clean, tmp_path):
    import vaekit
    from vaekit.training.rundir import RunError

    damaged = tmp_path / "run"
    shutil.copytree(run, damaged)
    _damage_run(damaged, how)
    with pytest.raises(RunError, match=RUN_DAMAGE[how]):
        vaekit.load(damaged)
    r = invoke("encode", damaged, clean.root, "-o", tmp_path / "out" / "images.codes")
    assert r.exit_code == 2, r.output
    assert r.output.startswith("error: ") and flat(RUN_DAMAGE[how]) in flat(r.output), r.output
    assert "Traceback" not in r.output
    assert not (tmp_path / "out").exists()


def test_damaged_checkpoint_or_metrics_refuse_to_resume(run, clean, tmp_path):
    from vaekit.config import ModelConfig, TrainConfig
    from vaekit.training.rundir import RunError
    from vaekit.train import train

    def attempt(folder):
        train(clean.root, folder, ModelConfig(), TrainConfig(), resume=True, resume_epochs=3, cache_dir=tmp_path / "c")

    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(run, a)
    shutil.copytree(run, b)
    _flip_data_byte(next((a / "checkpoint").glob("epoch-*.safetensors")))
    with pytest.raises(RunError, match="does not match resume.json"):
        attempt(a)
    (b / "metrics.jsonl").write_text('{"epoch": 1, "train_lo')
    with pytest.raises(RunError, match="metrics are corrupt"):
        attempt(b)


@pytest.fixture(scope="module")
def codes_file(run, clean, tmp_path_factory):
    out = tmp_path_factory.mktemp("codes") / "images.codes"
    r = invoke("encode", run, clean.root, "-o", out)
    assert r.exit_code == 0, r.output
    return out


@pytest.mark.parametrize("how", ["altered", "truncated", "an image", "weights"])
def test_damaged_or_foreign_code_file_is_one_clear_error_and_no_output(how, codes_file, run, tmp_path):
    bad = tmp_path / "bad.codes"
    data = codes_file.read_bytes()
    bad.write_bytes({"altered": data[:-5] + bytes([data[-5] ^ 1]) + data[-4:], "truncated": data[: len(data) - 7],
                     "an image": (run.parent / "clean" / "good_00.png").read_bytes(),
                     "weights": (run / "model.safetensors").read_bytes()}[how])
    r = invoke("decode", run, bad, "-o", tmp_path / "out")
    assert r.exit_code == 2, r.output
    assert r.output.startswith("error: code file") and "Traceback" not in r.output
    assert not (tmp_path / "out").exists()


# someone else's valid ONNX model: an Identity graph "someone-elses" from x to y, FLOAT [1, 3],
# IR 8, opset 17, no metadata; the bytes onnx.helper.make_model(graph, opset_imports=[make_opsetid("", 17)])
# serialises with ir_version = 8 (onnxruntime runs it). Written out here: importing onnx takes a
# worker ~1 s, and no other test of the fast suite needs it.
FOREIGN_ONNX = bytes.fromhex(
    "08083a4b0a100a017812017922084964656e74697479120d736f6d656f6e652d656c7365735a130a0178120e0a0c08"
    "0112080a0208010a02080362130a0179120e0a0c080112080a0208010a02080342040a001011")


def _foreign_onnx(path: Path) -> None:
    path.write_bytes(FOREIGN_ONNX)


def _altered_onnx(src: Path, dst: Path) -> None:
    """The same export with one weight changed: valid ONNX, valid metadata, another model."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(src)
    init = max(m.graph.initializer, key=lambda t: np.prod(t.dims))
    a = numpy_helper.to_array(init).copy()
    a.flat[0] += 1.0
    init.CopyFrom(numpy_helper.from_array(a, init.name))
    onnx.save(m, dst)


# "foreign" and "not onnx" need no export; the other two damage a real one (an export is slow)
@pytest.mark.parametrize("how", [pytest.param("truncated", marks=pytest.mark.slow), "foreign",
                                 pytest.param("altered", marks=pytest.mark.slow), "not onnx"])
def test_damaged_or_foreign_onnx_is_one_clear_error_and_no_output(how, clean, tmp_path, tmp_path_factory):
    import vaekit
    from vaekit.inference.engine_onnx import OnnxModelError, part_paths

    main = tmp_path / "model.onnx"
    if how in ("truncated", "altered"):
        from export_support import exported

        ex = exported(tmp_path_factory)
        for role, src in part_paths(ex.onnx).items():
            if src.is_file():  # a reader file only for a surface model
                shutil.copy(src, part_paths(main)[role])
    if how == "truncated":
        main.write_bytes(ex.onnx.read_bytes()[: ex.onnx.stat().st_size // 2])
    elif how == "foreign":
        _foreign_onnx(main)
    elif how == "altered":
        _altered_onnx(ex.onnx, main)
    else:
        main.write_bytes(b"<html>not a model</html>")
    x = np.zeros((1, 1, 16, 16), np.uint8)
    with pytest.raises(OnnxModelError):
        vaekit.load(main).score(x)
    r = invoke("encode", main, clean.root, "-o", tmp_path / "out" / "a.codes")
    assert r.exit_code == 2, r.output
    assert r.output.startswith("error: ") and "Traceback" not in r.output
    assert not (tmp_path / "out").exists()


# --- exit codes, through the installed executable ----------------------------------------------

def _child_setup():
    # A runner started in the background (nohup, `cmd &`) hands its children SIGINT ignored,
    # and Python then never raises KeyboardInterrupt: restore the default so Ctrl-C is real.
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
    hostile.unprivileged_exec()


@pytest.fixture(scope="module")
def exe(run, corpus, clean, tmp_path_factory):
    """Start both commands at once (each spends seconds importing torch), then collect them.
    (Through the executable, 0 and 1 are also tested in test_cli_train.py and test_cli_anomaly.py;
    3 only through Typer's runner, test_crash.py::test_cli_exit_code_3_on_nan, to save a
    third torch import here; GuardedGroup maps it the same way in either.)

    name -> (exit code, stdout, stderr, work folder)."""
    import signal
    import time

    base = tmp_path_factory.mktemp("exe")
    env = {**os.environ, "VAEKIT_CACHE_DIR": str(base / "cache"), "COLUMNS": "250",
           # what Python does in a desktop's UTF-8 locale (en_US.UTF-8): strict UTF-8 on stdout;
           # this machine has only C.UTF-8, where Python is lenient and would hide a problem
           "LC_ALL": "C.UTF-8", "PYTHONIOENCODING": "utf-8:strict"}
    commands = {
        "ok: reconstruct the hostile corpus": ["reconstruct", run, corpus.root, "-o", base / "recon"],
        "130: interrupted": ["train", clean.root / "nested", "--out", base / "long", *TINY, "--epochs", "1000"],
    }
    procs, logs = {}, {}
    for i, (name, args) in enumerate(commands.items()):
        logs[name] = (base / f"{i}.stdout", base / f"{i}.stderr")  # files, not pipes: nothing can block
        with open(logs[name][0], "wb") as o, open(logs[name][1], "wb") as e:
            procs[name] = subprocess.Popen([EXE, "--threads", "1", *map(str, args)], env=env, stdout=o, stderr=e,
                                           preexec_fn=_child_setup)
    # Ctrl-C once the long run has a checkpoint: it must stop cleanly and stay resumable
    long = procs["130: interrupted"]
    deadline = time.monotonic() + 300
    while not (base / "long" / "checkpoint" / "resume.json").exists() and long.poll() is None:
        assert time.monotonic() < deadline, "the long run never wrote a checkpoint"
        time.sleep(0.05)
    long.send_signal(signal.SIGINT)
    out = {}
    for name, p in procs.items():
        p.wait(timeout=300)
        stdout, stderr = (f.read_bytes().decode("utf-8", "replace") for f in logs[name])
        out[name] = (p.returncode, stdout, stderr, base)
    return out


@pytest.mark.slow
def test_ctrl_c_exits_130_and_leaves_a_resumable_run(exe):
    from vaekit.training import checkpoint

    code, stdout, stderr, base = exe["130: interrupted"]
    assert code == 130, stdout + stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert checkpoint.load_checkpoint(base / "long")[1]["epoch"] >= 0


@pytest.mark.slow  # starts the installed vaekit in a fresh process
def test_usage_error_exits_2(tmp_path):
    p = subprocess.run([EXE, "encode", str(tmp_path / "no-such-run"), str(tmp_path), "-o", str(tmp_path / "x")],
                       capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "250"})
    assert p.returncode == 2 and "does not exist" in p.stderr, p.stderr


@pytest.mark.slow
def test_installed_executable_over_the_corpus(exe, corpus):
    """Once through the real `vaekit`, unprivileged, in a strict UTF-8 locale: names that are
    not UTF-8 are printed, not a crash, and every good image is reconstructed."""
    code, stdout, stderr, base = exe["ok: reconstruct the hostile corpus"]
    assert code == 0, stdout + stderr
    assert "Traceback" not in stderr
    for name, reason in corpus.bad.items():
        assert flat(f"{name}: {reason}") in flat(stderr), stderr
    written = {q.relative_to(base / "recon").as_posix() for q in (base / "recon").rglob("*.png")}
    assert os.fsdecode(b"caf\xe9.png") in written
    assert len(written) == len(corpus.loadable) + 1  # and comparison.png
