"""Terminal output shared by the commands: consoles, progress bars, tables."""

from __future__ import annotations

import os
import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console()
err_console = Console(stderr=True)


def apply_threads() -> None:
    """Honour --threads / VAEKIT_THREADS for torch (call after importing torch lazily)."""
    n = int(os.environ.get("VAEKIT_THREADS", "0") or 0)
    # Only where torch is already loaded (training): the engines read VAEKIT_THREADS when they
    # open a model, and an onnxruntime-only command must never import torch.
    torch = sys.modules.get("torch")
    if n > 0 and torch is not None:
        torch.set_num_threads(n)


def progress_bar(transient: bool = False) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=err_console,
        transient=transient,
    )
