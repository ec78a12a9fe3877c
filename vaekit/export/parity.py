"""The parity check: both engines on the same images, every output compared."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from vaekit.errors import VaekitError


class ExportError(VaekitError, RuntimeError):
    """The exported model does not reproduce the torch engine (nothing was written): exit 3."""

    exit_code = 3


@dataclass
class Parity:
    name: str  # what was compared, e.g. "score: neg_elbo"
    max_abs: float  # max |onnx - torch|
    max_rel: float  # max |onnx - torch| / |torch| over values with |torch| > atol
    tolerance: str  # the criterion, for the report
    ok: bool


def sample_inputs(model, n: int = 13, seed: int = 0) -> np.ndarray:
    """uint8 images to compare engines on: the model's own prior samples, noise and flat images.

    Prior samples look like the training data; noise and flat images push the scores far
    from it, where an error in the likelihood maths would show most.
    """
    rng = np.random.default_rng(seed)
    c, s = model.info.channels, model.info.image_size
    k = max(1, n - 4)
    typical = np.rint(model.sample(k, seed=seed) * 255).astype(np.uint8)
    noise = rng.integers(0, 256, (2, c, s, s), dtype=np.uint8)
    flat = np.stack([np.zeros((c, s, s), np.uint8), np.full((c, s, s), 255, np.uint8)])
    return np.concatenate([typical, noise, flat])[:n]


def _compare(name: str, got, want, rtol: float, atol: float, chunk: int = 1 << 20) -> Parity:
    """Parity of one output, `chunk` values at a time: the decoded images of a 1024 px model are
    hundreds of MB, and float64 copies of them all at once took the export past 6 GB."""
    got, want = np.asarray(got), np.asarray(want)
    tolerance = f"|onnx - torch| <= {atol:g} + {rtol:g} * |torch|"
    if got.shape != want.shape:
        return Parity(name, math.inf, math.inf, f"shape {want.shape}", False)
    got, want = got.reshape(-1), want.reshape(-1)
    ok, max_abs, max_rel = True, 0.0, 0.0
    for i in range(0, want.size, chunk):
        g, w = got[i : i + chunk].astype(np.float64), want[i : i + chunk].astype(np.float64)
        diff, scale = np.abs(g - w), np.abs(w)
        ok &= bool(np.all(diff <= atol + rtol * scale))  # NaN fails too
        max_abs = float(np.maximum(max_abs, diff.max()))  # a NaN stays NaN
        big = scale > max(atol, 1e-12)  # relative error means little for values near zero
        if big.any():
            max_rel = max(max_rel, float((diff[big] / scale[big]).max()))
    return Parity(name, max_abs, max_rel, tolerance, ok)


PARITY_PIXELS = 1 << 22  # images compared at a time (4 of 1024 px): memory bounded whatever the model's size


def check_parity(reference, candidate, images: np.ndarray, rtol: float = 1e-4, atol: float = 1e-4) -> list[Parity]:
    """Run both engines through the public API on `images` and compare every output, a chunk of
    at most PARITY_PIXELS at a time (each output's rows merged over the chunks).

    Scores (hundreds to thousands of nats) are judged relatively, per the rtol; the
    small quantities (codes, pixels) mostly by atol.
    """
    per = max(1, PARITY_PIXELS // max(1, images.shape[-2] * images.shape[-1]))
    rows: dict[str, Parity] = {}
    for i in range(0, len(images), per):
        for p in _check_chunk(reference, candidate, images[i : i + per], rtol, atol):
            q = rows.get(p.name)
            rows[p.name] = p if q is None else Parity(p.name, float(np.maximum(q.max_abs, p.max_abs)),
                                                      max(q.max_rel, p.max_rel), p.tolerance, q.ok and p.ok)
    return list(rows.values())


def _check_chunk(reference, candidate, images: np.ndarray, rtol: float, atol: float) -> list[Parity]:
    old = reference.batch_size, candidate.batch_size
    # batches of 4 and a partial last one (1 with the default 13 images): the dynamic batch at work
    reference.batch_size = candidate.batch_size = max(1, min(4, len(images) - 1))
    try:
        rows = []
        mu_t, lv_t = reference.encode(images)
        mu_o, lv_o = candidate.encode(images)
        rows += [_compare("encode: mu", mu_o, mu_t, rtol, atol), _compare("encode: logvar", lv_o, lv_t, rtol, atol)]
        z = np.concatenate([mu_t, np.random.default_rng(1).standard_normal(mu_t.shape, dtype=np.float32)])
        rows.append(_compare("decode: image", candidate.decode(z), reference.decode(z), rtol, atol))
        for samples in (0, 2):
            rows += _compare_scores(reference, candidate, images, samples, rtol, atol)
            if samples == 0 and candidate.has_reader:  # what a copy without NAME.reader.onnx scores
                rows.append(_compare("score: atypicality (√, sd)", *_distances(
                    candidate.score(images, score="atypicality").score, reference.score(images, score="atypicality").score),
                    rtol, atol))
    finally:
        reference.batch_size, candidate.batch_size = old
    return rows


def _compare_scores(reference, candidate, images: np.ndarray, samples: int, rtol: float, atol: float) -> list[Parity]:
    st, so = reference.score(images, samples=samples), candidate.score(images, samples=samples)
    if st.name != so.name and reference.has_reader and not candidate.has_reader:
        # a surface's defect reader stays with the run: the export scores (and says it
        # scores) the VAE's own, which must then match the run's
        st = reference.score(images, samples=samples, score=so.name)
    tag = "score" if samples == 0 else f"score (samples={samples})"
    # a map against its own scale: a surface's map is standardised, and dividing by small
    # spreads turns the engines' float noise into 1e-4 where the map is ~0
    map_scale = max(1.0, float(np.abs(st.pixel_map).max())) if st.pixel_map is not None else 1.0
    first = (_compare(f"{tag}: atypicality (default score; √, sd)", *_distances(so.score, st.score), rtol, atol)
             if st.name == "atypicality" else _compare(f"{tag}: {st.name} (default score)", so.score, st.score, rtol, atol))
    return [first,
            _compare(f"{tag}: neg_elbo", so.neg_elbo, st.neg_elbo, rtol, atol),
            _compare(f"{tag}: recon", so.recon, st.recon, rtol, atol),
            _compare(f"{tag}: kl", so.kl, st.kl, rtol, atol),
            _compare(f"{tag}: pixel_map", so.pixel_map, st.pixel_map, rtol, atol * map_scale)]


def _distances(*scores):
    """The atypicality compared as what it adds up, a distance in standard deviations (its square
    root), not as the squared distance: each test's statistic is standardised by a spread that can
    be small against its mean (a model trained 2 epochs), so the engines' float32 noise in the
    statistic, ~3e-7, came out as 1.1e-4 of a prior sample's 6,827 sd² (0.005 sd), and an export
    whose every ELBO column agreed to 4e-7 was refused."""
    return tuple(np.sqrt(np.maximum(np.asarray(s, dtype=np.float64), 0.0)) for s in scores)


def require_parity(parity: list[Parity], what: str) -> list[Parity]:
    """`parity` when every output is within tolerance; else ExportError naming `what` and each
    output that is not (so that nothing is written)."""
    bad = [p for p in parity if not p.ok]
    if bad:
        lines = "; ".join(f"{p.name} max abs diff {p.max_abs:.3g}, rel {p.max_rel:.3g}" for p in bad)
        raise ExportError(f"{what} does not match torch, nothing written: {lines} (need {bad[0].tolerance})")
    return parity


def load_parity_images(model, inputs, limit: int = 64) -> np.ndarray:
    """Up to `limit` images from files or folders, preprocessed as the model does."""
    from vaekit import images as imageio

    paths = imageio.find_images(inputs)[:limit]
    if not paths:
        raise imageio.NoImagesError(f"no image files found in {inputs}")
    report = imageio.load_images(paths, model.info.image_size, model.info.channels)
    if len(report.images) == 0:
        raise imageio.none_usable(f"in {inputs}", report.skipped)
    return report.images
