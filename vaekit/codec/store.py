"""The lossy codec's tables as a run keeps them: fit them, store them, find the set a .vkc names.

A run's config.json "codec" (and an export's metadata "vaekit.codec") holds the current table
set and, under "earlier", every set it replaced, each with its hash: a refit (`encode --fit`)
never strands the .vkc files coded before it, since `decode` picks the set whose hash the
archive records. Sets are kept once per hash, so refitting on the same images adds nothing.
"""

from __future__ import annotations

import os
import secrets
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Sequence

import numpy as np

from vaekit import images as imageio
from vaekit.codec import container, lossy, residual, tables, transform
from vaekit.codec import prior as priors
from vaekit.errors import BadInput
from vaekit.fileio import refuse_existing
from vaekit.fileio.outputs import put_in_place
from vaekit.images.arrays import check_int

EARLIER = "earlier"  # the key, inside the codec section, of the table sets a refit replaced


def _section(model) -> dict | None:
    """The codec section stored with a model (run config "codec" or ONNX metadata "vaekit.codec")."""
    from vaekit.fileio import loads_json

    section = (getattr(model, "config", None) or {}).get("codec")
    if section is None and getattr(model, "metadata", None) is not None:
        raw = model.metadata.get("vaekit.codec")
        try:
            section = loads_json(raw) if raw and raw != "null" else None
        except ValueError as e:
            raise container.ArchiveError(f"{model.info.source} has damaged entropy-coding tables: {e}") from None
    if section is not None and not (isinstance(section, dict) and isinstance(section.get(EARLIER, []), list)):
        raise container.ArchiveError(f"{model.info.source} has damaged entropy-coding tables: the codec section is "
                                     f"not a JSON object with a list of {EARLIER!r} sets")
    return section


def earlier_hashes(model) -> list[str]:
    """The hashes of the table sets a refit replaced, oldest first ([] for none)."""
    section = _section(model) or {}
    return [str(s.get("hash")) for s in section.get(EARLIER, []) if isinstance(s, dict)]


def stored_prior(model, table_hash: str | None = None) -> priors.Prior | None:
    """The lossy tables stored with a model: the current set, or with `table_hash` the set (current
    or earlier) of that hash; None when there is no such set."""
    section = _section(model)
    if section is None:
        return None
    if table_hash is not None and section.get("hash") != table_hash:
        section = next((s for s in section.get(EARLIER, []) if isinstance(s, dict) and s.get("hash") == table_hash),
                       None)
        if section is None:
            return None
    try:
        prior = priors.from_dict(section, str(model.info.source), model.info.latent_shape)
    except ValueError as e:
        raise container.ArchiveError(str(e)) from None
    if prior.latent_shape != tuple(model.info.latent_shape):
        raise container.ArchiveError(f"{model.info.source} has damaged entropy-coding tables: latent shape "
                                     f"{list(prior.latent_shape)}, but the model's is {list(model.info.latent_shape)}")
    problem = shape_problem(prior, model)
    if problem:
        raise container.ArchiveError(f"{model.info.source} has damaged entropy-coding tables: {problem}")
    if prior.fingerprint != model.info.fingerprint:
        raise container.ArchiveModelMismatch(f"{model.info.source}: its entropy-coding tables were fitted for another "
                                             f"model ({prior.fingerprint}); fit them again")
    return prior


def shape_problem(prior: priors.Prior, model) -> str | None:
    """Why a prior's residual tables cannot code the model's images, or None."""
    shape = (model.info.channels, model.info.image_size, model.info.image_size)
    try:
        for q in np.flatnonzero(prior.deltas) + 1 if prior.transform else ():
            lossy.check_shape(prior, int(q), shape)
    except ValueError as e:
        return str(e)
    return None


RESIDUAL_PIXELS = 2_000 * 32 * 32  # pixels the residual tables are counted on (2,000 images of 32 px)


