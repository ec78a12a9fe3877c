"""`vaekit encode`, `decode` and `reconstruct`: images <-> latent codes (sample and interpolate: generate.py).

Each command parses its arguments, calls vaekit.codes / vaekit.images.quality, and prints. The model
is any path `vaekit.load` opens (a run directory or an exported .onnx), so every command works
with either engine.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from vaekit_cli.codec_text import RESIDUAL_TEXT, int8_note, pixel_model_text, psnr_text, vs_sources  # noqa: F401 (re-exported)
from vaekit_cli.output import (DEVICE_HELP, EXIT_TERMINATED, Device, Terminated, apply_threads, console, dumps_json,
                               err_console, load_model, note_hidden, note_repeated, parse_share, progress_bars, shown,
                               tidy_outputs)

ModelArg = Annotated[Path, typer.Argument(help="Run directory or exported .onnx file.", exists=True)]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace existing output files.")]
JsonOut = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON to stdout only.")]
DeviceOpt = Annotated[Device, typer.Option(help=DEVICE_HELP)]
Resume = Annotated[bool, typer.Option("--resume", help="Continue a killed job from OUT.partial (same command).")]
Shard = Annotated[Optional[str], typer.Option(help="Process only share INDEX/COUNT of the files (e.g. 0/4); the last "
                                                    "share to finish merges them into -o.")]
BatchSize = Annotated[Optional[int], typer.Option(min=1, max=4096, help="Files per batch, the journal's unit (default: 256; "
                                                  "--resume: the journal's); one over 4 M decoded pixels goes in parts.")]
Workers = Annotated[int, typer.Option(min=0, max=256, help="Processes decoding images ahead (0 or 1: a thread of "
                                                           "this one, overlapping the model).")]


@contextmanager
def _one_pass(out: Path):
    """Ctrl-C (or SIGTERM) while a .vkc is written: it is written in one pass, so nothing was
    kept to resume from (the general message would suggest --resume, which a .vkc refuses)."""
    try:
        yield
    except KeyboardInterrupt as exc:
        what, code = ("terminated", EXIT_TERMINATED) if isinstance(exc, Terminated) else ("interrupted", 130)
        err_console.print(f"[red]{what}[/red]: a .vkc is written in one pass, so nothing of {shown(out)} was kept; "
                          "run the command again", highlight=False, soft_wrap=True)
        raise typer.Exit(code) from None


class Precision(str, Enum):
    f32 = "f32"
    f16 = "f16"
    q8 = "q8"


class Size(str, Enum):
    model = "model"
    original = "original"


LOSSLESS_PHASES = {"": "reading images", "fit": "fitting the pixel model", "code": "coding images"}


def _progress(label: str, quiet: bool, phases: dict[str, str] | None = None):
    """Bars on stderr (none with --json): one labelled `label`, or one per phase that `phases`
    names (a lossless encode reads, fits, then codes)."""
    return progress_bars(phases or {"": label}, quiet)


TABLE_ROWS = 20  # reconstruct's table shows every image up to this many, else the worst this many


def _note(note: str | None) -> None:
    if note:
        err_console.print(f"[yellow]note[/yellow]: {shown(note)}", highlight=False, soft_wrap=True)


def _skipped(skipped, what: str = "") -> None:
    for path, reason in skipped:
        err_console.print(f"[yellow]skipped{what}[/yellow] {shown(path)}: {shown(reason)}", highlight=False, soft_wrap=True)


def _print_json(obj) -> None:
    typer.echo(dumps_json(obj))


@tidy_outputs('out')
def encode(
    model: ModelArg,
    images: Annotated[Path, typer.Argument(help="Folder of images (searched recursively) or one image.", exists=True)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Code file (or .vkc with --quality / --lossless) to write.")],
    precision: Annotated[Optional[Precision], typer.Option(help="q8 (the default): 8 bits per dimension; f16; f32: "
                                                           "exact means. Code files only.", show_default=False)] = None,
    overwrite: Overwrite = False,
    as_json: JsonOut = False,
    resume: Resume = False,
    shard: Shard = None,
    batch_size: Annotated[Optional[int], typer.Option(min=1, max=4096, help="Files per batch, the journal's unit "
                                                      "(default 256; fewer for a model whose codes would pass 64 MiB "
                                                      "a batch); one over 4 M decoded pixels goes in parts.",
                                                      show_default=False)] = None,
    workers: Workers = 0,
    device: DeviceOpt = Device.auto,
    quality: Annotated[Optional[int], typer.Option(min=1, max=8, help="Write an entropy-coded .vkc instead: 1 (smallest) "
                                                   "to 8 (best: the residual in steps of 4 grey levels; coded per pixel, every pixel comes back "
                                                   "within 2 of its source; coded in DCT blocks (photos), the error is spread over "
                                                   "each block and a pixel may be further off); see docs/codec.md.")] = None,
    lossless: Annotated[bool, typer.Option("--lossless", help="Write a lossless bits-back .vkc archive: every pixel "
                                           "back (images of the model's size; the pixels coded with a model's own logistic "
                                           "likelihood, or one fitted to the archive: docs/codec.md says which is smaller).")] = False,
    fit: Annotated[Optional[Path], typer.Option(help="With --quality: first fit the model's entropy-coding tables on "
                                                "these training images and store them in the run.", exists=True)] = None,
) -> None:
    """Compress images into one file: latent codes (posterior means; deterministic), or with
    --quality / --lossless an entropy-coded .vkc."""
    if _wants_vkc(out, precision, resume, shard, quality, lossless, fit):
        with _one_pass(out):
            return _encode_vkc(model, images, out, quality, lossless, fit, overwrite, as_json, device)
    from vaekit.codes import encode_folder

    apply_threads()
    share = parse_share(shard)
    m = load_model(model, device)
    with _progress("decoding images", as_json) as progress:
        report = encode_folder(m, images, out, (precision or Precision.q8).value, overwrite=overwrite, progress=progress, resume=resume,
                               batch_size=batch_size, workers=workers, shard=share)
    _skipped(report.skipped)
    note_repeated(report.repeated, "encoded")
    note_hidden(report.hidden)
    _note(int8_note(m, "encodes"))
    if not report.merged:
        return _share_pending(report, out, as_json)
    if as_json:
        return _print_json(report.to_dict())
    from rich.table import Table

    t = Table(title=f"encoded {shown(report.path)}", show_header=False)
    t.add_row("images", f"{report.count} encoded, {len(report.skipped)} skipped")
    t.add_row("precision", f"{report.precision} ({m.info.latent_dim} dimensions)")
    t.add_row("code file", f"{report.file_bytes:,} bytes")
    t.add_row("per image", f"{report.bytes_per_image:,.1f} bytes")
    t.add_row("bits per pixel", f"{report.bits_per_pixel:.4f} (of {report.image_size}×{report.image_size}); "
                                f"{report.bits_per_source_pixel:.4f} (of the originals)")
    t.add_row("vs. sources", vs_sources(report.source_bytes, report.file_bytes,
                                        report.source_pixels != report.count * report.image_size**2, report.image_size))
    console.print(t)


def _wants_vkc(out: Path, precision, resume, shard, quality, lossless, fit) -> bool:
    """Whether encode's options ask for a .vkc; BadParameter/BadInput for options that do not go together."""
    from vaekit.errors import BadInput

    if quality is None and not lossless and fit is None:
        if out.suffix.lower() == ".vkc":  # the user meant the codec: fixed-length codes under that name surprise
            raise BadInput(f"{out.name} names an entropy-coded archive: give --quality 1..8 or --lossless, "
                           f"or name it {out.with_suffix('.codes').name} for fixed-length codes")
        return False
    if resume or shard is not None:
        raise typer.BadParameter("--quality and --lossless write a .vkc in one pass: no --resume or --shard")
    if lossless and (quality is not None or fit is not None):
        raise typer.BadParameter("give --quality (with --fit) or --lossless, not both")
    if quality is None and not lossless:
        raise typer.BadParameter("--fit goes with --quality")
    if out.suffix.lower() == ".codes":  # the reverse of the refusal above: a .vkc under a code file's name
        raise BadInput(f"{out.name} names a fixed-length code file: leave out --quality/--lossless, "
                       f"or name it {out.with_suffix('.vkc').name} for an entropy-coded archive")
    if precision is not None:
        raise BadInput(f"--precision {precision.value} sets a code file's numbers; a .vkc (--quality, --lossless) "
                       "is entropy-coded at its quality instead: leave out one or the other")
    return True


