"""A review of the web app's sessions (round 7): each test failed before its fix.

A page that let go of a training run (its request cancelled) and pressed Train again revived the old
run: both shared one Stop flag, which the new run cleared. A request's files were deleted before Gradio
copied them (it copies only after the handler returns) when another session's request trimmed the work
folder, or the session ended meanwhile: the download link led nowhere. A run stopped before its first
epoch ended said it kept a checkpoint to resume. With the runs folder outside the data folder, the page
named a run by a path that Open refused, and a stopped run's resume command by paths "relative to the
data folder" that were not. An ended session's last request, when done, deleted the folder that a
new session of the same hash was writing into. A script's thousands of bare REST calls (a session
each) made the app forget an open page's session: the page showed its model and used another.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from test_webcli6 import digits, run  # noqa: F401 - the tiny run inside the data root, as fixtures

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

    def __call__(self, folder, out_dir, model_cfg, train_cfg, channels, progress, should_stop, confine_to):
        assert confine_to is not None  # the app's scans stay in --data-root (test_hostile15)
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


# --- the work folder: one session's request against another's trimming, and its page closing ---------


class Paused:
    """Wraps a handlers function: its first call, once it has written its files, waits for `go`."""

    def __init__(self, fn):
        self.fn, self.written, self.go = fn, threading.Event(), threading.Event()

    def __call__(self, *args, **kwargs):
        out = self.fn(*args, **kwargs)
        if not self.written.is_set():
            self.written.set()
            self.go.wait(DEADLINE)
        return out


def _in_thread(fn, *args, **kwargs) -> dict:
    got: dict = {}

    def work():
        try:
            got["value"] = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - the test reads it
            got["error"] = e

    t = threading.Thread(target=work, daemon=True)
    t.start()
    got["thread"] = t
    return got


@pytest.mark.slow  # trains the tiny run (a fixture)
def test_trimming_for_another_session_leaves_a_running_requests_files(run, digits, tmp_path, monkeypatch):  # noqa: F811
    from vaekit_demo import handlers, sessions
    from vaekit_demo.app import build_app

    monkeypatch.setattr(sessions, "MAX_FOLDERS", 1)  # as 64 script calls in the meantime
    paused = Paused(handlers.compress)
    monkeypatch.setattr(handlers, "compress", paused)
    app = build_app(run, runs_dir=digits / "runs", data_root=digits, workdir=tmp_path / "work")
    images = [str(p) for p in sorted((digits / "test" / "normal").glob("*.png"))[:2]]
    slow = _in_thread(_handler(app, "compress"), images, "q8", request=_req("slow"))
    assert paused.written.wait(DEADLINE), slow
    _handler(app, "anomaly")(images, 1.0, request=_req("other"))  # trims the work folder for its own files
    paused.go.set()
    slow["thread"].join(DEADLINE)
    assert "error" not in slow, slow.get("error")
    code_file = slow["value"][2]  # what the handler hands Gradio to serve, after it returned
    assert Path(code_file).is_file()  # was deleted by the other request: the download link led nowhere


@pytest.mark.slow  # trains the tiny run (a fixture)
def test_a_session_ended_mid_request_still_serves_its_files_then_leaves_none(run, digits, tmp_path, monkeypatch):  # noqa: F811
    from vaekit_demo import handlers
    from vaekit_demo.app import build_app

    paused = Paused(handlers.encode_vkc)
    monkeypatch.setattr(handlers, "encode_vkc", paused)
    app = build_app(run, runs_dir=digits / "runs", data_root=digits, workdir=tmp_path / "work")
    images = [str(p) for p in sorted((digits / "test" / "normal").glob("*.png"))[:2]]
    page = _req("page")
    pressed = _in_thread(_handler(app, "encode_vkc"), images, 6, request=page)
    assert paused.written.wait(DEADLINE), pressed
    end = next(f.fn for f in app.fns.values() if any(t[1] == "unload" for t in f.targets))
    end(page)  # its heartbeat dropped (a page closed, a script's connection lost) while its request runs
    paused.go.set()
    pressed["thread"].join(DEADLINE)
    assert "error" not in pressed, pressed.get("error")
    assert all(Path(f).is_file() for f in pressed["value"][2])  # were deleted under it: links to nothing
    left = sorted(p.relative_to(tmp_path / "work").as_posix() for p in (tmp_path / "work").rglob("*.vkc"))
    assert left == [], left  # and none stays in the work folder once it is done


def test_a_run_stopped_before_its_first_epoch_offers_no_resume(tmp_path, monkeypatch):
    from vaekit.training import job
    from vaekit_demo.app import build_app

    def stopped_while_decoding(folder, out_dir, model_cfg, train_cfg, channels, progress, should_stop, confine_to):
        return SimpleNamespace(stopped=True), None  # as the library: Stop pressed while decoding images

    monkeypatch.setattr(job, "train", stopped_while_decoding)
    (tmp_path / "images").mkdir()
    train = _handler(build_app(None, runs_dir=tmp_path / "runs", workdir=tmp_path / "work", data_root=tmp_path),
                     "train")
    said = [out[0] for out in train("images", 16, 2, 3, request=_req("page"), progress=_no_progress)]
    # was "Stopped after 0 epoch(s). ... keeps its last checkpoint: continue it with ... --resume", which
    # `vaekit train --resume` answers with "nothing to resume"
    assert len(said) == 1 and "--resume" not in said[0] and "no checkpoint" in said[0], said


# --- a runs folder outside the data folder (`vaekit demo --runs-dir ELSEWHERE`) ---------------------------

@pytest.mark.slow  # trains the tiny run (a fixture)
def test_a_run_in_a_runs_folder_outside_the_data_folder_opens_by_the_name_the_page_shows(run, tmp_path):  # noqa: F811
    from vaekit_demo.app import build_app

    (tmp_path / "data").mkdir()
    app = build_app(run, runs_dir=run.parent, data_root=tmp_path / "data", workdir=tmp_path / "work")
    shown = _handler(app, "model")(request=_req("page"))[0]
    assert "`tiny`" in shown, shown  # the run, relative to the runs folder (no server paths)
    opened = _handler(app, "open_model")("tiny", request=_req("page"))[0]  # was "no such ... data/tiny"
    assert "`tiny`" in opened, opened


def test_a_stopped_runs_resume_command_says_what_its_paths_are_relative_to(tmp_path, monkeypatch):
    from vaekit.training import job
    from vaekit_demo.app import build_app

    def one_epoch_then_stopped(folder, out_dir, model_cfg, train_cfg, channels, progress, should_stop, confine_to):
        progress(1, train_cfg.epochs, phase="epoch", epoch=1, epochs=train_cfg.epochs, train_loss=1.0, val_loss=1.0)
        return SimpleNamespace(stopped=True), None

    monkeypatch.setattr(job, "train", one_epoch_then_stopped)
    (tmp_path / "data" / "images").mkdir(parents=True)
    for runs, relative in ((tmp_path / "data" / "runs", "paths relative to the data folder"),
                           (tmp_path / "elsewhere", "the run's to the runs folder")):
        app = build_app(None, runs_dir=runs, workdir=tmp_path / "work", data_root=tmp_path / "data")
        said = [o[0] for o in _handler(app, "train")("images", 16, 2, 3, request=_req("p"), progress=_no_progress)]
        assert said[-1].startswith("**Stopped** after 1 epoch(s)") and relative in said[-1], said[-1]


def test_a_session_ended_mid_request_and_begun_again_keeps_its_new_files(tmp_path):
    from vaekit_demo.sessions import Sessions

    s = Sessions(SimpleNamespace(workdir=tmp_path / "work", model="m"))
    old = s.get(_req("a"))
    with s.using(old):
        (old.outputs("compress") / "old.codes").write_bytes(b"1")
        s.end(_req("a"))  # its heartbeat dropped ...
        new = s.get(_req("a"))  # ... and came back: a request of the same hash
        kept = new.outputs("compress") / "new.codes"
        kept.write_bytes(b"2")
    assert kept.exists()  # the old request's end deleted the folder both shared
    assert not old.folder.exists()


def test_a_scripts_many_rest_calls_do_not_forget_an_open_pages_model(tmp_path, monkeypatch):
    from vaekit_demo import context, sessions
    from vaekit_demo.app import _State

    monkeypatch.setattr(sessions, "MAX_SESSIONS", 3)  # 10,000 in the app
    figures = SimpleNamespace(threshold_range=lambda m: {"value": 0.0}, model_histogram=lambda *a: None)
    monkeypatch.setattr(context, "figures", figures)
    monkeypatch.setattr(context.handlers, "describe", lambda model, roots: f"model {model}")
    ctx = context.Context(_State("started-with", tmp_path / "runs", tmp_path / "work", tmp_path, True))
    ctx.model_outputs(_req("page"))  # the page loads ...
    ctx.sessions.set_model(ctx.session(_req("page")), "opened")  # ... and opens another model
    ctx.sessions.set_model(ctx.session(_req("script")), "scored-with")  # the script opens its own
    for i in range(5):  # a script's bare REST calls (/gradio_api/call/anomaly), a session each
        ctx.session(_req(f"rest-{i}"))
    assert ctx.model_outputs(_req("page"))[0] == "model opened"  # was "scored-with": the page was forgotten
    assert len(ctx.sessions._known) == 3
