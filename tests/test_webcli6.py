"""Hostile use of the web app's handlers and the CLI's option edges (round 6): each test failed
before its fix."""

from __future__ import annotations

import socket

import pytest
from typer.testing import CliRunner

from vaekit.errors import BadInput


def _cli(*args: str):
    from vaekit_cli.main import app

    return CliRunner().invoke(app, list(args))


# --- vaekit demo: its options are checked before anything is served -------------------------------

@pytest.mark.parametrize("args, said", [
    (["--port", "0"], "--port"), (["--port", "70000"], "--port"), (["--port", "-1"], "--port"),
    (["--max-file-size", "abc"], "such as 25mb"), (["--max-file-size", "25"], "such as 25mb"),
    (["--max-file-size", "0mb"], "such as 25mb"), (["--host", ""], "--host"),
])
def test_demo_refuses_bad_options_with_exit_2_and_serves_nothing(args, said, tmp_path, monkeypatch):
    import vaekit_demo.app as demo_app

    monkeypatch.chdir(tmp_path)  # no runs/latest: the app would start without a model
    served = []
    monkeypatch.setattr(demo_app.gr.Blocks, "launch", lambda self, **kw: served.append(kw))
    r = _cli("demo", *args)
    assert r.exit_code == 2 and said in r.output and "Traceback" not in r.output, r.output
    assert served == []  # Gradio's parse of "abc" raised ValueError: exit 3, "a bug in vaekit"


def test_demo_on_a_port_in_use_or_an_unknown_host_is_one_line_and_exit_2(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = _cli("demo", "--port", str(port))  # was Gradio's "Cannot find empty port", exit 3 with a traceback
        assert r.exit_code == 2 and f"cannot serve on 127.0.0.1:{port}" in r.output and "in use" in r.output, r.output
    r = _cli("demo", "--host", "no-such-host.invalid")  # was the same "Cannot find empty port"
    assert r.exit_code == 2 and "cannot serve on host 'no-such-host.invalid'" in r.output, r.output


def test_launch_checks_the_address_before_gradio_does():
    import gradio as gr

    from vaekit_demo.app import launch

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(BadInput, match="in use"):
            launch(gr.Blocks(), port=busy.getsockname()[1], prevent_thread_lock=True, quiet=True)
    with pytest.raises(BadInput, match="invalid port 0"):
        launch(gr.Blocks(), port=0, prevent_thread_lock=True, quiet=True)


# --- vaekit train --seed: bounded where torch can take it ------------------------------------------

def test_train_refuses_a_seed_torch_cannot_take_before_creating_the_run(tmp_path):
    from vaekit.config import SEED_MAX, TrainConfig

    assert TrainConfig(seed=SEED_MAX).seed == SEED_MAX
    with pytest.raises(BadInput, match="seed must be an integer >= 0 and at most 2\\*\\*63 - 1"):
        TrainConfig(seed=2**64)  # torch.manual_seed: "Overflow when unpacking long long", exit 3
    from vaekit.sample_data import write_digits

    write_digits(tmp_path / "digits", size=16)
    r = _cli("--threads", "1", "train", str(tmp_path / "digits" / "train"), "--out", str(tmp_path / "run"),
             "--image-size", "16", "--epochs", "1", "--seed", str(10**20))
    assert r.exit_code == 2 and "seed must be an integer >= 0 and at most 2**63 - 1" in r.output, r.output
    assert not (tmp_path / "run").exists()  # was left holding .vaekit-run and .vaekit.lock
