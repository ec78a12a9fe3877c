"""`vaekit train` and `vaekit sample-data`."""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from vaekit_cli.output import (EXIT_TERMINATED, Device, Terminated, apply_threads, console, err_console, progress_bar,
                               number, shown)
from vaekit_cli.train_summary import name_skipped, print_summary


class Likelihood(str, Enum):
    auto = "auto"
    bernoulli = "bernoulli"
    gaussian = "gaussian"
    logistic = "logistic"


class Layout(str, Enum):
    auto = "auto"
    vector = "vector"
    grid = "grid"


class Augment(str, Enum):
    auto = "auto"
    on = "on"
    off = "off"


LAYOUT_HELP = ("Latent layout: one vector per image, or a grid of cells (one per 4×4 pixels); auto: a vector when the "
               "images are aligned objects, a grid for surfaces and for fewer than 200 images larger than 64 px.")
LIKELIHOOD_HELP = ("Decoder distribution p(x|z); auto: Bernoulli for near-binary images, else Gaussian; logistic: "
                   "discretised, per pixel (-ELBO = code length of the 8-bit pixels).")
FOLDS_HELP = ("Cross-fitting: -1 auto (5 fold models below 200 images, the run's own the first, so every image gets "
              "an out-of-sample score; a surface model with its defect reader holds out one fold instead), 0 off, "
              "K >= 2 folds.")
AUGMENT_HELP = ("Train on slightly warped copies (rotated, scaled, sheared, shifted) of the images: auto = aligned "
                "objects below 50 training images, where a VAE would otherwise learn them by heart.")


def _sizes(image_size: int) -> dict[str, int]:
    """--image-size N: the model's size; above MAX_IMAGE_SIZE (a surface only), the size its files
    are read at, in tiles of MAX_IMAGE_SIZE."""
    from vaekit.config import MAX_IMAGE_SIZE, MAX_READ_SIZE, surface_sizes
    from vaekit.errors import BadInput

    if image_size > MAX_READ_SIZE or 0 != image_size < 16:  # one message for both ends
        raise BadInput(f"--image-size must be from 16 to {MAX_IMAGE_SIZE}, or up to {MAX_READ_SIZE} for a surface "
                       f"(or 0 for auto), got {image_size}")
    return surface_sizes(image_size) if image_size > MAX_IMAGE_SIZE else {"image_size": image_size}


