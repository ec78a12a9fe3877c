"""Terminal output shared by the commands: consoles, progress bars, tables."""

from __future__ import annotations

import functools
import os
import re
import sys
from contextlib import contextmanager
from enum import Enum
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

EXIT_TERMINATED = 143  # 128 + SIGTERM, what a shell reports for a process SIGTERM ended
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: the output's reader left (`vaekit ... | head`)


def _on_broken_pipe(self) -> None:
    """The reader of the output left: end quietly with 141, as a shell reports a process that
    SIGPIPE ended (rich's own exit 1 is vaekit's "anomalies found"). Set on rich's Console class,
    rich's documented hook, so that Typer's help console (not ours) ends the same way."""
    self.quiet = True
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    raise SystemExit(EXIT_BROKEN_PIPE)


Console.on_broken_pipe = _on_broken_pipe
console = Console()
err_console = Console(stderr=True)


class Terminated(KeyboardInterrupt):
    """SIGTERM (what Slurm, Kubernetes, Docker and `kill` send), taken like Ctrl-C: every job's
    clean-up for an interrupt runs (a run keeps its checkpoint, a streaming job its finished
    batches), then vaekit exits with 143."""


def tidy_outputs(*names: str):
    """A command's decorator: the folders its path options `names` would create that do not exist
    yet are removed again, while still empty, when the command fails (a refused job left
    `-o new/sub/x.csv`'s new/sub/ behind). A folder that holds anything is kept, so a journal
    kept for --resume keeps its own."""
    def wrap(command):
        @functools.wraps(command)
        def run(*args, **kwargs):
            made = [m for n in names if kwargs.get(n) is not None for m in _missing_folders(Path(kwargs[n]))]
            try:
                return command(*args, **kwargs)
            except BaseException as exc:
                if not (isinstance(exc, typer.Exit) and exc.exit_code == 0):
                    for folder in sorted(set(made), key=lambda p: len(p.parts), reverse=True):
                        try:
                            folder.rmdir()
                        except OSError:
                            pass
                raise
        return run
    return wrap


def _missing_folders(path: Path) -> list[Path]:
    """The folders above `path` (and `path` itself, for a folder output) that do not exist now."""
    out = []
    for p in [path.absolute(), *path.absolute().parents]:
        if os.path.lexists(p):
            break
        out.append(p)
    return out


terminated = False  # a SIGTERM arrived (for code that catches the interrupt itself, as Gradio does)


def on_sigterm(signum, frame) -> None:
    """The SIGTERM handler every command runs under (set by the root callback)."""
    global terminated
    terminated = True
    raise Terminated()

# C0 and C1 controls (ESC starts terminal commands: ESC]52 writes the clipboard, ESC[2J clears
# the screen), the line and paragraph separators (U+2028, U+2029: a line break in most terminals),
# the bidirectional overrides that make a name display as another, and the bytes of
# a name that is not UTF-8 (Python holds them as surrogates; printed, each became "?", so two
# names differing only there looked the same): shown as \xNN, as the CSV writes them
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u2028-\u202e\u2066-\u2069\udc80-\udcff]")


def _escaped(c: str) -> str:
    n = ord(c)
    return f"\\x{n - 0xDC00:02x}" if n >= 0xDC80 else f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}"


def safe_text(text: str) -> str:
    """`text` with every control character shown as an escape (\\x1b, \\n, \\u202e): a file name
    can hold any of them, and printed raw they drive the terminal."""
    return _CONTROL.sub(lambda m: _escaped(m.group()), text)


def dumps_json(obj) -> str:
    """JSON for stdout: valid JSON (no bare NaN; see vaekit.fileio.finite_json), control
    characters escaped as JSON always escapes them."""
    from vaekit.fileio import dumps_json as dumps

    return dumps(obj)


def shown(value) -> str:
    """Any name or message for rich output: control characters escaped, then rich markup."""
    return escape(safe_text(str(value)))


def note_repeated(repeated, did: str) -> None:
    """One note for the files named more than once (a file twice, a file and its folder): each
    was `did` once, at its first place; the later mentions are listed."""
    if repeated:
        names = ", ".join(shown(p) for p in repeated[:5]) + (f" and {len(repeated) - 5} more" if len(repeated) > 5 else "")
        err_console.print(f"[yellow]note[/yellow]: {len(repeated)} file(s) named again after their first "
                          f"mention were {did} once: {names}", highlight=False, soft_wrap=True)


