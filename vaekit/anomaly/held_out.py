"""Whether images are held out: notes and checks about the folders a model trained on, and the
ones its stored threshold was set from (`vaekit threshold --normal`), for evaluate and threshold."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from vaekit.inference.engine import Model

SET_ON = "normal_folders"  # in the anomaly section: where a threshold was set from (the files and folders named, absolute)


def training_roots(cfg: dict, run_dir: Path) -> list[Path]:
    """Where the run's training images were: config.json's data.root. Runs written before it was
    stored absolute hold the path as typed, relative to a working directory no longer known: both
    the current one and the run's parent are then taken for it."""
    root = (cfg.get("data") or {}).get("root")
    if not isinstance(root, str) or not root:
        return []
    return [Path(root)] if Path(root).is_absolute() else [Path.cwd() / root, run_dir.parent / root]


def trained_on_note(model: Model, folders: str | Path | Sequence[str | Path]) -> str | None:
    """A note when `folders` (or one of them) is, holds or lies inside the folder the model trained on
    (config.json's data.root): images it trained on score lower than new ones, so a metric
    measured on them is not a held-out one. None when they are apart, or the root is unknown."""
    cfg = getattr(model, "config", None)
    source = getattr(model.info, "source", None)
    if not isinstance(cfg, dict) or source is None:
        return None
    roots = training_roots(cfg, Path(source))
    named = [folders] if isinstance(folders, (str, Path)) else list(folders)
    for folder in named:
        root = training_folder_of(folder, roots)
        if root is not None:
            return f"{folder} holds images the model trained on ({root}): the figures are not held-out ones"
    copy = training_copy(named, roots)
    if copy is not None:
        return (f"{copy[0]} is the training image {copy[1]} (the same file or the same bytes): the figures are not "
                "held-out ones")
    return None


def training_copy(named: Sequence[str | Path], roots: Sequence[Path]) -> tuple[Path, Path] | None:
    """(an image under `named`, the training image it is) for the first image under the files and
    folders `named` that is one the model trained on under another name: a link, or a copy of its
    bytes (such images score lower than new ones). None when they share none, or the training
    folder is gone."""
    from vaekit.anomaly.overlap import first_shared
    from vaekit.errors import VaekitError
    from vaekit.stream import find_inputs

    there = [r for r in roots if r.is_dir()]
    if not there or not named:
        return None
    try:
        return first_shared(find_inputs(named).paths, find_inputs(there).paths)
    except VaekitError:  # the training folder holds no image now
        return None


def threshold_set_on_note(model: Model, folders: str | Path | Sequence[str | Path]) -> str | None:
    """A note when the stored threshold was set from images under `folders` (`vaekit threshold
    --normal`): its false-positive rate there is its quantile by construction, not a measurement."""
    cfg = getattr(model, "config", None)
    section = cfg.get("anomaly") if isinstance(cfg, dict) else None
    set_on = section.get(SET_ON) if isinstance(section, dict) else None
    if not isinstance(set_on, list):
        return None
    from vaekit.fileio import is_inside

    for folder in [folders] if isinstance(folders, (str, Path)) else folders:
        hit = next((s for s in set_on if isinstance(s, str) and (is_inside(s, folder) or is_inside(folder, s))), None)
        if hit is not None:
            return (f"the stored threshold was set on the images in {hit} (vaekit threshold --normal), which {folder} "
                    "holds or lies in: its false-positive rate there is its quantile by construction, not a measurement")
    return None


def training_folder_of(folder: str | Path, roots: Sequence[Path]) -> Path | None:
    """The first training root that `folder` is, holds or lies inside; None when apart from all."""
    from vaekit.fileio import is_inside

    return next((root for root in roots if is_inside(folder, root) or is_inside(root, folder)), None)