def train(
    ctx: typer.Context,
    images: Annotated[Path, typer.Argument(help="Folder of images (searched recursively), or one image file.", exists=True)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory to create (or resume).")] = Path("runs/latest"),
    image_size: Annotated[int, typer.Option(help="Images are resized to N×N (shorter side to N, centre crop); 16 <= N <= 1024; "
                                                 "a surface (--layout grid) up to 3072: read whole at N, in 1024 px tiles. "
                                                 "0 = auto: the images' median shorter side, at most 64 for aligned "
                                                 "objects; a surface (or fewer than 200 images larger than 64 px) keeps its own resolution (up to 3072: read "
                                                 "whole, in tiles of at most 1024).")] = 0,
    channels: Annotated[str, typer.Option(help="auto (grayscale if every image is stored gray), 1 or 3.")] = "auto",
    latent_dim: Annotated[int, typer.Option(help="Latent dimensions (vector layout) or channels per cell (grid), at most 4096; 0 = auto: 16 / 8.")] = 0,
    layout: Annotated[Layout, typer.Option(help=LAYOUT_HELP)] = Layout.auto,
    base_channels: Annotated[int, typer.Option(help="Feature maps of the first conv layer (doubles per stage), 1 to 4096.")] = 16,
    likelihood: Annotated[Likelihood, typer.Option(help=LIKELIHOOD_HELP)] = Likelihood.auto,
    epochs: Annotated[Optional[int], typer.Option(help="Epochs (default, or 0: auto, a fixed compute budget, ~1-3 min of one model's epochs on 2 cores; cross-fitting, below 200 images, trains five models on ~2 budgets, and a surface's defect readers add ~1.5-2 min; up to 4x, at most 20 epochs, for a logistic model with many images; with --resume: the new total); at most 1,000,000.")] = None,
    batch_size: Annotated[int, typer.Option(min=0, max=4096, help="Global batch size (split across torchrun ranks), at most 4096 "
                                                                  "as in the other commands; 0 = auto: 64 up to 32 px, else 32.")] = 0,
    lr: Annotated[float, typer.Option(help="AdamW peak learning rate (warm-up, then cosine decay).")] = 2e-3,
    beta: Annotated[float, typer.Option(help="Weight on the KL term (1 = the ELBO).")] = 1.0,
    kl_warmup: Annotated[int, typer.Option(help="Epochs of linear KL warm-up up to beta (epoch e gets beta·(e+1)/(N+1)), at most 1,000,000.")] = 0,
    val_fraction: Annotated[float, typer.Option(help="Share of images held out to pick the best epoch and calibrate the "
                                                     "score (at least 20; below 200 images: cross-fitting or one held-out fold instead).")] = 0.1,
    calibration_fraction: Annotated[float, typer.Option(help="Share of images held out, apart from those, to set the "
                                                             "threshold (at least as many as the quantile needs).")] = 0.1,
    folds: Annotated[int, typer.Option(help=FOLDS_HELP)] = -1,
    crop: Annotated[int, typer.Option(help="A surface (grid) model trains on random crops of N px; 0 = auto (64).")] = 0,
    reader: Annotated[bool, typer.Option(help="A surface (grid) model also trains a defect reader on synthetic "
                                              "defects, which gives its default score (defect).")] = True,
    augment: Annotated[Augment, typer.Option(help=AUGMENT_HELP)] = Augment.auto,
    threshold_quantile: Annotated[float, typer.Option(help="Anomaly threshold: this quantile of normal scores "
                                                           "never used for training (the target false-positive rate is 1 - q).")] = 0.99,
    seed: Annotated[int, typer.Option(help="Seed for split, init, shuffling and noise (0 to 2**63 - 1).", min=0)] = 0,
    device: Annotated[Device, typer.Option(help="auto picks CUDA when available.")] = Device.auto,
    amp: Annotated[bool, typer.Option(help="Mixed precision on CUDA (bf16, else fp16).")] = True,
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the model.")] = False,
    workers: Annotated[int, typer.Option(min=0, max=256, help="Processes decoding images on the first pass (default: CPU cores, up to 8).")] = min(8, os.cpu_count() or 1),
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out exactly where it stopped; "
                                         "--epochs, --lr and --beta may change (and --device, for this session), other settings must match the run.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing vaekit run in --out (only the files vaekit wrote).")] = False,
) -> None:
    """Train a convolutional VAE on a folder of images."""
    from vaekit.config import ModelConfig, TrainConfig
    from vaekit.training.job import train as run_training

    apply_threads()
    ch = channels if channels == "auto" else _int_channels(channels)
    changes = _given(ctx, ch)
    model_cfg = ModelConfig(**_sizes(image_size), channels=ch if ch != "auto" else 1, latent_dim=latent_dim,
                            base_channels=base_channels, likelihood=likelihood.value, layout=layout.value)
    train_cfg = TrainConfig(epochs=epochs or 0, batch_size=batch_size, lr=lr, beta=beta, kl_warmup=kl_warmup,
                            seed=seed, val_fraction=val_fraction, calibration_fraction=calibration_fraction, device=device.value, amp=amp, compile=compile,
                            threshold_quantile=threshold_quantile, folds=folds, crop=crop, reader=reader,
                            augment=augment.value)
    bars = progress_bar()  # drawn from the first event on (_Reporter): a refused run prints its one line alone
    with _drawn(bars), _stop_on_ctrl_c() as stop:
        reporter = _Reporter(bars, _extending_note(out, epochs) if resume and epochs else None)
        result, data = run_training(images, out, model_cfg, train_cfg, channels=ch, resume=resume, overwrite=overwrite,
                                    workers=workers, progress=reporter, resume_epochs=epochs,
                                    resume_changes=changes if resume else None, should_stop=stop.asked)
    _report(result, data, out, stop.code, skipped_named=reporter.skipped_named)


def _extending_note(out: Path, epochs: int) -> str | None:
    """What to say when a finished run trains on (`--resume --epochs N` beyond its own), after the
    plan (a resume the library refuses prints its one line alone): its weights are replaced in
    place, so what was written with them (lossless archives, code files, .vkc files) decodes only
    with a copy made before, and a threshold set by `vaekit threshold` is computed anew."""
    from vaekit.training import rundir

    try:
        cfg = rundir.read_config(out)
        finished, trained = cfg.get("fingerprint"), int(cfg["train"]["epochs"])
    except Exception:  # noqa: BLE001 - the library refuses a run it cannot resume, in its own words
        return None
    if not (finished and epochs > trained):
        return None
    return (f"[yellow]note[/yellow]: {shown(out)} had finished (model {shown(finished)}); training it on "
            "replaces that model: files encoded with it (lossless archives above all) decode only with a "
            "copy of the run made before, and its threshold is computed anew (a `vaekit threshold` "
            "setting is not kept)")


