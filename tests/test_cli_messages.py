"""How the installed `vaekit` reports a user's mistakes (issue 21, item 13): VAEKIT_DEBUG=0 means
off, paths are printed as paths (never `[PosixPath(...)]`), and a missing gradio is the
missing-extra message with exit 2, not a traceback asking for a bug report."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from export_support import random_run
from hostile import flat
from vaekit_cli.main import plain_paths

EXE = shutil.which("vaekit", path=str(Path(sys.executable).parent)) or "vaekit"


def vaekit(*args, **env) -> subprocess.CompletedProcess:
    return subprocess.run([EXE, "--threads", "1", *map(str, args)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "300", **env})


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return random_run(tmp_path_factory.mktemp("messages") / "run", image_size=16, channels=1, latent_dim=4,
                      base_channels=4)


def invoke(*args, **env):
    """The CLI in this process (the installed executable costs a fresh torch import: seconds)."""
    from typer.testing import CliRunner

    from vaekit_cli.main import app

    return CliRunner().invoke(app, ["--threads", "1", *map(str, args)], env={"COLUMNS": "300", **env})


@pytest.mark.parametrize("off", ["0", "", "false", "no", "off"])
def test_vaekit_debug_0_keeps_tracebacks_off(run, tmp_path, off):
    (tmp_path / "x.png").write_bytes(b"not an image")
    r = invoke("anomaly-score", run, tmp_path / "x.png", VAEKIT_DEBUG=off)
    assert r.exit_code == 2 and "Traceback" not in r.output and r.output.strip().startswith("error:"), r.output
    assert not isinstance(r.exception, ValueError)  # handled: not re-raised for a traceback


@pytest.mark.slow  # the installed vaekit in a fresh process
def test_the_installed_vaekit_keeps_tracebacks_off_with_vaekit_debug_0(run, tmp_path):
    (tmp_path / "x.png").write_bytes(b"not an image")
    r = vaekit("anomaly-score", run, tmp_path / "x.png", VAEKIT_DEBUG="0")
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.strip().startswith("error:"), r.stderr


@pytest.mark.slow  # the installed vaekit in a fresh process
def test_vaekit_debug_1_shows_the_traceback(run, tmp_path):
    (tmp_path / "x.png").write_bytes(b"not an image")
    r = vaekit("anomaly-score", run, tmp_path / "x.png", VAEKIT_DEBUG="1")
    assert r.returncode == 2 and "Traceback (most recent call last)" in r.stderr


def test_no_usable_image_names_the_file_not_its_repr(run, tmp_path):
    bomb = tmp_path / "hostile" / "bomb.png"
    bomb.parent.mkdir()
    bomb.write_bytes(b"not an image")
    r = invoke("anomaly-score", run, bomb)
    assert r.exit_code == 2 and "Path(" not in r.output and "[" not in r.output.split("error:")[1], r.output
    assert flat(f"no usable image in {bomb}") in flat(r.output)


def test_plain_paths_turns_reprs_of_paths_into_paths():
    assert plain_paths("in [PosixPath('a b.png'), PosixPath('c')]: none") == "in a b.png, c: none"
    assert plain_paths("see WindowsPath('C:/x') or Path(\"y\")") == "see C:/x or y"
    assert plain_paths("pip install 'vaekit[demo]' [1, 2]") == "pip install 'vaekit[demo]' [1, 2]"  # untouched


@pytest.mark.slow  # starts the installed vaekit in a fresh process
def test_a_missing_gradio_is_the_missing_extra_message_and_exit_2(tmp_path):
    blocker = tmp_path / "sitecustomize.py"  # runs at start-up: gradio cannot be imported in that process
    blocker.write_text("import sys\nsys.modules['gradio'] = None\n")
    r = subprocess.run([EXE, "demo", "--port", "7999"], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert r.returncode == 2, r.stderr
    assert "pip install 'vaekit[demo]'" in r.stderr and "Traceback" not in r.stderr and "bug" not in r.stderr


@pytest.mark.slow  # starts the installed vaekit in a fresh process
def test_a_torch_that_is_installed_but_fails_to_import_is_one_line_and_exit_2(tmp_path):
    """A broken install (a shared library missing) raises a plain ImportError inside torch: only a
    ModuleNotFoundError was told apart, so this printed a traceback and "a bug in vaekit"."""
    (tmp_path / "torch.py").write_text("raise ImportError('libtorch_cpu.so: cannot open shared object file')\n")
    (tmp_path / "data").mkdir()
    r = subprocess.run([EXE, "train", "data", "--out", "run"], capture_output=True, text=True, timeout=120,
                       cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert r.returncode == 2, r.stderr
    assert "torch is installed but cannot be imported (libtorch_cpu.so" in r.stderr, r.stderr
    assert "pip install --force-reinstall 'vaekit[train]'" in r.stderr
    assert "Traceback" not in r.stderr and "bug" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("command, said", [
    (["export"], 'They run with `pip install "vaekit[runtime]"`, no torch.'),
    (["reconstruct"], "(SSIM needs vaekit[metrics])."),
    (["anomaly-score"], "a surface model reads the whole image in tiles"),
])
def test_help_shows_brackets_and_reflows_each_paragraph(command, said):
    """rich took "vaekit[runtime]" as markup and printed `pip install "vaekit"`, a command that
    installs no onnxruntime; and each docstring line break stayed, leaving one-word lines."""
    from typer.testing import CliRunner

    from vaekit_cli.main import app

    r = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert said in text, text
    lines = [ln.strip() for ln in r.output.splitlines() if ln.strip() and not ln.strip().startswith(("│", "╭", "╰"))]
    assert all(len(ln.split()) > 1 for ln in lines[1:]), lines  # no stray one-word line under the usage


def test_no_usable_image_names_three_and_counts_the_rest():
    """'(62 skipped: a: ...; b: ...; c: ...)' read as if three were all; the rest are counted."""
    from vaekit.images import none_usable

    many = [(f"d/{i}.png", "not an image") for i in range(5)]
    assert str(none_usable("in d", many)) == ("no usable image in d (5 skipped: 0.png: not an image; 1.png: not an image; "
                                               "2.png: not an image; and 2 more)")
    assert str(none_usable("in d", many[:2])).endswith("1.png: not an image)")


def test_an_import_error_raised_in_code_torch_calls_is_not_called_a_broken_install():
    """Any ImportError that passed through a torch frame was blamed on torch ("reinstall it"),
    hiding a bug of vaekit's raised in a forward that torch calls."""
    import torch

    from vaekit.errors import missing_extra

    class Net(torch.nn.Module):
        def forward(self, x):
            from vaekit.codec.prior import no_such_name  # noqa: F401

    try:
        Net()(torch.zeros(1))
    except ImportError as e:
        assert missing_extra(e) is None
    else:
        raise AssertionError("the forward imported a name that does not exist")


@pytest.mark.slow  # starts the installed vaekit in a fresh process
def test_a_broken_onnxruntime_is_not_blamed_on_the_model_file(tmp_path):
    """An onnxruntime whose shared library is missing raised ImportError, which the model loader
    reported as "m.onnx is not a readable ONNX model": a user could throw a good model away."""
    pkg = tmp_path / "onnxruntime"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("raise ImportError('libonnxruntime_providers_shared.so: cannot open shared object file')\n")
    (tmp_path / "m.onnx").write_bytes(b"\x08\x07")
    (tmp_path / "imgs").mkdir()
    Image.new("L", (16, 16)).save(tmp_path / "imgs" / "a.png")
    r = subprocess.run([EXE, "anomaly-score", "m.onnx", "imgs"], capture_output=True, text=True, timeout=120,
                       cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert r.returncode == 2, r.stderr
    assert "onnxruntime is installed but cannot be imported" in r.stderr and "not a readable ONNX model" not in r.stderr
