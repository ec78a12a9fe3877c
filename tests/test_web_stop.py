"""The Train tab's Stop after a run has ended leaves the run's last message (Done or Stopped) in
place; it replaced it with "nothing is training", so a late press hid how the run ended."""

from __future__ import annotations

from test_web7_review import FakeTrain, _handler, _no_progress, _req, _until


def test_stop_after_a_run_ended_keeps_its_message_and_says_so_only_before_any_run(tmp_path, monkeypatch):
    import gradio as gr

    from vaekit.training import job
    from vaekit_demo.app import build_app

    fake = FakeTrain()
    monkeypatch.setattr(job, "train", fake)
    (tmp_path / "images").mkdir()
    app = build_app(None, runs_dir=tmp_path / "runs", workdir=tmp_path / "work", data_root=tmp_path)
    train, stop = _handler(app, "train"), _handler(app, "stop")
    page = _req("page")
    assert stop(request=page) == "Stopping: nothing is training on this page."  # no run yet: the page says so
    events = train("images", 16, 2, 3, request=page, progress=_no_progress)
    assert "epoch 1/3" in next(events)[0]
    assert stop(request=page).startswith("Stopping after")
    fake.go[0].set()
    said = [e[0] for e in events]  # to the end of the run
    _until(lambda: fake.ended[0] is not None, "the run's worker to end")
    assert said and said[-1].startswith("**Stopped**"), said
    assert stop(request=page) == gr.skip()  # the Stopped message stays on the page
    assert stop(request=_req("another page")) == "Stopping: nothing is training on this page."
