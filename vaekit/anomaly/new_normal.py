"""A run's thresholds set anew from a folder of normal images it never saw (`vaekit threshold
RUN --normal FOLDER`): every stored score's threshold becomes a quantile of their scores, by the
rule training uses (vaekit.anomaly.threshold.threshold_section)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from vaekit.anomaly.held_out import SET_ON, training_copy, training_folder_of, training_roots
from vaekit.anomaly.quantiles import check_quantile
from vaekit.anomaly.threshold import others_quantile, store_section, threshold_section
from vaekit.errors import BadInput
from vaekit.inference.tiled import tiled


NEW_NORMAL = "new normal"  # the `source` of a threshold set from a folder of new normal images


def threshold_from_normal(run_dir: str | Path, normal, quantile: float | None = None,
                          target_fpr: float | None = None) -> dict:
    """Set a run's thresholds anew from normal images it never saw; returns the new `anomaly` section.

    A threshold promises its false-positive rate for new normal images like the ones it was set
    from. When the images met in use differ from the held-out ones (another light, another
    batch of parts, or held-out images that overlap the training images, as crops of one large
    photo do), score a folder of new normal images of the kind met in use instead: every stored
    score's threshold becomes the quantile (the stored one unless given) of their scores, by the
    same rule as at training (`threshold_section`). The scores' statistics do not change, but for
    a surface's frame check's range, which grows to hold the new normal images' tiles (`_widened_frame`).
    BadInput when `normal` holds the training images or the run, or an image that cannot be read."""
    from vaekit.fileio import is_inside
    from vaekit.training import rundir
    from vaekit.training.runlock import refuse_in_use

    run_dir = Path(run_dir)
    refuse_in_use(run_dir)  # a training still writes its config.json: nothing to set yet
    cfg = rundir.read_config(run_dir)
    old = cfg.get("anomaly")
    if not old or not isinstance(old.get("by_score"), dict) or old.get("score") not in old["by_score"]:
        raise rundir.RunError(f"{run_dir} stores no anomaly section to set thresholds in (train it again)")
    if quantile is None and target_fpr is None:  # the stored quantile (after a fixed value, the one the others kept)
        quantile = others_quantile(old)
    q = check_quantile(quantile, target_fpr)
    roots = training_roots(cfg, run_dir)
    if not isinstance(normal, (np.ndarray, str, Path)):  # a generator is read once: by the checks, then the scores
        normal = list(normal)
    for folder in _named(normal):
        hit = training_folder_of(folder, roots)
        if hit is not None:
            raise BadInput(f"{folder} holds images the model trained on ({hit}); a threshold needs normal images it never saw")
        if is_inside(run_dir, folder):
            raise BadInput(f"{folder} is or holds the run directory {run_dir}; give a folder of normal images only")
    _refuse_training_copies(normal, roots)
    _refuse_unreadable(normal)
    scores, widened, keys = _new_normal_scores(run_dir, normal, old["score"], list(old["by_score"]))
    keep = _distinct(keys)  # a copy's score is its twin's: counted n times it promised a rate n images cannot
    if len(keep) and len(keys) != len(scores[old["score"]]):  # the keys did not follow the rows: count them all
        keep = np.arange(len(scores[old["score"]]))
    scores = {k: v[keep] for k, v in scores.items()}
    section = threshold_section(scores, q, NEW_NORMAL, old["score"])
    if len(keys) > len(keep):
        section["exact_copies"] = len(keys) - len(keep)
    if widened is not None:  # the frame check's range holds every normal image's tiles, these too
        old = {**old, "calibration": {**old["calibration"], "frame": widened}}
    section[SET_ON] = [os.path.abspath(f) for f in _named(normal)]  # evaluate notes a --normal among them
    return store_section(run_dir, cfg, old, section)


def _named(normal) -> list:
    """The files and folders among `normal` (an array, a name, or a list of either): what the
    checks against the training images look at; images in memory have no name to check."""
    if isinstance(normal, np.ndarray):
        return []
    return [normal] if isinstance(normal, (str, Path)) else [v for v in normal if isinstance(v, (str, Path))]


def _refuse_training_copies(normal, roots: list[Path]) -> None:
    """BadInput when an image under `normal` is one the model trained on under another name: a
    hard link, or a copy (the same bytes). Their scores are lower than new images', and a
    threshold from them flags more than it promises."""
    shared = training_copy(_named(normal), roots)
    if shared:
        raise BadInput(f"{shared[0]} is a training image ({shared[1]}, the same file or the same bytes); a "
                       "threshold needs normal images the model never saw")


def _refuse_unreadable(normal) -> None:
    """BadInput naming the first file under `normal` whose header does not read as an image, before
    any is scored (scoring a large folder first took minutes and gigabytes to end in this refusal);
    one whose body is damaged is refused when the scoring reaches it."""
    from vaekit.images.read import header_problem
    from vaekit.stream import find_inputs

    names = _named(normal)
    for path in find_inputs(names).paths if names else []:
        why = header_problem(path)
        if why is not None:
            raise BadInput(f"cannot read {path} ({why}); every new normal image must be readable")


def _distinct(keys: list) -> np.ndarray:
    """The indices of the first image of each distinct key (its bytes' digest), in order: a folder
    of 30 copies of one image set a threshold "from 30 new normal scores" that promised at most 3.2%
    and flagged 72% of new normal digits; training counts each distinct image once too."""
    seen: set = set()
    first = [i for i, k in enumerate(keys) if k is None or not (k in seen or seen.add(k))]
    return np.asarray(first, dtype=np.int64)


def _new_normal_scores(run_dir: Path, normal, default: str, names: list[str]) -> tuple[dict[str, np.ndarray], dict | None, list]:
    """Every stored score's values on the images under `normal` (the model's default score, and
    the atypicality in a second pass when the default is the reader's). A surface's image scores
    are its most anomalous tile's, whichever score, so its nats columns are taken that way
    (tiled.merge, nats="max"): the same two passes, not one per score. With them the frame check's
    section widened to hold these normal images' tiles (vaekit.inference.frame; None when the model
    has none), which scores them: else a new normal image beyond the training images' range scored
    1, and a few such gave a threshold of 1 or more, which no image passes. And each image's key,
    in the scores' order: the digest of its file's bytes (of its pixels for arrays), None unknown."""
    import hashlib

    import vaekit
    from vaekit.fileio.digests import file_sha256
    from vaekit.images.arrays import user_images
    from vaekit.inference.tiled import file_batch, iter_scores

    model = vaekit.load(run_dir, device="cpu")
    out: dict[str, list] = {k: [] for k in names}
    keys: list = []
    passes = [None] + (["atypicality"] if "atypicality" in names and model.info.score != "atypicality" else [])
    paths, arr = user_images(normal, model.info.channels, model.info.image_size)
    whole = tiled(model) and arr is None  # an array of the model's size is scored as given
    widened = _widened_frame(model, paths, arr, whole)
    for score in passes:
        batches = (iter_scores(model, paths, file_batch(model, model.batch_size), nats="max", score=score) if whole
                   else model.iter_scores(normal if arr is None else arr, score=score))
        for s in batches:
            if s.skipped:
                path, why = s.skipped[0]
                raise BadInput(f"cannot read {path} ({why}); every new normal image must be readable")
            if score is None:
                keys += ([file_sha256(p) for p in s.paths] if s.paths is not None
                         else [None] * len(np.atleast_1d(s.score)))
            columns = {s.name: s.score} if score else {s.name: s.score, "excess": s.excess,
                                                       "neg_elbo": s.neg_elbo, "recon": s.recon, "kl": s.kl}
            for k, v in columns.items():
                if k in out:
                    out[k].append(np.asarray(v, dtype=np.float64))
    if not sum(map(len, out[default])):
        raise BadInput(f"no image in {normal} to set a threshold from")
    if arr is not None:
        keys = [hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest() for a in arr]
    return {k: np.concatenate(v) for k, v in out.items() if v}, widened, keys


def _widened_frame(model, paths, arr, whole: bool) -> dict | None:
    """The model's frame check section with its range grown by the tiles of the new normal images
    (files read whole in tiles, as scoring reads them; an array as given), put in force on `model`
    for the scores that follow; None when the model has no such section (or its default score is
    not the reader's)."""
    from vaekit.inference import frame
    from vaekit.inference.tiled import file_tiles

    cal = model.calibration()  # checked: a damaged section is refused here, in one line
    stats = None if cal is None else cal.stats.get("frame")
    if stats is None or model.info.score != "defect":
        return None
    cal.stats["frame"] = frame.grown(stats, [arr] if arr is not None else file_tiles(model, paths) if whole else [])
    return cal.stats["frame"]