def _report(result, data, out: Path, code: int = 130, skipped_named: bool = False) -> None:
    """The summary of a finished run; a run stopped by Ctrl-C (or SIGTERM) says how to continue it
    (exit 130, or 143)."""
    if result.stopped:
        what = "terminated" if code == EXIT_TERMINATED else "interrupted"
        if result.epochs_done:
            err_console.print(f"{what}: {shown(out)} keeps its last finished epoch ({result.epochs_done}); "
                              "continue with `vaekit train ... --resume`", highlight=False, soft_wrap=True)
        else:  # no checkpoint yet: --resume would find nothing
            err_console.print(f"{what} before the first epoch ended: {shown(out)} holds nothing to resume; start it "
                              "again with `vaekit train ... --overwrite`", highlight=False, soft_wrap=True)
        raise typer.Exit(code)
    if result.complete and result.rank == 0:
        console.print(f"{shown(out)} had trained all {result.epochs_done} epochs and finished: nothing to resume "
                      f"(its threshold {number(result.threshold)} stands; --lr and --beta apply to epochs still to "
                      f"train); `--resume --epochs N` with N above {result.epochs_done} trains it longer",
                      highlight=False, soft_wrap=True)
    elif result.rank == 0:  # under torchrun only rank 0 reports
        print_summary(result, data, skipped_named)


class _Stop(threading.Event):
    code = 130  # the exit code of a stop: 130 for Ctrl-C, 143 for SIGTERM
    stepping = False  # training asks whether to stop between steps: a stop can wait for the step

    def asked(self) -> bool:
        """The library's should_stop: asked between training steps."""
        self.stepping = True
        return self.is_set()


@contextmanager
def _stop_on_ctrl_c():
    """The first Ctrl-C (or SIGTERM, what a scheduler sends) asks training to stop after the
    current step (through the library's should_stop), so the run stays resumable; a second one
    interrupts at once, and so does the first while the images are still being decoded (no step
    to wait for: decoding 60,000 files took longer than a scheduler's grace period)."""
    stop = _Stop()
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield stop
        return

    def on_signal(signum, frame):
        if stop.is_set() or not stop.stepping:
            raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()
        stop.code = EXIT_TERMINATED if signum == signal.SIGTERM else 130
        stop.set()

    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


# options that set a config field, for --resume to check against the run's own settings
_CONFIG_OPTIONS = ("image_size", "latent_dim", "layout", "base_channels", "likelihood", "batch_size", "lr", "beta", "kl_warmup",
                   "val_fraction", "calibration_fraction", "threshold_quantile", "seed", "folds", "crop", "reader",
                   "augment", "device", "amp", "compile")  # amp, compile: a resume ignored them (h1, 2026-12-08)


def _given(ctx: typer.Context, channels) -> dict:
    """The config settings the user typed (not defaults), by config field name."""
    out = {}
    for name in _CONFIG_OPTIONS:
        source = ctx.get_parameter_source(name)  # an enum of the click Typer bundles: compare by name
        if source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP"):
            value = ctx.params[name]
            out[name] = value.value if isinstance(value, Enum) else value
    if channels != "auto":
        out["channels"] = channels
    return out


def _int_channels(value: str) -> int:
    if value not in ("1", "3"):
        raise typer.BadParameter(f"must be auto, 1 or 3, got {value!r}", param_hint="--channels")
    return int(value)


def _epoch_line(m: dict) -> str:
    """One epoch's line, each number with its estimator: the training loss over one posterior draw
    per image; the validation -ELBO at z = mu (the plug-in, not the ELBO), absent when nothing is
    held out for it (it would repeat the training loss); bits/dim only where they are a code length
    (the discretised likelihood)."""
    line = (f"epoch {m['epoch']:>3}  train loss (1 draw) {m['train_loss']:9.2f} "
            f"(recon {m['train_recon']:9.2f} kl {m['train_kl']:7.2f})")
    if m.get("val_estimator", "z = mu") == "z = mu":
        line += f"  val -ELBO (z = μ) {m['val_loss']:9.2f} nats"
        if m.get("bits_are_code_length"):
            line += f" = {m['val_bits_per_dim']:.4f} bits/dim"
    return line + f"  {m['images_per_s']:7.0f} img/s"