def fit_prior(model, images: np.ndarray, steps: Sequence[float] | None = None,
              deltas: Sequence[int] | None = None, residual_pixels: int = RESIDUAL_PIXELS,
              residual_coder: str = "auto") -> priors.Prior:
    """Fit the lossy tables on uint8 images (N, C, H, W) of the training domain (the training
    split): the latent tables on all of them, the residual tables on the first images holding
    `residual_pixels` (at least one image; each is decoded once per latent step, and the tables count
    symbols, so it is pixels that make them precise: 2,000 MNIST digits instead of 10,000 cost
    0.1% more bytes and saved 4.6 s of a 190 s training run, docs/codec.md).

    `residual_coder`: "pixel" (vaekit.codec.residual), "dct" (vaekit.codec.transform; images whose
    sides are multiples of 4), or "auto": both are fitted, and the one with more PSNR at equal
    bytes on these images is kept (`dct_wins`)."""
    if residual_coder not in ("auto", "pixel", "dct"):
        raise BadInput(f"invalid residual_coder {residual_coder!r}: expected auto, pixel or dct")
    if len(images) == 0:
        raise BadInput("no image to fit the entropy-coding tables on")
    check_int(residual_pixels, "residual_pixels", 1)  # True is no number of pixels
    mu, logvar = model.encode(images)
    prior = priors.fit(mu, logvar, model.info.latent_shape, model.info.fingerprint, steps, deltas)
    x = np.asarray(images)[: max(1, residual_pixels // int(np.prod(np.shape(images)[2:])))]
    block = 0 if residual_coder == "pixel" else transform.block_of(*x.shape[2:])
    if residual_coder == "dct" and not block:
        raise BadInput(f"the block-DCT residual needs images whose sides are multiples of 4, not {x.shape[2:]}")
    pixel, dct = _residual_fits(model, prior, mu[: len(x)], x, block, pixel=residual_coder != "dct")
    use_dct = bool(dct) and (residual_coder == "dct" or dct_wins([p[1:] for p in pixel], [d[1:] for d in dct]))
    prior.transform = block if use_dct else 0
    fitted = iter(dct if use_dct else pixel)
    for q, delta in enumerate(prior.deltas, start=1):
        if delta:
            prior.residual[q - 1] = next(fitted)[0]
    return prior


def _residual_fits(model, prior: priors.Prior, mu: np.ndarray, x: np.ndarray, block: int, pixel: bool):
    """Each residual coder fitted on the images x at each quality that has a residual step:
    ([(tables, bits per image, PSNR)] of the pixel coder (if `pixel`), the same of the DCT (if `block`))."""
    pixels, dct = [], []
    seen: dict[float, tuple] = {}  # latent step -> (x_hat, residual, its DCT): qualities 4-8 share one
    for q, delta in ((q, int(d)) for q, d in enumerate(prior.deltas, start=1) if d):
        step = float(prior.steps[q - 1])
        if step not in seen:
            x_hat = decoded(model, lossy.latent_symbols(prior, q, mu)[1])
            r = x.astype(np.int64) - x_hat
            seen = {step: (x_hat, r, transform.coefficients(r, block) if block else None)}
        x_hat, r, co = seen[step]
        if pixel:
            pixels.append(_fitted(residual, residual.quantise(r, delta), x, x_hat, delta))
        if block:
            dct.append(_fitted(transform, transform.quantise_coefficients(co, delta), x, x_hat, delta))
    return pixels, dct


def _fitted(coder, sym: np.ndarray, x: np.ndarray, x_hat: np.ndarray, delta: int) -> tuple[np.ndarray, float, float]:
    """(tables, bits per image, mean PSNR) of a residual coder on the images it is fitted on. The
    bits are cross-fitted: each half of the images coded with the tables counted on the other, so
    a coder with more table rows (the DCT's 252 to 1,620 against the pixel coder's 9) gains nothing
    from tables that fit their own images, which a run of few images would show."""
    count = transform.counts if coder is transform else partial(residual.counts, delta=delta)
    smooth = residual.SMOOTHING
    half = len(sym) // 2
    if half:
        (a, extra_a), (b, extra_b) = count(sym[:half]), count(sym[half:])
        bits = extra_a + extra_b + float((b * tables.code_lengths(tables.quantise(a + smooth))).sum()
                                         + (a * tables.code_lengths(tables.quantise(b + smooth))).sum())
    else:  # one image (a model of 1024 px or more fits on one): nothing to hold out; its own tables
        (a, bits), b = count(sym), 0
        bits += float((a * tables.code_lengths(tables.quantise(a + smooth))).sum())
    out = transform.reconstruct(x_hat, sym, delta) if coder is transform else residual.reconstruct(x_hat, sym, delta)
    mse = ((out.astype(np.float64) - x) ** 2).reshape(len(x), -1).mean(1)
    return tables.quantise(a + b + smooth), bits / len(x), float(np.mean(10 * np.log10(255.0**2 / np.maximum(mse, 1e-10))))


def dct_wins(pixel: list[tuple[float, float]], dct: list[tuple[float, float]]) -> bool:
    """Whether the block-DCT residual gives more PSNR at equal bytes than the pixel residual
    ((bits, PSNR) per quality, on the fitting images): the mean PSNR margin of the DCT over the
    points of either curve that fall within the other's range of bytes. Where fewer than two
    points do (the curves lie apart), the DCT wins if it reaches the pixel coder's lowest PSNR in
    fewer bits than the pixel coder's smallest point, i.e. if its curve lies wholly to the left."""
    pb, pp = np.array(sorted(pixel)).T
    db, dp = np.array(sorted(dct)).T
    margins = [float(np.interp(b, db, dp)) - p for b, p in zip(pb, pp) if db[0] <= b <= db[-1]]
    margins += [p - float(np.interp(b, pb, pp)) for b, p in zip(db, dp) if pb[0] <= b <= pb[-1]]
    if len(margins) >= 2:
        return float(np.mean(margins)) > 0
    return bool(db[-1] < pb[0] and dp[-1] >= pp.min())


def decoded(model, z: np.ndarray) -> np.ndarray:
    """The decoder's reconstruction of latents in 8 bits: what the residual is measured from."""
    return imageio.to_uint8(model.decode(z)).astype(np.int64)


def with_earlier(new: dict, old) -> dict:
    """The codec section `new`, keeping `old`'s current and earlier table sets (once per hash,
    oldest first) under EARLIER, so that .vkc files coded with them still decode. Sets of another
    model fingerprint are dropped: the files they coded are of weights the run no longer has, and
    decode refuses them by the fingerprint in their header before any table is looked at."""
    if not isinstance(old, dict):
        return new
    sets = [*(old.get(EARLIER) if isinstance(old.get(EARLIER), list) else []),
            {k: v for k, v in old.items() if k != EARLIER}]
    earlier, seen = [], {new.get("hash")}
    for s in sets:
        if isinstance(s, dict) and s.get("hash") not in seen and s.get("fingerprint") == new.get("fingerprint"):
            seen.add(s.get("hash"))
            earlier.append(s)
    return {**new, EARLIER: earlier} if earlier else new


def check_fit_target(run_dir: str | Path) -> None:
    """BadInput when `run_dir` is a run whose training stopped before its finish: the finish
    fits and stores its own tables in their place, and files coded with these would decode no more."""
    from vaekit.training import rundir

    stopped = rundir.stopped_before_finish(Path(run_dir), rundir.read_config(Path(run_dir)))
    if stopped:
        raise BadInput(stopped)


@contextmanager
def staged_for_fit(target: str | Path, prior: priors.Prior | None, run_dir: str | Path, model=None,
                   overwrite: bool = False):
    """Where to encode a file coded with new tables `prior` (`encode --fit`): a hidden name of its
    own beside `target`. After the block the tables are stored in the run (save_prior), and only
    then does the file take `target`'s place: a refused encode changes nothing, and a failed store
    (the run locked by another command) leaves the run and a file at `target` that --overwrite
    would replace as they were, with nothing of the new file left; without `overwrite`, a file put
    at `target` while this one was coded is refused, not replaced (one put there while the tables
    were stored, too: they stay stored, beside the earlier ones, which still decode their files).
    Without new tables: `target` itself, nothing after."""
    target = Path(target)
    if prior is None:
        yield target
        return
    staged = target.with_name(f".vaekit-fit-{os.getpid()}-{secrets.token_hex(4)}.vkc")  # short: any target name fits
    try:
        yield staged
        refuse_existing(target, overwrite)
        save_prior(run_dir, prior, model)
        put_in_place(staged, target, overwrite)  # not onto a file put there while the tables were stored
    except BaseException:
        staged.unlink(missing_ok=True)  # its tables are nowhere: it would decode nothing
        raise


def save_prior(run_dir: str | Path, prior: priors.Prior, model=None) -> None:
    """Store the tables in the run's config.json ("codec"), under the run's lock, keeping the sets
    they replace (with_earlier); `vaekit export` then carries them into the ONNX metadata.
    `model`, if given, sees them at once."""
    from vaekit.training import rundir
    from vaekit.training.runlock import locked

    with locked(Path(run_dir), hint="another vaekit command is writing it; run encode --fit again when it is done",
                what="the run"):
        check_fit_target(run_dir)
        cfg = rundir.read_config(Path(run_dir))
        if cfg.get("fingerprint") not in (None, prior.fingerprint):
            raise BadInput(f"these tables are for model {prior.fingerprint}, not the run in {run_dir}")
        cfg["codec"] = with_earlier(priors.to_dict(prior), cfg.get("codec"))
        rundir.write_config(Path(run_dir), cfg)
    if model is not None and isinstance(getattr(model, "config", None), dict):
        model.config["codec"] = cfg["codec"]
