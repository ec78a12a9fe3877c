"""`vaekit train` as a library call: find and decode the images (once, into the pixel cache),
decide the automatic settings, then `fit()` (vaekit/training/loop.py); or resume a run exactly.

The loop is vaekit.training.loop, the recipe vaekit.training.recipe, what the run directory
records vaekit.training.finish. Users import `train` from vaekit.train (README).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

import numpy as np

from vaekit.config import RESUMABLE, SESSION, ModelConfig, TrainConfig, from_dict, from_stored_model, surface_sizes
from vaekit.errors import BadInput, VaekitError, check_callbacks, check_flags
from vaekit.images.arrays import check_int
from vaekit.images.load import MAX_WORKERS
from vaekit.fileio import refuse_inside
from vaekit.progress import Progress
from vaekit.training import rundir
from vaekit.training.data import (Dataset, auto_image_size, choose_model, image_statistics, load_dataset, median_side,
                                  probe_layout)
from vaekit.training.distributed import agree, init_distributed, pick_device
from vaekit.training.launch import launch_env
from vaekit.training.loop import TrainResult, fit
from vaekit.training.runlock import locked


# --- the whole job -------------------------------------------------------------------------



def _resumed_configs(stored: dict, out_dir: Path, changes: dict) -> tuple[ModelConfig, TrainConfig]:
    """The stored configs, with the RESUMABLE `changes` applied (and SESSION ones: the device,
    for this session only); any other change is refused."""
    if not isinstance(stored.get("train"), dict):  # every run records it: without it, a resume would guess
        raise rundir.RunError(f"run config {out_dir / rundir.CONFIG} is damaged: it has no 'train' section")
    try:
        model_cfg = from_stored_model(stored["model"])
        # runs of vaekit 0.1 trained at a constant learning rate, without a calibration split; runs
        # of 0.1 and 0.2 held images out by the fractions alone (no cross-fitting), had no reader and
        # trained on the images as they were, with no spike clipping, so a resume plans the very
        # splits and steps their checkpoints trained on
        old = from_dict(TrainConfig, {"schedule": "constant", "calibration_fraction": 0.0, "folds": 0, "reader": False,
                                      "augment": "off", "spike_clip": 0.0,
                                      **stored["train"]})
    except (TypeError, ValueError) as e:
        raise rundir.RunError(f"run config {out_dir / rundir.CONFIG} is damaged: {e}") from None
    # --image-size as the user gave it: above the network's size, a surface's read size
    current = {**asdict(model_cfg), "image_size": model_cfg.reads_at, **asdict(old)}
    refused = {k: v for k, v in changes.items() if k not in RESUMABLE + SESSION and k in current and current[k] != v}
    if refused:
        names = ", ".join(f"{_option(k, v)} (the run has {_option(k, current[k]) if isinstance(v, bool) else current[k]})"
                          for k, v in refused.items())
        raise BadInput(f"--resume continues {out_dir} with its own settings and cannot change {names}; only "
                       f"--epochs, --lr and --beta can change on resume. Start a new run to change the others")
    applied = {k: v for k, v in changes.items() if k in RESUMABLE + SESSION and not (k == "epochs" and not v)}
    try:
        return model_cfg, replace(old, **applied)
    except TypeError as e:
        raise BadInput(str(e)) from None


def _option(name: str, value) -> str:
    """An option as typed: --image-size 64; a switch as --reader or --no-reader (--compile, which has
    no --no- form, as "no --compile")."""
    flag = "--" + name.replace("_", "-")
    off = "no " + flag if name == "compile" else "--no-" + flag[2:]
    return (flag if value else off) if isinstance(value, bool) else f"{flag} {value}"


def train(
    data_dir: str | Path,
    out_dir: str | Path,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    channels: str | int = "auto",
    resume: bool = False,
    overwrite: bool = False,
    cache_dir: Path | None = None,
    workers: int = 0,
    progress: Progress | None = None,
    resume_epochs: int | None = None,
    resume_changes: dict | None = None,
    should_stop: Callable[[], bool] | None = None,
    confine_to: Path | None = None,
) -> tuple[TrainResult, Dataset]:
    """`vaekit train`: load the folder, then fit. `should_stop()`, asked after every step, ends
    training early and cleanly (see vaekit.training.loop.fit): the demo's Stop, the CLI's Ctrl-C.

    On resume the stored configs win, except `resume_changes` (settings the user gave, by
    config field name): epochs (to extend a run; also `resume_epochs`), lr and beta apply from
    the next epoch and are recorded in config.json; a different value for any other setting
    is refused. The decoded images must be unchanged, so the result is exact.

    The output rule: `out_dir` must be new, empty or a vaekit run (replaced only with
    `overwrite`, and then only the files vaekit wrote), and not inside `data_dir`; it is
    locked while training, so a second process on it gets InUse. `confine_to`: every scan of
    `data_dir` refuses a link that leads outside that folder (images.find_images; the web app).
    """
    check_flags(resume=resume, overwrite=overwrite)
    check_callbacks(progress=progress, should_stop=should_stop)
    _check_arguments(data_dir, out_dir, model_cfg, train_cfg, workers)
    out_dir = Path(out_dir)
    rank, world, _ = launch_env()  # BadInput for a RANK / WORLD_SIZE left over in a shell, not torchrun's
    rank0 = rank == 0  # torchrun: rank 0 holds the lock for all
    with contextlib.ExitStack() as held:
        failed = None
        try:
            roots = [data_dir, *_linked_folders(data_dir, confine_to)]
            refuse_inside(out_dir, roots, "--out")
            _refuse_cache_inside(cache_dir, roots)
            if rank0:
                held.enter_context(locked(out_dir, hint="another vaekit train; wait for it to finish or choose another --out"))
        except VaekitError as e:
            if world <= 1:
                raise
            failed = e  # told to the other ranks below, which would otherwise wait for rank 0
        try:  # read-only; under torchrun rank 0 makes them even when refused, to join on the same device
            stored, model_cfg, train_cfg, channels = _checked(out_dir, model_cfg, train_cfg, channels, resume, overwrite,
                                                              resume_epochs, resume_changes)
        except VaekitError as e:
            if world <= 1:
                raise
            failed, stored = failed or e, None
        # Every rank has made the checks above before rank 0 writes anything (agree waits for
        # all), so no rank takes rank 0's fresh files for an old run.
        dist = init_distributed(pick_device(train_cfg.device))
        agree(dist, failed)
        return _train(data_dir, out_dir, dist, stored, model_cfg, train_cfg, channels, resume, overwrite, cache_dir,
                      workers, progress, should_stop, confine_to)


def _check_arguments(data_dir, out_dir, model_cfg, train_cfg, workers) -> None:
    """BadInput for arguments of the wrong kind, before the run folder is made (a dict for a
    config was an AttributeError; workers=1.5 trained)."""
    for name, value in (("data_dir", data_dir), ("out_dir", out_dir)):
        if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
            raise BadInput(f"{name} must be a folder's path, got {value!r:.60}")
    if not isinstance(model_cfg, ModelConfig) or not isinstance(train_cfg, TrainConfig):
        raise BadInput(f"model_cfg and train_cfg must be vaekit.config.ModelConfig and TrainConfig, got "
                       f"{type(model_cfg).__name__} and {type(train_cfg).__name__}")
    check_int(workers, "workers", 0, MAX_WORKERS)


def _checked(out_dir, model_cfg, train_cfg, channels, resume, overwrite, resume_epochs, resume_changes):
    """(stored config or None, model config, train config, channels): on resume the run's own,
    with the changes it allows; else the given ones, once --out is known to take a new run."""
    if not resume:
        rundir.prepare_out(out_dir, overwrite, write=False)
        return None, model_cfg, train_cfg, channels
    if _no_run(Path(out_dir)):  # read_config would say "run config not found", as of a folder given as a model
        raise rundir.RunError(f"nothing to resume: {out_dir} holds no run (no {rundir.CONFIG}); leave out --resume "
                              "to start one")
    stored = rundir.read_config(out_dir)
    rundir.refuse_blocked_names(out_dir)
    changes = dict(resume_changes or {})
    if resume_epochs:
        changes["epochs"] = resume_epochs
    model_cfg, train_cfg = _resumed_configs(stored, out_dir, changes)
    return stored, model_cfg, train_cfg, model_cfg.channels


def _no_run(out_dir: Path) -> bool:
    """Whether `out_dir` holds no run's config (not there, or the lock this train just took
    there); False where it cannot tell (not a folder, unreadable: read_config says what)."""
    try:
        return not os.path.lexists(out_dir / rundir.CONFIG) and (out_dir.is_dir() or not os.path.lexists(out_dir))
    except OSError:
        return False


def _refuse_cache_inside(cache_dir: Path | None, roots: list) -> None:
    """BadInput when the pixel cache lies in a training folder: vaekit would write its entries
    among the user's images. One under a hidden folder there is left alone, as the image search
    is (~/.cache/vaekit, the default, when training on the home folder)."""
    from vaekit.fileio import resolved
    from vaekit.training.cache import default_cache_dir

    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    what = "cache_dir" if cache_dir is not None else \
        "the pixel cache (VAEKIT_CACHE_DIR)" if os.environ.get("VAEKIT_CACHE_DIR") else "the pixel cache"
    for folder in (r for r in map(Path, roots) if r.is_dir()):
        try:
            below = resolved(root).relative_to(resolved(folder)).parts
        except ValueError:
            continue
        if not any(part.startswith(".") for part in below):
            raise BadInput(f"{what} {root} is inside the training folder {folder}: its files would be written among "
                           "your images; set VAEKIT_CACHE_DIR to a folder elsewhere")


def _other_images(data: Dataset, out_dir: Path, root) -> str:
    """Why a resume's images are not the run's: the fingerprint names each file by its real path,
    so a folder moved or copied elsewhere counts as other images, however alike its files."""
    here = os.path.realpath(data.root)
    if isinstance(root, str) and os.path.realpath(root) != here:
        return (f"{out_dir} was started on the images in {root}, not {here}; resume needs the very files it "
                "trained on, in that folder (a moved or copied folder counts as other images)")
    return (f"the images in {data.root} are not those {out_dir} was started on (their names, sizes or modification "
            "times differ: a file added, removed, replaced or touched, or the folder copied without its times); "
            "resume needs the same data")


def _decoded_otherwise(data: Dataset, out_dir: Path, recorded: dict) -> str:
    """Why a resume's images, with the run's fingerprint, are not the run's: a file replaced under
    the same name, size and time no longer decodes (or now does). Trained on, it would split the
    images anew, and those held out for validation and calibration would be trained on."""
    was = {str(s[0]) for s in recorded.get("skipped") or [] if isinstance(s, list) and s}
    new = [str(p) for p, _ in data.skipped if os.path.relpath(p, data.root) not in was]
    what = (f"{', '.join(new[:3])}{' ...' if len(new) > 3 else ''} no longer decode{'s' if len(new) == 1 else ''}"
            if new else "files that did not decode now do")
    return (f"the images in {data.root} are not those {out_dir} was started on: {what} (replaced under the "
            f"same size and modification time); {len(data.paths)} usable, the run had {recorded.get('images')}; "
            "resume needs the same data")


def _first_rank_first(dist, load, progress):
    """load(progress) on the first rank of each machine, which fills the pixel cache; then
    load(None) on the others, which find it there. A failure on any rank is raised on all (agree)."""
    got, failed = None, None
    if dist.local_rank == 0:
        try:
            got = load(progress)
        except Exception as e:  # noqa: BLE001 - agree re-raises it here and tells the others
            failed = e
    agree(dist, failed)
    return got if dist.local_rank == 0 else load(None)


def _whole(data: Dataset, size: int, dist, cached) -> Dataset:
    """`data` with its images whole in squares (vaekit.training.wide), when they are wide (the
    first rank on each machine fills that cache entry); None on every rank unless all have them."""
    from vaekit.training.wide import load_wide

    cache_dir, workers, progress = cached
    wide = _first_rank_first(dist, lambda report: load_wide(data, size, cache_dir, workers, report), progress)
    if dist.world > 1:  # a rank without them (its machine's cache full meanwhile): none trains on them
        import torch.distributed

        said = [None] * dist.world
        torch.distributed.all_gather_object(said, None if wide is None else len(wide.tiles))
        wide = wide if len(set(said)) == 1 else None
    return replace(data, wide=wide)


def _same_images_everywhere(data: Dataset, dist) -> None:
    """BadInput on every rank when the ranks did not read the same images: each scans the folder
    in turn (_first_rank_first), so a file added, removed or touched in between gave rank 1 another
    file list than rank 0's. Trained on, each rank took its share of other batches and splits
    (a different model than any single process trains, recorded as rank 0's images), or the
    ranks' collectives no longer matched and gloo aborted with a traceback."""
    if dist.world <= 1:
        return
    import torch.distributed

    said = [None] * dist.world
    torch.distributed.all_gather_object(said, (data.fingerprint, data.pixels, len(data.paths)))
    if len(set(said)) > 1:
        counts = ", ".join(f"rank {r}: {n}" for r, (_, _, n) in enumerate(said))
        raise BadInput(f"the images in {data.root} changed while the {dist.world} processes read them in turn "
                       f"(files added, removed or replaced; images seen by {counts}); run again once the folder "
                       "no longer changes")


def _linked_folders(data_dir, confine_to: Path | None = None) -> list[Path]:
    """The real folders the training folder reaches through folder links: inputs too, where no
    run may go (its preview.png would become training data)."""
    from vaekit import images

    linked: list[Path] = []
    if Path(data_dir).is_dir():
        images.scan_roots([data_dir], linked, confine_to)
    return linked


def _train(data_dir, out_dir, dist, stored, model_cfg, train_cfg, channels, resume, overwrite, cache_dir, workers,
           progress, should_stop=None, confine_to=None):
    if not dist.main:
        progress = None

    # auto: objects or surface first (a small probe), then the size from the headers; a size above
    # the network's (read_size) is for a surface only, so it is probed before anything is read
    if not model_cfg.image_size or (model_cfg.read_size and model_cfg.layout == "auto"):
        from vaekit import images

        paths = images.find_images(data_dir, confine_to)
        layout, native = model_cfg.layout, median_side(paths)  # the headers read once for both decisions
        if layout == "auto" and paths:
            layout = probe_layout(paths, images.resolve_channels(paths, channels), native)
        if model_cfg.image_size:
            model_cfg = replace(model_cfg, layout=layout)  # BadInput if the images are aligned objects
        else:
            side = auto_image_size(paths, layout, native)
            model_cfg = replace(model_cfg, layout=layout,
                                **(surface_sizes(side) if layout == "grid" else {"image_size": side}))
    data = _first_rank_first(dist, lambda report: load_dataset(data_dir, model_cfg.reads_at, channels, cache_dir,
                                                               workers, report, confine_to), progress)
    _same_images_everywhere(data, dist)
    if not resume and dist.main:  # once the images are known to be usable: a refused run writes nothing
        rundir.prepare_out(out_dir, overwrite)
    if resume and data.fingerprint != stored.get("data", {}).get("fingerprint"):
        raise rundir.RunError(_other_images(data, out_dir, stored.get("data", {}).get("root")))
    recorded = stored.get("data", {}).get("images") if resume else None
    if isinstance(recorded, int) and len(data.paths) != recorded:  # same files, decoded otherwise: split anew
        raise rundir.RunError(_decoded_otherwise(data, out_dir, stored.get("data", {})))
    pixels = stored.get("data", {}).get("pixels") if resume else None  # runs of before 2026-12-07 hold none
    if pixels and data.pixels and pixels != data.pixels:  # the same names, sizes and times, other pixels
        raise rundir.RunError(f"the images in {data.root} decode to other pixels than {out_dir} was started on "
                              "(a file replaced under the same name, size and modification time); resume needs "
                              "the same data")
    model_cfg = replace(model_cfg, channels=int(data.images.shape[1]))
    if not model_cfg.resolved:  # the rest of "auto", from the decoded training pixels (the same on every rank)
        # the layout by the images' own size, as the probe judges it: a given --image-size may enlarge small ones
        native = median_side(data.paths) if model_cfg.layout == "auto" else None
        model_cfg = choose_model(model_cfg, image_statistics(data.images, np.arange(len(data.paths))), native)
    squares = stored.get("data", {}).get("whole_squares") if resume else None  # none: a run of before 2026-12-07
    done = resume and train_cfg.epochs == stored.get("train", {}).get("epochs") and rundir.finished(out_dir)
    if model_cfg.layout == "grid" and (not resume or (squares and not done)):  # a surface learns wide images whole
        data = _whole(data, model_cfg.reads_at, dist, (cache_dir, workers, progress))
        if resume and (data.wide is None or len(data.wide.tiles) != squares):
            now = "cannot hold now (its disk full, or not writable)" if data.wide is None else "now cuts otherwise"
            raise rundir.RunError(f"{out_dir} trained on its images whole, in {squares} squares, which the pixel cache "
                                  f"{now}; make room there (or set VAEKIT_CACHE_DIR), or start again with --overwrite")
    return fit(data, out_dir, model_cfg, train_cfg, resume=resume, progress=progress, should_stop=should_stop), data
