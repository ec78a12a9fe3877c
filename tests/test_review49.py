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
