"""`vaekit anomaly-score` and `vaekit evaluate` (`vaekit threshold`: threshold_cmd.py)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from vaekit_cli.output import (DEVICE_HELP, Device, apply_threads, console, dumps_json, err_console,
                               load_model, note_hidden, note_repeated, number, parse_share, progress_bars, shown, tidy_outputs)

MODEL_HELP = "A training run directory, or an exported .onnx model."
TABLE_ROWS = 20  # the terminal shows at most this many images (the most anomalous); files get all


class MapFormat(str, Enum):
    png = "png"
    npy = "npy"


class Score(str, Enum):
    atypicality = "atypicality"
    defect = "defect"
    excess = "excess"
    neg_elbo = "neg_elbo"
    recon = "recon"
    kl = "kl"


SCORE_HELP = ("Default: the model's own. defect (surfaces): the defect reader's largest smoothed defect probability. "
              "atypicality (objects): typicality tests against normal images, each a z-score z, max(z + 2, 0)² "
              "added up (the simplicity test's at least 4; sd²): the reconstruction's error too high (over the image and in its worst 5×5 window), the code too far from "
              "the nearest training image's code, the image simpler than normal (for surfaces: reconstruction and KL too high or too "
              "low in any neighbourhood, the -ELBO too low); models from vaekit 0.1 score excess. excess: -ELBO minus "
              "the image's own floor; neg_elbo: the plain -ELBO; recon / kl: its two terms (nats). "
              "Higher = more anomalous.")
SAMPLES_HELP = ("0: evaluate at the posterior mean (deterministic, the default). K: average K posterior draws, "
                "each image's noise seeded by its pixels, so still the same on every run; the atypicality is then "
                "excess (nats), which the stored threshold is not of: pass --threshold. A surface's defect score "
                "does not change, nor its threshold.")
IWAE_HELP = ("Estimate -log p(x) with the importance-weighted bound over --samples draws (64 if not given): "
             "tighter than the ELBO (Burda et al. 2016). Stored thresholds do not apply; pass --threshold.")


@tidy_outputs('out', 'maps')
def anomaly_score(
    model: Annotated[Path, typer.Argument(help=MODEL_HELP, exists=True)],
    inputs: Annotated[List[Path], typer.Argument(help="Image files or folders (searched recursively).", exists=True)],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write every row to a .csv or .json file.")] = None,
    maps: Annotated[Optional[Path], typer.Option(help="Folder for per-pixel anomaly heat maps (a PNG over each image, named after it: "
                                                      "a.jpg -> a.png, or a.jpg.png where two inputs share a stem).")] = None,
    map_format: Annotated[MapFormat, typer.Option(help="png: a heat map over each image (colours scaled per image); npy: the map's "
                                                        "own values, float32 in the score's unit, at the size the model reads "
                                                        "the image (numpy.load; a.jpg -> a.npy).")] = MapFormat.png,
    score: Annotated[Optional[Score], typer.Option(help=SCORE_HELP)] = None,
    samples: Annotated[int, typer.Option(min=0, max=4096, help=SAMPLES_HELP)] = 0,
    iwae: Annotated[bool, typer.Option("--iwae", help=IWAE_HELP)] = False,
    threshold: Annotated[Optional[float], typer.Option(help="Flag scores above this (in the score's unit) instead of the stored threshold.")] = None,
    fail_on_anomaly: Annotated[bool, typer.Option("--fail-on-anomaly", help="Exit with code 1 when any image is anomalous or cannot be read.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing -o file and heat maps of the same names.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue a killed job from OUT.partial (same command).")] = False,
    shard: Annotated[Optional[str], typer.Option(help="Score only share INDEX/COUNT of the files (e.g. 0/4); the "
                                                      "last share to finish merges them into -o.")] = None,
    device: Annotated[Device, typer.Option(help=DEVICE_HELP)] = Device.auto,
    batch_size: Annotated[Optional[int], typer.Option(min=1, max=4096, help="Files per batch, the journal's unit "
                                                      "(default: 64, fewer for models over 256 px; --resume: the journal's); a batch over 4 M decoded pixels is "
                                                      "scored in parts, so memory is bounded whatever its size.")] = None,
    workers: Annotated[int, typer.Option(min=0, max=256, help="Processes decoding images ahead (0 or 1: a thread of this one, overlapping scoring).")] = 0,
) -> None:
    """Score images (higher = more anomalous) and flag those above the model's threshold.

    Images are converted by the model's own preprocessing (its channels; an object model resizes
    the shorter side to its size and takes the centre square, a surface model reads the whole
    image in tiles); unreadable files are skipped and listed. Rows are written as they are
    scored (OUT.partial), so a killed job continues with --resume; under torchrun each rank
    scores its share and rank 0 writes the one file.
    """
    from vaekit import anomaly

    apply_threads()
    if map_format is not MapFormat.png and maps is None:  # else nothing would say no maps were written
        from vaekit.errors import BadInput

        raise BadInput("--map-format npy needs --maps DIR, the folder the maps go in")
    # a bad or taken name fails now, not after scoring (resuming, a taken -o once its journals are read)
    anomaly.check_outputs(inputs, out, maps, overwrite or resume, model)
    share = parse_share(shard)
    samples = samples or (64 if iwae else 0)
    m = load_model(model, device)
    if fail_on_anomaly:
        _refuse_a_gate_without_threshold(anomaly.scoring_plan(m, samples, score.value if score else None, iwae, threshold))
    with _scoring_bar() as progress:
        report = anomaly.score_to_file(m, inputs, out, maps, samples=samples, score=score.value if score else None, iwae=iwae,
                                       threshold=threshold, overwrite=overwrite, resume=resume, shard=share,
                                       batch_size=batch_size, workers=workers, progress=progress, top=TABLE_ROWS,
                                       map_format=map_format.value)
    _say(report, inputs, out, maps, map_format.value)
    if fail_on_anomaly:
        _gate(report)


def _say(report, inputs, out, maps, map_format: str = "png") -> None:
    """What a scoring job prints: files skipped, notes, the table, and what it wrote."""
    for path, reason in report.skipped:
        err_console.print(f"[yellow]skipped[/yellow] {shown(path)}: {shown(reason)}", highlight=False)
    note_repeated(report.repeated, "scored")
    note_hidden(report.hidden)
    if report.plan.note:
        err_console.print(f"[yellow]note[/yellow]: {shown(report.plan.note)}", highlight=False)
    _print_scores(report, inputs)
    if report.out is not None:  # the CSV's header says "score": which one, and in what
        from vaekit.inference.info import score_unit

        unread = len(report.skipped)  # a CSV has a row per scored image only; JSON lists them under "skipped"
        left = (f"; {unread} file{'s' if unread != 1 else ''} that could not be read, not in it (named above)"
                if unread and str(report.out).lower().endswith(".csv") else "")
        console.print(f"wrote {shown(report.out)} (score: {report.plan.score}, {score_unit(report.plan.score)}){left}",
                      highlight=False, soft_wrap=True)
    elif out is not None:
        i, n = report.shard
        console.print(f"share {i}/{n} scored; {shown(out)} is written when every share has finished "
                      f"(waiting for {', '.join(map(str, report.pending)) or 'the merge'})", highlight=False)
    if maps is not None:
        what = "heat maps" if map_format == "png" else "raw maps (.npy)"
        console.print(f"wrote {report.maps} {what} to {shown(maps)}", highlight=False)


def _refuse_a_gate_without_threshold(plan) -> None:
    """--fail-on-anomaly with no threshold for the score: refused before any image is scored."""
    if plan.threshold is None:
        from vaekit.errors import BadInput

        raise BadInput(f"--fail-on-anomaly needs a threshold, and there is {plan.source}")


def _gate(report) -> None:
    """--fail-on-anomaly: exit 1 when an image is anomalous, or could not be read (a gate fails
    closed: an image it could not read is not one it passed)."""
    if report.skipped:
        err_console.print(f"[red]failed the check[/red]: {len(report.skipped)} file(s) could not be read "
                          "(named above); with --fail-on-anomaly an unreadable image fails it", highlight=False,
                          soft_wrap=True)
    if report.n_anomalous or report.skipped:
        raise typer.Exit(1)


def _scoring_bar():
    return progress_bars({"score": "scoring", "load": "reading images", "merge": "waiting for the other ranks"})


def _print_scores(report, inputs) -> None:
    from rich.table import Table

    from vaekit.stream import relative_name

    short = len(inputs) == 1 and inputs[0].is_dir()
    where = f" in {shown(inputs[0])}" if short else ""
    from vaekit.inference.engine import score_unit

    unit = score_unit(report.plan.score)
    t = Table(title=f"{report.plan.score} scores{where} ({unit}; higher = more anomalous)", title_justify="left")
    t.add_column("image", overflow="fold")
    t.add_column("score", justify="right")
    plan = report.plan  # the ELBO column names its estimator: z = mu is the plug-in, not the ELBO
    est = {"mean": "z = μ", "samples": f"{plan.samples} draws", "iwae": f"IWAE, {plan.samples} draws"}.get(plan.estimator, plan.estimator)
    t.add_column(f"-ELBO\n({est})", justify="right")
    t.add_column("verdict", justify="left")  # the -o file's `anomalous` field (true / false), in words
    from vaekit.anomaly.quantiles import distinct_decimals

    d = distinct_decimals([r.score for r in report.top], report.plan.threshold)
    for r in report.top:  # most anomalous first; a score that is not a number (a broken model) above all
        flag = "" if r.anomalous is None else ("[bold red]ANOMALOUS[/bold red]" if r.anomalous else "[green]normal[/green]")
        t.add_row(shown(relative_name(Path(r.path), inputs) if short else r.path), f"{r.score:.{d}f}",
                  f"{r.neg_elbo:.2f}", flag)
    console.print(t)
    if report.count > len(report.top):
        console.print(f"... and {report.count - len(report.top)} more (the {len(report.top)} highest shown; -o writes all)",
                      highlight=False)
    if report.plan.score == "defect" and any(r.score == 1.0 for r in report.top):
        from vaekit.inference.frame import SCORE_ONE

        console.print(SCORE_ONE, highlight=False, soft_wrap=True)
    skipped = f"; {len(report.skipped)} skipped (unreadable, named above)" if report.skipped else ""
    if report.plan.threshold is None:
        console.print(f"threshold: {shown(report.plan.source)}{skipped}", highlight=False)
    else:
        at = number(report.plan.threshold) if d == 2 else f"{report.plan.threshold:.{d}f}"
        console.print(f"{report.n_anomalous} of {report.count} anomalous at threshold {at} {unit} "
                      f"({shown(report.plan.source)}){skipped}", highlight=False)


@tidy_outputs('plot')
def evaluate(
    model: Annotated[Path, typer.Argument(help=MODEL_HELP, exists=True)],
    normal: Annotated[Path, typer.Option(help="Folder of normal images.", exists=True)],
    anomalous: Annotated[Path, typer.Option(help="Folder of anomalous images.", exists=True)],
    masks: Annotated[Optional[Path], typer.Option(help="Folder of ground-truth masks for the anomalous images "
                                                       "(same name, or NAME_mask.png): adds pixel-level AUROC.",
                                                  exists=True, file_okay=False)] = None,
    score: Annotated[Optional[Score], typer.Option(help=SCORE_HELP)] = None,
    samples: Annotated[int, typer.Option(min=0, max=4096, help=SAMPLES_HELP)] = 0,
    iwae: Annotated[bool, typer.Option("--iwae", help=IWAE_HELP)] = False,
    threshold: Annotated[Optional[float], typer.Option(help="Threshold for the F1 at threshold (default: stored).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON instead of a table.")] = False,
    plot: Annotated[Optional[Path], typer.Option(help="Save the ROC curve as a PNG (needs matplotlib).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --plot file.")] = False,
    device: Annotated[Device, typer.Option(help=DEVICE_HELP)] = Device.auto,
) -> None:
    """Measure detection on labelled folders: AUROC, AUPRC, F1 at the threshold, best F1, FPR at 95% TPR."""
    from vaekit import anomaly

    apply_threads()
    if plot is not None:  # before the work, not after it
        from vaekit.anomaly.evaluation import check_plot_name
        from vaekit.fileio import refuse_existing, refuse_inside, refuse_under_file

        check_plot_name(plot)
        refuse_under_file(plot, "--plot")  # a read-only folder: said now, not after scoring every image
        refuse_inside(plot, [normal, anomalous, *([masks] if masks else [])], "--plot")  # a PNG there is an input next time
        from vaekit.inference.engine_onnx import refuse_model_files

        refuse_model_files(plot, model, "--plot")  # --overwrite would replace the run's preview.png
        refuse_existing(plot, overwrite, "--plot")
    samples = samples or (64 if iwae else 0)
    m = load_model(model, device)
    with _scoring_bar() as progress:
        ev = anomaly.evaluate(m, normal, anomalous, masks=masks, samples=samples, score=score.value if score else None, iwae=iwae,
                              threshold=threshold, progress=progress)
    if plot is not None:
        anomaly.plot_roc(ev, plot, overwrite=overwrite)
    for path, reason in ev.skipped:
        err_console.print(f"[yellow]skipped[/yellow] {shown(path)}: {shown(reason)}", highlight=False)
    if ev.note:
        err_console.print(f"[yellow]note[/yellow]: {shown(ev.note)}", highlight=False)
    if as_json:
        typer.echo(dumps_json(ev.to_dict()))
        return
    _print_evaluation(ev)
    if plot is not None:
        console.print(f"wrote {shown(plot)}", highlight=False)


def _print_evaluation(ev) -> None:
    from rich.table import Table

    def f(v, fmt=".4f"):
        return "-" if v is None else format(v, fmt)

    t = Table(title=f"{ev.n_normal} normal, {ev.n_anomalous} anomalous images; score {ev.score}", show_header=False,
              title_justify="left")
    t.add_row("AUROC", f(ev.auroc))
    t.add_row("AUPRC", f"{f(ev.auprc)} (by chance {ev.auprc_by_chance:.4f}, the share of anomalous images)")
    t.add_row("FPR at 95% TPR", f(ev.fpr_at_95_tpr))
    t.add_row("best F1", f"{ev.best_f1:.4f} (threshold {number(ev.best_f1_threshold)}"
                         + ("; flagging every image scores the same)" if ev.best_f1_is_flag_all else ")"))
    if ev.threshold is None:
        t.add_row("F1 at threshold", f"- ({shown(ev.threshold_source)})")
    else:
        t.add_row("F1 at threshold", f"{ev.f1_at_threshold:.4f} (threshold {number(ev.threshold)}, {shown(ev.threshold_source)})")
        precision = "n/a (none flagged)" if ev.precision_at_threshold is None else f"{ev.precision_at_threshold:.4f}"
        t.add_row("  precision / recall / FPR", f"{precision} / {ev.recall_at_threshold:.4f} / {ev.fpr_at_threshold:.4f}")
    if ev.pixel_auroc is not None:
        empty = (f"; {len(ev.empty_masks)} of them mark{'s' if len(ev.empty_masks) == 1 else ''} no pixel, all counted normal ({shown(', '.join(ev.empty_masks[:3]))}"
                 f"{', ...' if len(ev.empty_masks) > 3 else ''}): a defect pixel is above 127 of 255 in grey"
                 if ev.empty_masks else "")
        t.add_row("pixel AUROC", f"{ev.pixel_auroc:.4f} ({ev.n_masks} of {ev.n_anomalous} anomalous images have masks{empty})")
    console.print(t)


def register(app: typer.Typer) -> None:
    app.command("anomaly-score")(anomaly_score)
    app.command("evaluate")(evaluate)
    from vaekit_cli.threshold_cmd import threshold

    app.command("threshold")(threshold)
