"""`vaekit export`: a trained run -> ONNX files for torch-free CPU inference, parity-checked."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from vaekit_cli.output import apply_threads, console, err_console, shown, tidy_outputs

INT8_NOTE_REL = 0.02  # a larger change of the default score by int8 gets a note on the fp32 threshold it keeps


class Quantize(str, Enum):
    int8 = "int8"


@tidy_outputs('out')
def export(
    run_dir: Annotated[Path, typer.Argument(help="Run directory written by `vaekit train`.", exists=True)],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Main ONNX file to write (default: RUN_DIR's name + .onnx, next to it). "
                                                "NAME.encoder.onnx and NAME.decoder.onnx are written beside it "
                                                "(and NAME.reader.onnx for a surface model's defect reader).")] = None,
    images: Annotated[Optional[Path], typer.Option(help="Images (file or folder; the first 64) to check parity on. "
                                                   "Default: the model's own samples, noise and flat images (with --quantize int8: 64 of the run's "
                                                   "training images).", exists=True)] = None,
    quantize: Annotated[Optional[Quantize], typer.Option(help="Write int8 models (static QDQ, calibrated on --images, else on the run's training images). "
                                                             "The score change is reported; the stored threshold is the fp32 one.")] = None,
    rtol: Annotated[float, typer.Option(help="Parity tolerance, relative to torch's value.")] = 1e-4,
    atol: Annotated[float, typer.Option(help="Parity tolerance, absolute.")] = 1e-4,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing files at the output names.")] = False,
) -> None:
    """Export to ONNX; succeeds only if onnxruntime reproduces the torch engine within tolerance.

    Writes self-contained files: NAME.onnx (the scorer, and the file to give every other
    command: `vaekit anomaly-score NAME.onnx IMAGES`), NAME.encoder.onnx and NAME.decoder.onnx,
    and for a surface model NAME.reader.onnx, its defect reader, which gives the default score
    (found next to it; keep them together). They run with `pip install "vaekit[runtime]"`, no
    torch. Nothing is written if the parity check fails.
    """
    from vaekit.errors import BadInput
    from vaekit.export import export as run_export

    if not run_dir.is_dir():
        what = "an export already" if run_dir.suffix.lower() == ".onnx" else "a file"
        raise BadInput(f"{run_dir} is {what}; `vaekit export` takes the run directory `vaekit train` wrote")
    apply_threads()
    if out is None:
        if not run_dir.resolve().name:  # the root folder: nothing to name the export after, nowhere beside it
            raise BadInput(f"{run_dir} has no name to give its export; name the file with -o NAME.onnx")
        out = run_dir.resolve().with_name(run_dir.resolve().name + ".onnx")
    with err_console.status("exporting to ONNX and checking parity against torch"):
        report = run_export(run_dir, out, images=images, quantize=quantize.value if quantize else None, rtol=rtol, atol=atol,
                            overwrite=overwrite)
    _print_report(report)


def _print_report(report) -> None:
    from rich.table import Table

    t = Table(title=f"parity, onnxruntime vs torch, {report.samples} images",
              caption=f"pass: {report.parity[0].tolerance}" if report.parity else None)
    for col in ("output", "max abs diff", "max rel diff", ""):
        t.add_column(col, justify="right" if "diff" in col else "left")
    for p in report.parity:
        t.add_row(p.name, f"{p.max_abs:.2e}", f"{p.max_rel:.2e}", "[green]ok[/green]" if p.ok else "[red]FAIL[/red]")
    console.print(t)
    q = report.quantization
    if q is not None:
        console.print(f"quantised: {q.method}; {q.score} vs fp32 ONNX: max rel change {q.score_max_rel:.2e}, "
                      f"mean {q.score_mean_rel:.2e}; size {q.bytes_before / 1e6:.2f} MB -> {q.bytes_after / 1e6:.2f} MB",
                      highlight=False, soft_wrap=True)
        if q.score_max_rel > INT8_NOTE_REL:  # the threshold is the fp32 model's: its promised rate may not hold
            err_console.print(f"[yellow]note[/yellow]: int8 moves {q.score} by up to {q.score_max_rel:.0%}, and its "
                              "stored threshold is the fp32 model's: check the int8 model's false-positive rate on normal "
                              "images (`vaekit evaluate`), or score with --threshold", highlight=False)
    for role, path in report.files.items():
        console.print(f"wrote {shown(path)}  ({role}, {report.bytes[role] / 1e6:.2f} MB)", highlight=False, soft_wrap=True)
    console.print(f"[green]exported[/green] fingerprint {report.fingerprint}, opset {report.opset}, parity ok, "
                  f"{report.seconds:.1f} s. Run it with: vaekit anomaly-score {shown(report.files['scorer'])} IMAGES", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("export")(export)
