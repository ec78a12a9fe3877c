"""A review of the web app's sessions (round 7): each test failed before its fix.

A page that let go of a training run (its request cancelled) and pressed Train again revived the old
run: both shared one Stop flag, which the new run cleared.
"""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

DEADLINE = 120.0  # seconds a test waits for a worker thread before it fails


def _req(session_hash: str | None):
    return SimpleNamespace(session_hash=session_hash)


def _handler(app, api_name: str):
    return next(f.fn for f in app.fns.values() if f.api_name == api_name)


def _no_progress(*args, **kwargs):
    return None


class FakeTrain:
    """vaekit.training.job.train as the demo's worker thread sees it, without the training: each run
    reports one epoch, then waits for `go`, then asks should_stop() until it is set or the deadline."""

    def __init__(self):
        self.go = [threading.Event(), threading.Event()]
        self.ended: list = []  # per run, in order: whether it ended because it was asked to stop

    def __call__(self, folder, out_dir, model_cfg, train_cfg, channels, progress, should_stop):
        run = len(self.ended)
        self.ended.append(None)
        progress(1, train_cfg.epochs, phase="epoch", epoch=1, epochs=train_cfg.epochs, train_loss=1.0, val_loss=1.0)
        self.go[run].wait(DEADLINE)
        end = time.monotonic() + 2.0  # a real run asks after every batch: a few asks stand for an epoch
        while not should_stop() and time.monotonic() < end:
            time.sleep(0.01)
        self.ended[run] = should_stop()
        return SimpleNamespace(stopped=True), None


def _until(cond, what: str):
    end = time.monotonic() + DEADLINE
    while not cond():
        assert time.monotonic() < end, f"gave up waiting for {what}"
        time.sleep(0.02)


def test_a_cancelled_run_stays_stopped_when_its_page_trains_again(tmp_path, monkeypatch):
    from vaekit.training import job
    from vaekit_demo.app import build_app

    fake = FakeTrain()
    monkeypatch.setattr(job, "train", fake)
    (tmp_path / "images").mkdir()
    train = _handler(build_app(None, runs_dir=tmp_path / "runs", workdir=tmp_path / "work", data_root=tmp_path),
                     "train")
    page = _req("page")
    first = train("images", 16, 2, 3, request=page, progress=_no_progress)
    assert "epoch 1/3" in next(first)[0]
    first.close()  # what Gradio does to the request when it is cancelled: the page is free to train again
    second = train("images", 16, 2, 3, request=page, progress=_no_progress)
    assert "epoch 1/3" in next(second)[0]
    fake.go[0].set()  # the first run's worker reaches its next batch
    _until(lambda: fake.ended[0] is not None, "the first run's worker to end")
    assert fake.ended[0], "the cancelled run trained on beside the new one"  # its Stop flag was cleared
    fake.go[1].set()
    second.close()
    _until(lambda: fake.ended[1] is not None, "the second run's worker to end")
    assert fake.ended[1]
