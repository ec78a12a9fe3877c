"""What a run directory records around training: its config at the start; at the end the
score's calibration, the anomaly threshold and the preview image."""

from __future__ import annotations

import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from vaekit.errors import TrainingFailed
from vaekit.training import rundir
from vaekit.training.data import gather, to_device
from vaekit.training.whole import frame_stats, iter_whole_tiles, model_tiles, per_image_max
from vaekit.version import __version__


def write_run_config(out_dir, data, model_cfg, train_cfg, device, n_train, n_val, n_cal=0, n_folds=0, copies=0) -> None:
    rundir.write_config(out_dir, {
        "vaekit_version": __version__,
        "torch_version": torch.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "run_id": secrets.token_hex(8),  # names the run in its checkpoints' resume.json
        "model": asdict(model_cfg),
        "train": asdict(train_cfg),
        "data": {
            "root": str(Path(data.root).absolute()),  # absolute: `threshold --normal` compares folders with it
            "images": len(data.paths),
            "train_images": n_train,
            "val_images": n_val,
            "calibration_images": n_cal,
            "crossfit_folds": n_folds,
            "skipped": [[_rel(p, data.root), r] for p, r in data.skipped],
            "channels": model_cfg.channels,
            "image_size": model_cfg.image_size,
            "read_size": model_cfg.reads_at,
            "fingerprint": data.fingerprint,
            "pixels": data.pixels,  # sha256 of the decoded pixels, which a resume compares
            "exact_copies": copies,  # images that are exact copies of another, kept in its split (splits.plan_splits)
            # a surface's images not square, learned from whole: their squares (vaekit.training.wide); else 0
            "whole_squares": 0 if data.wide is None else len(data.wide.tiles),
            "preprocessing": ("shorter side resized to read_size (bicubic), the whole image in image_size tiles; "
                              "pixels / 255") if model_cfg.layout == "grid" else
                             "shorter side resized to image_size (bicubic), centre crop; pixels / 255",
        },
        "device": str(device),
    })


CALIBRATION_PIXELS = 2000 * 64 * 64  # images the score statistics are fitted on: at most this many pixels (per set)
CHUNK_PIXELS = 256 * 64 * 64  # images scored at a time while calibrating: memory bounded by pixels
LOCAL_WINDOWS = (9, 17)  # a latent grid's local tests: windows of ~2 and ~4 cells (a cell is 4x4 pixels)
# how the standardised tests make one score (vaekit.inference.atypicality.Calibration; docs/detection.md):
# an aligned object's three tests each counted from 2 sd below their normal mean, the image-too-simple
# test from its normal mean at least ("floored"); a surface's eleven (global and per neighbourhood)
# only where they point the anomalous way
COMBINE = {"vector": "floored", "grid": "sumsq"}
THRESHOLD_SCORES = ("excess", "neg_elbo", "recon", "kl")  # stored with a threshold each, beside the default


def local_windows(image_size: int) -> tuple[int, ...]:
    """The local tests' windows that fit in the image (a 16 px grid model has no 17 px window)."""
    return tuple(w for w in LOCAL_WINDOWS if w <= image_size) or (image_size,)


@dataclass
class Scored:
    """What calibrating needs of a set of images, without their maps: the raw tests of the
    atypicality (vaekit.inference.atypicality.Calibration.tests) and the nats scores."""

    tests: np.ndarray  # (N, T)
    nats: dict[str, np.ndarray]  # THRESHOLD_SCORES -> (N,)

    @classmethod
    def of(cls, calibration, parts) -> "Scored":
        values = {"excess": parts.neg_elbo - parts.floor, "neg_elbo": parts.neg_elbo, "recon": parts.recon,
                  "kl": parts.kl}
        return cls(calibration.tests(parts), values)

    @classmethod
    def cat(cls, items: list["Scored"]) -> "Scored":
        return cls(np.concatenate([i.tests for i in items]),
                   {k: np.concatenate([i.nats[k] for i in items]) for k in THRESHOLD_SCORES})


