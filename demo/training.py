"""The Train tab's work: `vaekit.training.job.train` in a worker thread, its progress as events.

Like vaekit_demo.handlers, nothing here imports gradio, so tests call it directly.
"""

from __future__ import annotations

import queue
import shlex
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from vaekit.errors import BadInput, NotFound
from vaekit_demo.inputs import whole
from vaekit_demo.security import md_code


class TrainingStopped(Exception):
    """Raised inside the training loop (through its progress callback) when Stop is pressed."""


@dataclass
class TrainEvent:
    phase: str  # "decode", "plan", "train", "epoch" (as vaekit.training.job reports), then "done" or "stopped"
    done: int = 0
    total: int = 0
    metrics: dict = field(default_factory=dict)
    result: object = None  # "done": the TrainResult


def train_events(
    folder: str | Path,
    out_dir: str | Path,
    image_size: int,
    latent_dim: int,
    epochs: int,
    stop: threading.Event,
    slot: threading.Semaphore | None = None,
    confine_to: Path | None = None,
) -> Iterator[TrainEvent]:
    """Run `vaekit.training.job.train` in a worker thread and yield its progress as it comes.

    Setting `stop` ends training after the current step (a `stop` already set stops it at once) through the library's stop hook
    (`should_stop`; while images are still being decoded, the next progress report stops it):
    the run directory keeps its last epoch's checkpoint, so `vaekit train --resume` continues it.
    The last event is "done" (with the TrainResult) or "stopped"; errors are re-raised here.
    `slot`, acquired by the caller, is released when the worker ends (or at once when it never starts).
    `confine_to`: the library's scans of `folder` refuse a link leading outside it (the app's --data-root).
    """
    try:
        worker = _train_worker(folder, out_dir, image_size, latent_dim, epochs, stop, slot, confine_to)
        worker.start()
    except BaseException:
        if slot is not None:
            slot.release()
        raise
    events = worker.events
    while True:
        ev = events.get()
        if isinstance(ev, BaseException):
            raise ev
        yield ev
        if ev.phase in ("done", "stopped"):
            return


def _train_worker(folder, out_dir, image_size, latent_dim, epochs, stop: threading.Event,
                  slot: threading.Semaphore | None, confine_to: Path | None = None) -> threading.Thread:
    """The thread that trains (not started), its events in `.events`; the inputs checked first."""
    from vaekit.config import ModelConfig, TrainConfig

    if not folder:
        raise BadInput("no folder given: type the path of a folder of images on this machine")
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise NotFound(f"no such folder: {folder}")
    # int(nan), from a request made by hand, raised ValueError: shown as a bug in vaekit
    model_cfg = ModelConfig(image_size=whole(image_size, "the image size"),
                            latent_dim=whole(latent_dim, "the latent dimensions"))
    train_cfg = TrainConfig(epochs=whole(epochs, "the number of epochs"))
    events: queue.Queue = queue.Queue()

    def report(done: int, total: int, phase: str = "", **metrics) -> None:
        if stop.is_set() and phase == "decode":  # before the loop, which asks should_stop itself
            raise TrainingStopped
        events.put(TrainEvent(phase, done, total, metrics))

    def work() -> None:
        try:  # the import too: without torch the page waited for ever, its training slot held
            from vaekit.training.job import train

            result, data = train(folder, out_dir, model_cfg, train_cfg, channels="auto", progress=report,
                                 should_stop=stop.is_set, confine_to=confine_to)
            skipped = {"skipped": list(getattr(data, "skipped", None) or [])}  # those `vaekit train` names
            events.put(TrainEvent("stopped") if result.stopped else TrainEvent("done", metrics=skipped, result=result))
        except TrainingStopped:
            events.put(TrainEvent("stopped"))
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            events.put(e)
        finally:
            if slot is not None:
                slot.release()

    worker = threading.Thread(target=work, name="vaekit-demo-train", daemon=True)
    worker.events = events
    return worker


def validated(epoch_metrics: dict) -> bool:
    """Whether an epoch's val_loss is a -ELBO of held-out images (else it repeats the training loss)."""
    return epoch_metrics.get("val_estimator", "z = mu") == "z = mu"


