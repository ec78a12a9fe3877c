"""Review fixes of stop 49."""

import io

from rich.console import Console
from rich.progress import Progress

from vaekit_cli.train import _Reporter


def _printed(terminal: bool) -> str:
    out = io.StringIO()
    console = Console(file=out, force_terminal=terminal, width=100)
    with Progress(console=console, transient=True) as bars:
        report = _Reporter(bars)
        for phase in ("decode", "crossfit", "reader"):
            for done in (0, 25, 50):
                report(done, 50, phase=phase, loss=0.1)
    return out.getvalue()


def test_the_phases_after_the_epochs_are_named_once_in_a_log():
    # into a file or a pipe rich draws no bar: `vaekit train > log` was silent for the minutes
    # of the fold models and the defect reader
    text = _printed(terminal=False)
    assert text.count("fold models for the threshold ...") == 1 and text.count("defect reader ...") == 1
    assert "decoding images" not in text  # it comes before the plan, which stays the first line


def test_a_terminal_gets_the_bars_alone():
    assert "defect reader ..." not in _printed(terminal=True)


def test_a_lossless_archive_says_what_coded_its_pixels(tmp_path):
    # a default (Gaussian) model's archive is ~10% larger than a logistic model's: the user is told
    import json

    from cli_support import invoke
    from export_support import random_run
    from test_codec import _digits

    _digits(tmp_path / "src", 4)
    for likelihood, says, key in (("gaussian", "--likelihood logistic codes 9-10% smaller", "fitted"),
                                  ("logistic", "the model's own (discretised logistic)", "model")):
        run = random_run(tmp_path / likelihood, image_size=16, channels=1, latent_dim=4, base_channels=4,
                         likelihood=likelihood)
        r = invoke("encode", run, tmp_path / "src", "-o", tmp_path / f"{likelihood}.vkc", "--lossless")
        assert r.exit_code == 0, r.output
        assert says in " ".join(r.output.replace("│", " ").split()), r.output
        r = invoke("encode", run, tmp_path / "src", "-o", tmp_path / f"{likelihood}-2.vkc", "--lossless", "--json")
        assert r.exit_code == 0 and json.loads(r.stdout)["pixel_model"] == key


def test_the_open_box_names_a_bad_path_without_saying_path_twice(tmp_path):
    # helper-76: "that model path path cannot be read" / "that is not a model path path"
    import gradio as gr

    from test_web7_review import _handler, _req
    from vaekit_demo.app import build_app

    app = build_app(None, runs_dir=tmp_path / "runs", workdir=tmp_path / "work", data_root=tmp_path)
    open_model = _handler(app, "open_model")
    for typed in ("~nosuchuser/x", "x" * 5000):
        try:
            said = str(open_model(typed, request=_req("page")))
        except gr.Error as e:
            said = str(e)
        assert "model path" in said and "path path" not in said, said
