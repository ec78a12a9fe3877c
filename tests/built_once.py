"""Sample data and tiny runs that several test modules build the same way, built once per test
process (an xdist worker) and handed to each module as its own copy.

A module gets a fresh copy of the files a build of its own would have written (the builds are
seeded: the same images, the same weights), so what one module changes in its copy no other module
sees. A copied run's config.json is made to name the copy's training folder as data.root, as the
module's own training would have (`vaekit threshold --normal` refuses that folder by its path).
What still differs: its run_id and creation time."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

_BUILT: dict[str, Path] = {}
DIGITS_SIZE = 16  # the web app's tiny run (tests/test_webcli6.py, tests/test_demo.py)


def template(key: str, build: Callable[[Path], object], tmp_path_factory) -> Path:
    """The folder build(folder) filled, once per process for each key: read it, never change it."""
    if key not in _BUILT:
        root = tmp_path_factory.mktemp(f"built-once-{key}")
        build(root)
        _BUILT[key] = root
    return _BUILT[key]


def copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest, symlinks=True, dirs_exist_ok=True)
    return dest


def copy_run(src: Path, dest: Path, trained_on: Path) -> Path:
    """The run src copied to dest, its data.root set to trained_on: the folder it would name had
    it been trained on trained_on (a copy of the images it was trained on)."""
    copy(src, dest)
    return relocate(dest, trained_on)


def relocate(run: Path, trained_on: Path) -> Path:
    """run's config.json made to name trained_on as data.root."""
    config = run / "config.json"
    text = config.read_text()
    old = json.loads(text)["data"]["root"]
    was, now = json.dumps(old), json.dumps(str(trained_on))
    assert text.count(was) == 1, f"{config}: data.root {old} not found once"
    config.write_text(text.replace(was, now))
    assert json.loads(config.read_text())["data"]["root"] == str(trained_on)
    return run


def digits(tmp_path_factory, dest: Path) -> Path:
    """dest: what write_digits(dest, size=16) writes."""
    from vaekit.sample_data import write_digits

    return copy(template("digits", lambda root: write_digits(root, size=DIGITS_SIZE), tmp_path_factory), dest)


def digits_run(tmp_path_factory, digits_copy: Path, dest: Path) -> Path:
    """dest: the run that ModelConfig(image_size=16, latent_dim=4, base_channels=8),
    TrainConfig(epochs=2, batch_size=32) trains on digits_copy/train (a copy from `digits`)."""
    def build(root: Path) -> None:
        from vaekit.config import ModelConfig, TrainConfig
        from vaekit.train import train

        data = digits(tmp_path_factory, root / "digits")
        train(data / "train", root / "run", ModelConfig(image_size=DIGITS_SIZE, latent_dim=4, base_channels=8),
              TrainConfig(epochs=2, batch_size=32), cache_dir=root / "cache")

    return copy_run(template("digits-run", build, tmp_path_factory) / "run", dest, digits_copy / "train")


def washers(tmp_path_factory, dest: Path) -> Path:
    """dest: 16 px washers with masks (train/, test/) and a tiny run on them (run/), as
    tests/test_cli_anomaly.py's washer_run writes them."""
    def build(root: Path) -> None:
        from vaekit.config import ModelConfig, TrainConfig
        from vaekit.sample_data import write_shapes
        from vaekit.train import train

        write_shapes(root, n_train=20, n_test_normal=4, n_test_anomalous=4, size=16, seed=1)
        train(root / "train", root / "run", ModelConfig(image_size=16, latent_dim=4, base_channels=4),
              TrainConfig(epochs=2, batch_size=8, device="cpu"))

    copy(template("washers", build, tmp_path_factory), dest)
    relocate(dest / "run", dest / "train")
    return dest
