"""Shared by test_surface.py and test_tiles_hostile.py: a tiny surface model (a latent grid with its
defect reader) trained in seconds on a folder of textures."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from vaekit.config import ModelConfig, TrainConfig
from vaekit.train import train


def train_surface(data: Path, out: Path, epochs: int = 3, reader_steps: int = 40, progress=None, resume_epochs=None,
                  **train_kw) -> Path:
    """`vaekit.train` of a 4-channel grid model on 32 px crops, its readers (three, as by
    default) half as wide and shortened to `reader_steps` steps of batch 8; returns `out`.
    `resume_epochs`: resume the run at `out` to that many epochs instead."""
    import vaekit.reader.net as net

    mp = pytest.MonkeyPatch()
    mp.setattr(net, "ReaderConfig", functools.partial(net.ReaderConfig, steps=reader_steps, batch=8, crop=32, width=8))
    try:
        train(data, out, ModelConfig(base_channels=4), TrainConfig(epochs=epochs, crop=32, device="cpu", **train_kw), progress=progress,
              resume=resume_epochs is not None, resume_epochs=resume_epochs)
    finally:
        mp.undo()
    return out


def train_read_larger(data: Path, out: Path, limit: int = 48, **kw) -> Path:
    """`train_surface` with the network's largest size (vaekit.config.MAX_IMAGE_SIZE) lowered to
    `limit` px, so that larger images take the read-size path in seconds: files read whole at
    their own size, in tiles of the model's."""
    import vaekit.config

    mp = pytest.MonkeyPatch()
    mp.setattr(vaekit.config, "MAX_IMAGE_SIZE", limit)
    try:
        return train_surface(data, out, **kw)
    finally:
        mp.undo()


def killed_at_batch(n: int, model, job) -> None:
    """Run `job` with Ctrl-C arriving as `model` scores its n-th batch."""
    real, calls = type(model).score, []

    def dying(self, x, **kw):
        calls.append(len(x))
        if len(calls) == n:
            raise KeyboardInterrupt
        return real(self, x, **kw)

    mp = pytest.MonkeyPatch()
    mp.setattr(type(model), "score", dying)
    try:
        with pytest.raises(KeyboardInterrupt):
            job()
    finally:
        mp.undo()