def _encode_vkc(model, images, out, quality, lossless, fit, overwrite, as_json, device) -> None:
    from vaekit import codec
    from vaekit.fileio import is_inside

    m, prior, fit_skipped = load_model(model, device), None, []
    if fit is not None:
        if m.info.engine != "torch":
            raise typer.BadParameter("--fit stores the tables in a run directory: give the run (then export it again)")
        codec.check_encode(m, images, out, quality=quality, lossless=lossless, overwrite=overwrite)  # refused: nothing changed
        codec.check_fit_target(m.info.source)  # a stopped run's finish would replace the tables the file needs
        if is_inside(fit, m.info.source):  # its preview.png would be the tables' only image
            raise typer.BadParameter(f"--fit {fit} is the run directory: give the training images to fit the tables on")
        with _progress("fitting the tables", as_json) as progress:
            loaded = m.load_images(fit, progress=progress)
        if not len(loaded.images):
            from vaekit.images import none_usable

            raise none_usable(f"in {fit} to fit the tables on", loaded.skipped)
        prior, fit_skipped = codec.fit_prior(m, loaded.images), list(loaded.skipped)
        _skipped(fit_skipped, " (not fitted on)")
    with codec.staged_for_fit(out, prior, model, m, overwrite) as path, \
            _progress("coding images", as_json, LOSSLESS_PHASES if lossless else None) as progress:
        r = replace(codec.encode(m, images, path, quality=quality, lossless=lossless, overwrite=overwrite,
                                 progress=progress, prior=prior), path=Path(out))
    _skipped(r.skipped)
    note_hidden(r.hidden)
    _note(None if lossless else int8_note(m, "encodes"))
    info = {"file": str(r.path), "mode": r.mode, "quality": r.quality, "images": r.count, "skipped": len(r.skipped),
            "bytes": r.file_bytes, "bytes_per_image": r.bytes_per_image, "bits_per_dim": r.bits_per_dim,
            "header_bytes": r.header_bytes, "source_bytes": r.source_bytes, "resized": r.resized, "seconds": r.seconds}
    if fit is not None:
        info["fit_skipped"] = len(fit_skipped)  # the --fit images that could not be read (each named on stderr)
    if lossless:
        info["pixel_model"] = r.pixel_model
    else:
        info.update(residual=r.residual, psnr_db=r.psnr, exact=r.exact, psnr_images=r.psnr_images)
    if as_json:
        return _print_json(info)
    from rich.table import Table

    t = Table(title=f"encoded {shown(r.path)}", show_header=False)
    t.add_row("images", f"{r.count} encoded, {len(r.skipped)} skipped")
    t.add_row("mode", "lossless (bits-back)" if lossless else f"lossy, quality {quality}, " + RESIDUAL_TEXT[r.residual])
    t.add_row("file", f"{r.file_bytes:,} bytes ({r.header_bytes:,} of them header and checksum)")
    size, channels = m.info.image_size, m.info.channels  # what bits_per_dim counts: the model's pixels, not the sources'
    t.add_row("per image", f"{r.bytes_per_image:,.1f} bytes, {r.bits_per_dim:.4f} bits per sub-pixel "
                           f"(of the model's {size}×{size}×{channels})")
    if r.source_bytes:
        t.add_row("vs. sources", vs_sources(r.source_bytes, r.file_bytes, r.resized > 0, size))
    if lossless:
        t.add_row("pixel model", pixel_model_text(m.info.likelihood, r.pixel_model, m.info.engine))
    else:
        t.add_row("quality", psnr_text(r.psnr, r.exact, r.psnr_images, size, channels))
    console.print(t)