def note_hidden(hidden) -> None:
    """A note naming the dot-named folders and image files the scan passed over (a folder archived
    and then deleted lost them with nothing said)."""
    if hidden:
        names = ", ".join(shown(p) for p in hidden[:5]) + (f" and {len(hidden) - 5} more" if len(hidden) > 5 else "")
        err_console.print(f"[yellow]note[/yellow]: {len(hidden)} hidden folder(s) or image file(s) (names beginning "
                          f"with '.') were not read: {names}", highlight=False, soft_wrap=True)


def promise_rows(table, section: dict) -> None:
    """The rows below a threshold in a table: the false-positive rate it promises, and its note
    (few calibration images, a tail beyond the largest) where there is one."""
    from vaekit.anomaly import promised_rate, section_note

    rate = promised_rate(section)
    if rate is not None:
        table.add_row("expected false positives", rate)
    note = section_note(section)
    if note:
        table.add_row("", f"[yellow]{shown(note)}[/yellow]")


THREADS = 0  # --threads / VAEKIT_THREADS, parsed once by the CLI's callback (cli/main.py); 0: defaults


def set_threads(n: int) -> None:
    global THREADS
    THREADS = n


def sleeping_waits() -> None:
    """Let torch's OpenMP threads sleep while they wait (OMP_WAIT_POLICY=PASSIVE) unless the user
    chose a wait policy. Spinning threads fight any other busy process for the cores: on two
    cores that cut training to a quarter beside one busy process (benchmarks/train_threads.py,
    docs/scaling.md). OpenMP reads this once, when torch loads: call before importing torch."""
    if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ and "torch" not in sys.modules:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


def apply_threads() -> None:
    """Honour --threads for torch (call after importing torch lazily). Only where torch is
    already loaded (training): models get the value through load_model, and an
    onnxruntime-only command must never import torch."""
    torch = sys.modules.get("torch")
    if THREADS > 0 and torch is not None:
        torch.set_num_threads(THREADS)


DEVICE_HELP = "auto: CUDA when there is a GPU for the engine, else the CPU; cpu; cuda (fails without one)."


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


def load_model(path, device: Device = Device.auto):
    """The CLI's one way to open a model: vaekit.load with --device and --threads as values."""
    import vaekit

    return vaekit.load(path, device=Device(device).value, threads=THREADS or None)


def parse_share(text: str | None):
    """--shard INDEX/COUNT checked now (vaekit.stream.parse_shard); not with torchrun, whose ranks
    take their shares already."""
    from vaekit import stream

    share = stream.parse_shard(text) if text is not None else None
    if share is not None and stream.env_shard()[1] > 1:
        raise typer.BadParameter("--shard cannot be combined with torchrun (each rank takes its share already)")
    return share


def image_rate(bars: Progress, labels: dict[str, str]):
    """A progress(done, total, phase="") callback for `bars`: one bar per phase (labelled by
    `labels`, else by the phase's name) showing images per second since that phase began."""
    import time

    tasks: dict[str, tuple[int, float, int]] = {}

    def progress(done: int, total: int | None, phase: str = "", **_) -> None:
        if phase not in tasks:
            tasks[phase] = (bars.add_task(labels.get(phase, phase), total=total, info=""), time.monotonic(), done)
        task, start, first = tasks[phase]
        rate = (done - first) / max(time.monotonic() - start, 1e-9)
        shown_rate = phase not in ("merge", "fit") and done > first  # a fit has no rate; none before the first step
        bars.update(task, completed=done, total=total, info=f"{rate:,.0f} img/s" if shown_rate else "")

    return progress


@contextmanager
def progress_bars(labels: dict[str, str], quiet: bool = False):
    """A progress(done, total, phase="") callback drawing rich bars on stderr, one per phase that
    `labels` names (`image_rate`); None with `quiet` (--json) or where stderr is not a terminal,
    where a stopped bar would still print a blank line before an error's one line."""
    if quiet or not err_console.is_terminal:
        yield None
        return
    with progress_bar(transient=True) as bars:
        yield image_rate(bars, labels)


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


def number(x: float) -> str:
    """A threshold or score for people (vaekit.anomaly.threshold.number: the web app says it alike)."""
    from vaekit.anomaly.threshold import number as said

    return said(x)
