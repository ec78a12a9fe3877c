#!/usr/bin/env python3
"""Set up and run vaekit from a fresh clone, with nothing installed but Python 3.10+.

    python3 dev.py quickstart   # venv + install, then the whole pipeline on built-in digits
    python3 dev.py test         # venv + dev install (+ Chromium for the browser test), then pytest
    python3 dev.py test --fast  # the same without the slow tests (training, export, torchrun,
                                # browser, web server): feedback in about a minute; both
                                # run on two pytest-xdist workers where there are 2+ cores

torch: the package asks for `torch>=2.4`; this script pins the release we test
(TORCH_SPEC below, override with VAEKIT_TORCH_SPEC). pip then takes a CPU wheel where one
is provided on local disk (find-links), and PyPI's Linux wheel, which is the CUDA build,
elsewhere. On a CPU-only machine that should not download CUDA, point pip at PyTorch's CPU
index first: PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu python3 dev.py ...
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("VAEKIT_VENV", ROOT / ".venv"))
TORCH_SPEC = os.environ.get("VAEKIT_TORCH_SPEC", "torch==2.13.0")
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / ("python.exe" if os.name == "nt" else "python")


def sh(*cmd, **kw) -> None:
    print("+", " ".join(map(str, cmd)), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, **kw)


def setup(extras: str) -> None:
    """Create .venv and install vaekit[extras]; a stamp skips pip when nothing changed."""
    if not PY.exists():
        venv.EnvBuilder(with_pip=True).create(VENV)
    stamp = VENV / f".vaekit-{extras}.stamp"
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + TORCH_SPEC.encode()).hexdigest()
    if stamp.exists() and stamp.read_text() == want:
        return
    pip = [PY, "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    # torch first, pinned, so resolving the extras never pulls another (multi-GB) build
    sh(*pip, TORCH_SPEC)
    sh(*pip, "-e", f"{ROOT}[{extras}]", TORCH_SPEC)
    stamp.write_text(want)


def ensure_chromium() -> None:
    """The browser test drives Debian's Chromium; install it where we can (root + apt)."""
    if Path("/usr/bin/chromium").exists():
        return
    if shutil.which("apt-get") and hasattr(os, "geteuid") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        sh("apt-get", "update", "-q", env=env, stdout=subprocess.DEVNULL)
        sh("apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium", env=env, stdout=subprocess.DEVNULL)
    else:
        sys.exit("the browser test needs Chromium at /usr/bin/chromium: install the 'chromium' package (e.g. sudo apt-get install chromium)")


def vaekit(*args) -> None:
    sh(BIN / "vaekit", *args)


def quickstart() -> None:
    setup("all")
    out = ROOT / "out" / "quickstart"
    data, run, onnx = out / "digits", out / "run", out / "digits.onnx"
    shutil.rmtree(out, ignore_errors=True)
    # one thread: on a small shared machine torch's thread pool stalls when the cores are busy
    env_threads = ["--threads", os.environ.get("VAEKIT_THREADS", "1")]
    vaekit("sample-data", "digits", data)
    vaekit(*env_threads, "train", data / "train", "--out", run, "--image-size", "32")
    vaekit(*env_threads, "encode", run, data / "test" / "normal", "-o", out / "normal.codes", "--precision", "q8")
    vaekit(*env_threads, "decode", run, out / "normal.codes", "-o", out / "decoded")
    vaekit(*env_threads, "anomaly-score", run, data / "test", "-o", out / "scores.csv", "--maps", out / "maps")
    vaekit(*env_threads, "evaluate", run, "--normal", data / "test" / "normal", "--anomalous", data / "test" / "anomalous")
    vaekit(*env_threads, "export", run, "-o", onnx)
    vaekit(*env_threads, "anomaly-score", onnx, data / "test" / "anomalous", "-o", out / "scores_onnx.csv")
    print(f"\nDone. Everything is in {out}. Open the app with:\n  {BIN / 'vaekit'} demo {run}")


def test(pytest_args: list[str]) -> int:
    setup("dev")
    if "--fast" in pytest_args:  # tests marked slow (pyproject.toml) are left out
        pytest_args = ["-m", "not slow", *(a for a in pytest_args if a != "--fast")]
    else:
        ensure_chromium()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    serial = {"--pdb", "--trace", "no:xdist", "-pno:xdist"}  # xdist refuses --pdb ("incompatible with distributing")
    if cores >= 2 and not any(a == "-n" or a.startswith("-n") or a in serial for a in pytest_args):
        # two workers, each module's tests on one (its trained model built once): the whole suite
        # in 9m56s on this 2-core box where one worker took 19m30s (2026-12-07)
        pytest_args = ["-n", "2", "--dist", "loadscope", *pytest_args]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    # Python's own bytecode cache, even where the shell turns it off: a second run collects the
    # (assertion-rewritten) tests in half the time; __pycache__/ is ignored by git
    env["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", "1")
    return subprocess.run([str(PY), "-m", "pytest", *pytest_args], cwd=ROOT, env=env).returncode


def main() -> None:
    cmd, rest = (sys.argv[1], sys.argv[2:]) if len(sys.argv) > 1 else ("", [])
    if cmd == "quickstart":
        quickstart()
    elif cmd == "test":
        sys.exit(test(rest))
    elif cmd == "setup":
        setup(rest[0] if rest else "all")
    else:
        sys.exit("usage: python3 dev.py quickstart | test [--fast] [pytest args] | setup [extras]")


if __name__ == "__main__":
    main()