def finish(out_dir, data, splits, train_cfg, device, crossfit=None, progress=None, should_stop=None) -> float | None:
    """With the best weights: fit the atypicality score's statistics on images the model never
    trained on, then set the threshold from the scores of images that fitted neither the model
    nor the statistics, so the false-positive rate it promises is not biased low.

    The local maps' statistics come from training images; then, held-out splits: the tests'
    statistics on the validation images, the threshold on the calibration images.
    Cross-fitted (`crossfit(summarise)`, vaekit.training.crossfit.crossfit_scores): every image is scored
    by a fold model that did not train on it; the stored statistics are fitted on all of them,
    and each image's calibration score is standardised by those of the other folds only.
    Returns the threshold, or None when the cross-fitting was asked to stop."""
    from vaekit.anomaly import threshold_section
    from vaekit.inference.engine_torch import TorchModel
    from vaekit.inference.atypicality import GLOBAL_TESTS, OBJECT_TESTS, Calibration

    # Scored by the very code `vaekit anomaly-score` runs (the engine), so the stored threshold
    # and the scores it is compared with cannot drift apart.
    engine = TorchModel(out_dir, device=str(device))
    model, cfg = engine.net, engine.config
    size = engine.info.image_size
    grid = model.cfg.layout == "grid"
    calibration = Calibration.empty(grid, local_windows(size), COMBINE["grid" if grid else "vector"],
                                    GLOBAL_TESTS if grid else OBJECT_TESTS)
    calibration = _with_codes(calibration, engine, data, splits.train)
    reference_idx = _at_most(splits.train, max(1, CALIBRATION_PIXELS // data.images.shape[-1] ** 2))
    for parts in _parts(engine, data, reference_idx):
        calibration.add_reference(parts)
    reference = _scored(engine, data, reference_idx, calibration)
    if crossfit is not None:
        def summarise(fold_engine, trained_on):  # each fold model's code test measures from its own codes
            fold = _with_codes(calibration, fold_engine, data, trained_on)
            return lambda parts: Scored.of(fold, parts)

        folds = crossfit(summarise, run_engine=engine)
        if folds is None:
            return None
        scores, source = _crossfitted(calibration, folds, reference), "cross-fitted"
        scores = {k: v[splits.distinct(np.arange(len(v)))] for k, v in scores.items()}  # copies counted once
    else:
        scores, source = _held_out(engine, data, splits, calibration, reference)
    default = "atypicality"
    if grid and train_cfg.reader:
        reader = _with_reader(out_dir, data, splits, train_cfg, cfg, scores, calibration, progress, should_stop)
        if reader is None:
            return None
        default = "defect"
    cfg["anomaly"] = {**threshold_section(scores, train_cfg.threshold_quantile, source, default=default),
                      "calibration": calibration.stats}
    if default == "defect":
        cfg["anomaly"]["source"] = reader.source
    cfg["fingerprint"] = rundir.fingerprint(model.state_dict())
    cfg["codec"] = _codec_tables(engine, data, reference_idx, cfg.get("codec"))
    rundir.write_config(out_dir, cfg)
    _write_preview(out_dir / rundir.PREVIEW, model, data, splits.val if len(splits.val) else splits.train, device)
    return cfg["anomaly"]["threshold"]


def _with_reader(out_dir, data, splits, train_cfg, cfg, scores, calibration, progress, should_stop):
    """Train a surface's defect reader (vaekit.training.finish_reader) and record it: its config and
    the fingerprint of the weights its threshold is of in `cfg`, its scores of its own held-out
    images (which may be fewer than the other scores') as scores["defect"], and the frame check's
    range (vaekit.inference.frame) in `calibration`. The reader, or None when asked to stop."""
    from vaekit.training.finish_reader import train_and_calibrate

    size = cfg["model"]["image_size"]
    reader = train_and_calibrate(out_dir, data, splits, train_cfg, size, progress, should_stop)
    if reader is not None:
        cfg["reader"], cfg["reader_fingerprint"], scores["defect"] = reader.config, reader.fingerprint, reader.scores
        calibration.stats["frame"] = frame_stats(data, size, CHUNK_PIXELS, progress)
    return reader


def _with_codes(calibration, engine, data, idx):
    """`calibration` with the codes of (at most codebank.BANK_SIZE of) training images `idx`, where
    its tests include the code test."""
    from vaekit.inference import codebank

    if "code_far" not in calibration.global_tests:
        return calibration
    codes = engine.encode(gather(data.images, _at_most(idx, codebank.BANK_SIZE)))[0]  # aligned objects only
    if not np.isfinite(codes).all():  # trained to weights that overflow (a huge --lr): no model to keep
        raise TrainingFailed("the trained model's codes of its training images are not finite numbers: "
                             "training diverged, and its saved weights with it: start the run again with a "
                             "lower --lr and --overwrite (a --resume goes on from those weights)")
    return calibration.with_codes(codes)


def _codec_tables(engine, data, idx, old) -> dict:
    """The entropy coder's tables (vaekit.codec), fitted once on training images, so that
    `vaekit encode --quality` needs nothing more and decoding never refits them. A resumed run's
    `old` tables of the same weights stay as earlier sets (store.with_earlier): `train --resume`
    of a finished run fits them again, and the .vkc files coded before must still decode."""
    from vaekit.codec import prior as priors
    from vaekit.codec.store import fit_prior, with_earlier

    return with_earlier(priors.to_dict(fit_prior(engine, model_tiles(data, idx, engine.info.image_size))), old)


def _parts(engine, data, idx):
    """The -ELBO parts of images `idx` (their tiles, for a surface read larger than the model), a
    pixel-bounded chunk at a time (of tiles too: one image read at 3072 px is nine of 1024)."""
    step = max(1, CHUNK_PIXELS // data.images.shape[-1] ** 2)
    for i in range(0, len(idx), step):
        yield from parts_of(engine, model_tiles(data, idx[i : i + step], engine.info.image_size))


def parts_of(engine, images: np.ndarray):
    """The -ELBO parts of an array of images, a pixel-bounded chunk at a time."""
    step = max(1, CHUNK_PIXELS // engine.info.image_size**2)
    for i in range(0, len(images), step):
        yield engine.elbo_parts(images[i : i + step])


def _scored(engine, data, idx, calibration) -> Scored:
    return Scored.cat([Scored.of(calibration, p) for p in _parts(engine, data, idx)])


def _held_out(engine, data, splits, calibration, reference: Scored):
    """Statistics on the validation split, scores of the calibration split (or what there is)."""
    fit_idx = splits.val if len(splits.val) else splits.train
    fitted = _scored(engine, data, _at_most(fit_idx, max(1, CALIBRATION_PIXELS // data.images.shape[-1] ** 2)),
                     calibration)
    calibration.fit_tests(fitted.tests, reference.tests)
    if len(splits.cal):
        eval_idx, source = splits.cal, "calibration"
    else:
        eval_idx, source = (splits.val, "validation") if len(splits.val) else (splits.train, "training")
    eval_idx = eval_idx[splits.distinct(eval_idx)]  # a copy's score counted once
    if engine.net.cfg.layout == "grid":  # a surface model scores each file whole, in tiles
        return _whole_scores(engine, data, eval_idx, calibration), source
    held = _scored(engine, data, eval_idx, calibration)
    return {"atypicality": calibration.score_tests(held.tests), **held.nats}, source


def _whole_scores(engine, data, idx, calibration) -> dict[str, np.ndarray]:
    """The scores of images `idx` as `anomaly-score` gives a surface model's files
    (vaekit.inference.tiled): each score its most anomalous tile's; a pixel-bounded chunk of
    tiles at a time."""
    out: dict[str, list] = {}
    for tiles, counts in iter_whole_tiles(data, idx, CHUNK_PIXELS, engine.info.image_size):
        held = Scored.cat([Scored.of(calibration, p) for p in parts_of(engine, tiles)])
        for k, v in {"atypicality": calibration.score_tests(held.tests), **held.nats}.items():
            out.setdefault(k, []).append(per_image_max(v, counts))
    return {k: np.concatenate(v) for k, v in out.items()}


def _crossfitted(calibration, folds, reference: Scored) -> dict[str, np.ndarray]:
    """The stored statistics from every out-of-sample image; each image's score from statistics
    fitted on the other folds (so no image standardises itself). A fold's rows are its images, or
    a surface's tiles (crossfit_scores): an image's score is then its most anomalous tile's."""
    from vaekit.inference.atypicality import Calibration

    n, rows = sum(len(held) for held, _, _ in folds), sum(len(s.tests) for _, s, _ in folds)
    every = Scored(np.zeros((rows, reference.tests.shape[1])), {k: np.zeros(rows) for k in THRESHOLD_SCORES})
    spans = np.split(np.arange(rows), np.cumsum([len(s.tests) for _, s, _ in folds])[:-1])
    for r, (_, scored, _) in zip(spans, folds):
        every.tests[r] = scored.tests
        for k in THRESHOLD_SCORES:
            every.nats[k][r] = scored.nats[k]
    calibration.fit_tests(every.tests, reference.tests)
    per_row = {"atypicality": np.zeros(rows), **every.nats}
    for r, (_, scored, _) in zip(spans, folds):
        rest = np.setdiff1d(np.arange(rows), r)
        if len(rest):
            other = Calibration(dict(calibration.stats)).fit_tests(every.tests[rest], reference.tests)
            per_row["atypicality"][r] = other.score_tests(scored.tests)
    out = {k: np.zeros(n) for k in per_row}
    for r, (held, _, counts) in zip(spans, folds):
        for k, v in per_row.items():
            out[k][held] = per_image_max(v[r], counts)
    return out


def _at_most(idx: np.ndarray, n: int) -> np.ndarray:
    """An evenly spaced subset of at most n of `idx`."""
    return idx[:: max(1, -(-len(idx) // n))]


PREVIEW_SIDE = 128  # a surface model's preview shows windows this large: a whole 1024 px image
#                   would cost seconds and a 24-megapixel PNG, and a window shows the texture


@torch.no_grad()
def _write_preview(path, model, data, idx, device) -> None:
    """Top: inputs; middle: reconstructions (z = mu); bottom: samples from the prior. A grid model
    (fully convolutional) larger than PREVIEW_SIDE shows the central window of each image."""
    from vaekit import images as imageio

    idx = idx[:8]
    size, z_dims, window, side = None, model.cfg.z_dims, (slice(None), slice(None)), data.images.shape[-1]
    if model.cfg.layout == "grid" and side > PREVIEW_SIDE:
        y0, x0 = ((n - PREVIEW_SIDE) // 2 // 4 * 4 for n in data.images.shape[-2:])  # on the latent grid's 4 px cells
        window, side = (slice(y0, y0 + PREVIEW_SIDE), slice(x0, x0 + PREVIEW_SIDE)), PREVIEW_SIDE
    if side != model.cfg.image_size:  # a window, or a surface cached at its read size
        size, z_dims = (side, side), model.cfg.latent_dim * (-(-side // 4)) ** 2
    x = to_device(torch.from_numpy(np.stack([gather(data.images, idx[j : j + 1])[0][:, window[0], window[1]]
                                             for j in range(len(idx))])), device)
    mu, _ = model.encode(x)
    recon = model.mean_image(model.decode(mu, size))
    g = torch.Generator(device="cpu").manual_seed(0)
    z = torch.randn(len(idx), z_dims, generator=g).to(device)
    samples = model.mean_image(model.decode(z, size))
    rows = torch.cat([x, recon, samples]).float().cpu().numpy()
    imageio.save_png(imageio.make_grid(rows, ncol=len(idx)), path)


def _rel(p: Path, root: Path) -> str:
    try:
        return Path(p).relative_to(root).as_posix()
    except ValueError:
        return str(p)