@contextmanager
def _drawn(bars):
    """Stops the bars when training ends, however it ends, if they were ever drawn (an empty
    display stopped prints a blank line, before a refused run's error)."""
    try:
        yield bars
    finally:
        if bars.live.is_started:
            bars.stop()


class _Reporter:
    """Feeds vaekit's progress(done, total, phase=..., **metrics) into rich bars."""

    def __init__(self, bars, note: str | None = None):
        self.bars, self.task, self.key, self.note = bars, None, None, note  # note: printed after the plan
        self.skipped_named = False  # the plan named the files skipped; the summary does not again

    def __call__(self, done: int, total: int, phase: str = "", **m) -> None:
        if not self.bars.live.is_started:
            self.bars.start()
        if phase == "plan":  # every "auto" decided, before the first step
            from vaekit.training.loop import plan_text

            if m.get("finished"):  # a finished run resumed: _report says there is nothing to resume
                return
            head = f"resuming after epoch {done} of {total}:" if done else "training"
            self.bars.console.print(f"{head} {shown(plan_text(m))}", soft_wrap=True, highlight=False)
            if self.note:
                self.bars.console.print(self.note, soft_wrap=True, highlight=False)
            for note in m.get("notes") or ():
                self.bars.console.print(f"[yellow]note[/yellow]: {shown(note)}", soft_wrap=True, highlight=False)
            if "skipped" in m:
                name_skipped(m["skipped"])
                self.skipped_named = True
            return
        if phase == "epoch":
            # long runs (small folders get up to 200 epochs) print ~30 lines, not one per epoch
            every = max(1, -(-total // 30))
            if m["epoch"] % every and m["epoch"] not in (1, total):
                return
            self.bars.console.print(_epoch_line(m), soft_wrap=True, highlight=False)
            return
        key = (phase, m.get("epoch"), m.get("whole"))
        if key != self.key:
            if self.task is not None:
                self.bars.remove_task(self.task)
            desc = {"decode": "decoding images whole" if m.get("whole") else "decoding images",
                    "crossfit": "fold models for the threshold", "reader": "defect reader",
                    "frame": "the frame check's range"}.get(
                phase, f"epoch {m.get('epoch')}/{m.get('epochs')}")
            self.task, self.key = self.bars.add_task(desc, total=total, info=""), key
            if phase in ("crossfit", "reader", "frame") and not self.bars.console.is_terminal:
                # no bar is drawn into a log or a pipe: say what the minutes after the epochs are for
                self.bars.console.print(f"{desc} ...", highlight=False)
        info = ""
        if phase == "train":
            info = f"loss {m['loss']:.2f} recon {m['recon']:.2f} kl {m['kl']:.2f} {m['images_per_s']:.0f} img/s"
        self.bars.update(self.task, completed=done, total=total, info=info)


sample_data = typer.Typer(help="Write built-in sample image sets (no download).", no_args_is_help=True)


@sample_data.command("digits")
def digits(
    out: Annotated[Path, typer.Argument(help="Folder to create.")],
    normal: Annotated[int, typer.Option(help="Digit class used as 'normal' (train/ and test/normal/).")] = 0,
    size: Annotated[int, typer.Option(help="Upscale the 8×8 digits to N×N.")] = 32,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace files written by an earlier call.")] = False,
) -> None:
    """scikit-learn's bundled handwritten digits: train/, test/normal/, test/anomalous/."""
    from vaekit.sample_data import write_digits

    report = write_digits(out, normal=normal, size=size, overwrite=overwrite)
    _print_counts(report)


@sample_data.command("shapes")
def shapes(
    out: Annotated[Path, typer.Argument(help="Folder to create.")],
    size: Annotated[int, typer.Option(help="Image size N×N.")] = 64,
    seed: Annotated[int, typer.Option(help="Seed for the generator (0 or more).", min=0)] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace files written by an earlier call.")] = False,
) -> None:
    """Synthetic parts with defects and masks: train/, test/normal/, test/anomalous/, test/masks/."""
    from vaekit.sample_data import write_shapes

    kwargs = {"overwrite": overwrite} if overwrite else {}
    report = write_shapes(out, size=size, seed=seed, **kwargs)
    _print_counts(report)


def _print_counts(report) -> None:
    for name, n in report.counts.items():
        console.print(f"{n:6d}  {shown(report.root / name)}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("train")(train)
    app.add_typer(sample_data, name="sample-data")
