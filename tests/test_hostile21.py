"""Hostile inputs, pass 21: the environment and the training folder changing under a run.

- a VAEKIT_CACHE_DIR or XDG_CACHE_HOME naming the home folder of a user this machine does not know
  (`~nosuchuser/cache`) was a RuntimeError traceback and exit 3, not one line naming the setting;

Real components: a 16 px model trained through the CLI on generated images in tmp_path.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cli_support import invoke, one_line_exit_2

TINY = ["--epochs", "1", "--image-size", "16", "--workers", "0", "--layout", "vector", "--folds", "0",
        "--base-channels", "4", "--latent-dim", "4", "--batch-size", "8", "--augment", "off"]


def write_images(folder, n=24):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray((rng.random((16, 16)) * 255).astype(np.uint8)).save(folder / f"{i:02d}.png")
    return folder


@pytest.mark.parametrize("variable", ["VAEKIT_CACHE_DIR", "XDG_CACHE_HOME"])
def test_a_cache_folder_under_an_unknown_users_home_is_one_line_naming_the_setting(tmp_path, monkeypatch, variable):
    data = write_images(tmp_path / "data")
    monkeypatch.delenv("VAEKIT_CACHE_DIR", raising=False)
    monkeypatch.setenv(variable, "~no-such-user-h21/cache")
    r = invoke("train", data, "--out", tmp_path / "run", *TINY)
    assert variable in one_line_exit_2(r)
    assert not (tmp_path / "run").exists()