def message(ev, rows: list[dict], out: Path, folder, ctx, plan: dict | None = None) -> str | None:
    """What the Train tab says after event `ev` (None: nothing new to show), given the run's `plan`
    (the "plan" event's metrics, None before it): its losses per image, or per crop for a surface
    that trains on crops, and its notes on what the model cannot learn from the images
    (vaekit.training.coverage) under it."""
    unit = "nats/image"
    if plan is not None:
        from vaekit.training.trainer import loss_unit  # torch, there once a training plans

        unit = loss_unit(plan.get("crop"))
    said = _message(ev, rows, out, folder, ctx, unit)
    notes = (plan or {}).get("notes") or []
    return None if said is None else said + "".join(f"\n\n**Note**: {note}" for note in notes)


def _message(ev, rows: list[dict], out: Path, folder, ctx, unit: str) -> str | None:
    m, public = ev.metrics, ctx.public

    def run(path) -> str:  # a path as Markdown code, shown as it is whatever its name holds
        return md_code(public(path))

    if ev.phase == "plan":  # every "auto" decided, before the first step
        from vaekit.training.loop import plan_text

        return f"Training {run(out)}: {plan_text(m)}"
    if ev.phase == "epoch":  # ev.total: the epochs planned (the slider may say 0, auto)
        which = "validation" if validated(m) else "training"
        loss = m["val_loss"] if which == "validation" else m["train_loss"]
        return f"Training {run(out)}: epoch {m['epoch']}/{ev.total}, {which} loss {loss:.2f} {unit}"
    if ev.phase == "stopped" and not rows:  # no checkpoint yet: --resume says "nothing to resume"
        return f"**Stopped** before the first epoch ended: {run(out)} holds no checkpoint; press Train to start again."
    if ev.phase == "stopped":
        resume = f"vaekit train {shlex.quote(public(folder))} --out {shlex.quote(public(out))} --resume"
        return (f"**Stopped** after {rows[-1]['epoch']} epoch(s). {run(out)} keeps its last checkpoint: "
                f"continue it with {md_code(resume)} "
                f"({_relative_to(out, ctx)}).")
    if ev.phase == "done":
        r = ev.result
        held_out = any(row["split"] == "validation" for row in rows)  # as `vaekit train` says it
        loss = (f"best validation loss {r.best_val:.2f} {unit} (epoch {r.best_epoch})" if held_out
                else f"training loss {r.best_val:.2f} {unit} (nothing held out for validation)")
        return (f"**Done**: {run(r.run_dir)}, {r.epochs_done} epochs, trained in {r.seconds:.1f} s, {loss}; "
                f"it is now this page's model.{_threshold_text(r.run_dir)}{_skipped_text(m.get('skipped'))}")
    return None


def _threshold_text(run_dir) -> str:
    """What `vaekit train` says of the threshold the run stored: the false-positive rate it promises and
    its note (too few scores; the training images' own). The page said only "Done": a model of one image,
    whose threshold flags at least half of all normal images, read as ready to use."""
    from vaekit.anomaly import promised_rate, section_note
    from vaekit.anomaly.threshold import number
    from vaekit.inference.info import score_unit
    from vaekit.training.rundir import read_config

    try:
        a = read_config(Path(run_dir)).get("anomaly")
    except Exception:  # noqa: BLE001 - the run opened as the page's model; its message only loses this line
        return ""
    if not isinstance(a, dict) or not isinstance(a.get("threshold"), (int, float)):
        return ""
    said = f" Anomaly threshold: {a.get('score')} {number(a['threshold'])} {score_unit(str(a.get('score', '')))}"
    rate, note = promised_rate(a), section_note(a)
    said += f", expected false positives {rate}." if rate else "."
    return said + (f" {note[0].upper()}{note[1:]}." if note else "")


def _skipped_text(skipped) -> str:
    """What `vaekit train` says of the files it could not read: their count and the first few."""
    if not skipped:
        return ""
    shown = "; ".join(f"{md_code(p.name)}: {md_code(reason)}" for p, reason in skipped[:3])  # no Markdown of theirs
    more = f" and {len(skipped) - 3} more" if len(skipped) > 3 else ""
    return f" Skipped {len(skipped)} unreadable file(s): {shown}{more}."


def _relative_to(out: Path, ctx) -> str:
    """What the paths of a resume command are relative to (`public` shows a run in --runs-dir outside the
    data folder relative to the runs folder: "relative to the data folder" sent the command elsewhere)."""
    try:
        out.resolve().relative_to(ctx.st.data_root.resolve())
        return "paths relative to the data folder"
    except ValueError:
        return "the images' path relative to the data folder, the run's to the runs folder (--runs-dir)"
