"""`vaekit threshold`: show a run's anomaly threshold, say which calibration score it is, or move it."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Optional

import typer

from vaekit_cli.output import apply_threads, console, number, promise_rows, shown


def threshold(
    run: Annotated[Path, typer.Argument(help="A training run directory.", exists=True)],
    quantile: Annotated[Optional[float], typer.Option(help="Threshold = this quantile of the held-out (calibration) scores.")] = None,
    target_fpr: Annotated[Optional[float], typer.Option(help="Aim for this false-positive rate on normal images "
                                                             "(= quantile 1 - rate).")] = None,
    value: Annotated[Optional[float], typer.Option(help="A fixed threshold of the run's default score, in its unit "
                                                        "(the other scores keep theirs).")] = None,
    normal: Annotated[Optional[Path], typer.Option(help="Set the thresholds anew from this folder of normal images the "
                                                        "model never saw (of the kind met in use), at the stored "
                                                        "quantile or the one given.", exists=True)] = None,
) -> None:
    """Show the run's anomaly threshold and its held-out score quantiles, or move the threshold."""
    if not run.is_dir():  # an export: its threshold is in its metadata, fixed when it was written
        from vaekit.errors import BadInput

        raise BadInput(f"{run} is a file; `vaekit threshold` reads and moves a run directory's threshold. An exported "
                       "model keeps the one it was exported with: move it in the run and export again, or give "
                       "`anomaly-score --threshold T`")
    if sum(v is not None for v in (quantile, target_fpr, value)) > 1:
        raise typer.BadParameter("give at most one of --quantile, --target-fpr, --value")
    if normal is not None and value is not None:
        raise typer.BadParameter("--value fixes the threshold; --normal sets it from images: give one of them")
    from vaekit import anomaly
    from vaekit.training import rundir  # after the refusals: it imports torch, which an install for exports lacks

    moving = normal is not None or any(v is not None for v in (quantile, target_fpr, value))
    before = (rundir.read_config(run).get("anomaly") or {}).get("threshold") if moving else None
    if normal is not None:
        apply_threads()
        section = anomaly.threshold_from_normal(run, normal, quantile=quantile, target_fpr=target_fpr)
    elif quantile is None and target_fpr is None and value is None:
        section = anomaly.stored_threshold(run)
    else:
        section = anomaly.set_threshold(run, quantile=quantile, target_fpr=target_fpr, value=value)
    _print_threshold(run, section)
    if moving:
        _print_moved(run, before, section)


def _print_moved(run: Path, before, section: dict) -> None:
    """What moving the threshold changed: the old and new value, the file written, and that an
    export made before keeps the old one."""
    from vaekit.training import rundir

    was = number(before) if isinstance(before, (int, float)) and not isinstance(before, bool) else "none"
    console.print(f"threshold {was} -> {number(section['threshold'])}, written to {shown(run / rundir.CONFIG)}; "
                  "an .onnx exported before keeps its own: export again to carry it", highlight=False, soft_wrap=True)


def _print_threshold(run, section) -> None:
    from rich.table import Table

    n = section.get("n", len(section.get("scores", [])))
    t = Table(title=f"{shown(run)}: score {shown(section.get('score'))}, {shown(n)} "
                    f"{shown(section.get('source', 'validation'))} image{'' if n == 1 else 's'}", show_header=False,
              title_justify="left")
    from vaekit.inference.engine import score_unit

    parts = (number(section["threshold"]), score_unit(section.get("score", "")), threshold_origin(section))
    t.add_row("threshold", " ".join(p for p in parts if p))
    which = which_score(section)
    if which:
        t.add_row("which is", which)
    if section.get("exact_copies"):  # set from new normal images among which some were copies
        copies = section["exact_copies"]
        t.add_row("exact copies", f"{shown(copies)} of the new normal images {'was a copy' if copies == 1 else 'were copies'} "
                                  f"(the same bytes) of another: each image counted once")
    promise_rows(t, section)
    for k, v in section.get("quantiles", {}).items():  # np.quantile's, between scores: not the rule above
        t.add_row(f"scores' quantile {shown(k)}, interpolated", number(v))
    console.print(t)


def which_score(section, lower: str = "--quantile or --value sets a lower one") -> str:
    """Which calibration score a quantile's threshold is, in words (empty for a fixed value): the
    rank k = ceil((n + 1) q), the largest when k > n, or beyond the largest by their fitted tail;
    the table's interpolated quantiles are another thing, and a tail far past the largest score
    (a few scores of a bounded one) is worth seeing next to that largest."""
    from vaekit.anomaly.quantiles import ROUNDING, TAIL_MIN, by_rank, conformal_rank

    q, scores = section.get("threshold_quantile"), section.get("scores")
    if section.get("fixed") or not isinstance(q, (int, float)) or not isinstance(scores, list):
        return ""
    values = sorted(float(v) for v in scores if isinstance(v, (int, float)) and math.isfinite(v))
    n = len(values)
    if not n:
        return ""
    k, what = conformal_rank(n, q), f"{shown(section.get('source', 'calibration'))} score{'s' if n != 1 else ''}"
    if by_rank(n, q):
        return f"rank ceil((n + 1) q) = {k} of the n = {n} {what}" + (", the largest" if k == n else "")
    largest = values[-1]
    if n < TAIL_MIN or section["threshold"] <= largest + 2 * ROUNDING * max(abs(largest), 1.0):  # within its margin
        return f"the largest of {n} {what}: too few for rank ceil((n + 1) q)"
    return f"beyond the largest of {n} {what} ({number(largest)}), at their fitted tail's quantile; {lower}"


def threshold_origin(section) -> str:
    """Where a stored threshold came from, in words: a quantile of the calibration scores, or a
    fixed value and how many of them lie above it (a value below them all is not "quantile 0")."""
    q = section.get("threshold_quantile")
    scores = section.get("scores")
    if section.get("fixed") and isinstance(scores, list):
        above = sum(1 for s in scores if isinstance(s, (int, float)) and s > section["threshold"])
        return f"(fixed; {above} of {len(scores)} {shown(section.get('source', 'calibration'))} scores above)"
    from vaekit.anomaly.quantiles import quantile_text

    return f"(quantile {quantile_text(q)})" if isinstance(q, (int, float)) else ""