def _is_vkc(path: Path) -> bool:
    """A .vkc by its first bytes, or by its name where they are not a code file's (safetensors: a
    header length, then "{"): an empty or damaged .vkc is refused as one, not as "a code file"."""
    from vaekit.fileio import check_regular, open_regular_file

    check_regular(path, "code file")  # a FIFO or device is exit 2, never waited on
    with open_regular_file(path) as f:
        head = f.read(9)
    return head[:3] == b"VKC" or (path.suffix.lower() == ".vkc" and head[8:9] != b"{")


def _share_pending(report, out, as_json: bool) -> None:
    i, n = report.shard
    waiting = ", ".join(map(str, report.pending[:10])) + (" ..." if len(report.pending) > 10 else "") or "the merge"
    if as_json:
        return _print_json({"shard": [i, n], "merged": False, "pending": report.pending, "out": str(out)})
    console.print(f"share {i}/{n} done; {shown(out)} is written when every share has finished (waiting for {waiting})",
                  highlight=False, soft_wrap=True)


@tidy_outputs('out')
def decode(
    model: ModelArg,
    codes: Annotated[Path, typer.Argument(help="Code file or .vkc written by `vaekit encode`.", exists=True, dir_okay=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the PNGs (created).")],
    size: Annotated[Size, typer.Option(help="model: the model's N×N; original: each source image's size.")] = Size.model,
    overwrite: Overwrite = False,
    as_json: JsonOut = False,
    device: DeviceOpt = Device.auto,
) -> None:
    """Decode a code file or a .vkc into PNGs named after the source images."""
    from vaekit.codes import decode_file

    m = load_model(model, device)
    if _is_vkc(codes):
        from vaekit import codec

        with _progress("decoding images", as_json) as progress:
            r = codec.decode(m, codes, out, size.value, overwrite=overwrite, progress=progress)
        _note(None if r.mode == "lossless" else int8_note(m, "decodes"))
        if as_json:
            return _print_json({"out_dir": str(r.out_dir), "mode": r.mode, "files": [str(p) for p in r.written]})
        n = len(r.written)
        return console.print(f"wrote {n} image{'' if n == 1 else 's'} ({r.mode}) to {shown(r.out_dir)}", highlight=False,
                             soft_wrap=True)
    with _progress("decoding codes", as_json) as progress:
        report = decode_file(m, codes, out, size.value, overwrite=overwrite, progress=progress)
    _note(int8_note(m, "decodes"))
    if as_json:
        return _print_json({"out_dir": str(report.out_dir), "size": report.size, "files": [str(p) for p in report.written]})
    n = len(report.written)
    console.print(f"wrote {n} image{'' if n == 1 else 's'} ({report.size} size) to {shown(report.out_dir)}", highlight=False, soft_wrap=True)


@tidy_outputs('out')
def reconstruct(
    model: ModelArg,
    images: Annotated[Path, typer.Argument(help="Folder of images (searched recursively) or one image.", exists=True)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for reconstructions (NAME.png each) and comparison.png, the grid "
                                                     "(comparison-1.png when an input is named comparison; created).")],
    overwrite: Overwrite = False,
    as_json: JsonOut = False,
    resume: Resume = False,
    shard: Shard = None,
    batch_size: BatchSize = None,
    workers: Workers = 0,
    device: DeviceOpt = Device.auto,
) -> None:
    """Reconstruct images through the model; report PSNR and SSIM per image (SSIM needs vaekit[metrics])."""
    from vaekit.inference.reconstruct import reconstruct_to_folder

    apply_threads()
    share = parse_share(shard)
    m = load_model(model, device)
    with _progress("decoding images", as_json) as progress:
        report = reconstruct_to_folder(m, images, out, overwrite=overwrite, progress=progress, batch_size=batch_size,
                                       workers=workers, resume=resume, shard=share)
    note_repeated(report.repeated, "reconstructed")
    note_hidden(report.hidden)
    if not report.merged:
        _skipped(report.skipped)
        return _share_pending(report, out, as_json)
    _skipped(report.skipped)
    if as_json:
        return _print_json(report.to_dict())
    from rich.table import Table

    n = len(report.names)
    worst = n > TABLE_ROWS  # a large folder: the worst reconstructions only, lowest PSNR first
    title = f"reconstructions in {shown(report.out_dir)}" + (f" (the {TABLE_ROWS} lowest PSNR of {n})" if worst else "")
    t = Table(title=title, title_justify="left")
    t.add_column("image", overflow="fold")
    t.add_column("PSNR (dB)", justify="right")
    has_ssim = report.ssim is not None
    if has_ssim:
        t.add_column("SSIM", justify="right")
    order = sorted(range(n), key=lambda i: report.psnr[i])[:TABLE_ROWS] if worst else range(n)
    for i in order:
        t.add_row(shown(report.names[i]), f"{report.psnr[i]:.2f}", *([f"{report.ssim[i]:.4f}"] if has_ssim else []))
    t.add_section()
    t.add_row(f"mean of {len(report.names)}", f"{report.psnr.mean():.2f}",
              *([f"{report.ssim.mean():.4f}"] if has_ssim else []), style="bold")
    console.print(t)
    if worst:
        console.print(f"... and {n - TABLE_ROWS} more (--json prints every image)", highlight=False)
    if not has_ssim:
        from vaekit.images.quality import SSIM_MISSING

        console.print(f"no SSIM column: {shown(SSIM_MISSING)}", highlight=False, soft_wrap=True)
    console.print(f"comparison grid (input, reconstruction): {shown(report.grid)}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    for command in (encode, decode, reconstruct):
        app.command(command.__name__)(command)
