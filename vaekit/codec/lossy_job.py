"""The lossy half of `vaekit encode`: a folder onto a .vkc at a quality, chunk by chunk, with the
PSNR its images decode to (vaekit.codec.lossy codes the symbols; vaekit.codec.jobs writes the file)."""

from __future__ import annotations

import numpy as np

from vaekit import stream
from vaekit.codec import lossy
from vaekit.codec.store import decoded
from vaekit.codes.sizes import source_facts

BATCH = 256  # images through the network at a time
PSNR_IMAGES = 1024  # a latents-only encode measures its PSNR on the first this many images


def encode_folder(model, prior, quality, found, header, spill, chunk, progress, errors: list):
    """Every image of `found` onto the archive at `quality`, a chunk at a time: (skipped (path, why),
    source bytes); each image's squared error as the file decodes goes onto `errors` (`mean_psnr`)."""
    skipped, source_bytes, pending, total, done = [], 0, [], len(found.paths), 0
    for b in stream.iter_batches(found.paths, model.info.image_size, model.info.channels, BATCH):
        skipped += b.skipped
        facts = [source_facts(p) for p in b.paths]
        keep = np.array([not isinstance(f, str) for f in facts], dtype=bool)
        skipped += [(p, f) for p, f in zip(b.paths, facts) if isinstance(f, str)]
        if keep.any():
            pending.append((model.encode(b.images[keep])[0], b.images[keep]))
            for i, f in zip(np.asarray(b.positions)[keep], [f for f in facts if not isinstance(f, str)]):
                header.names.append(found.names[i])
                header.orig_size.append(list(f[0]))
                source_bytes += f[1]
        while sum(len(m) for m, _ in pending) >= chunk:
            pending = _flush(model, prior, quality, pending, spill, chunk, errors)
        done += len(b.paths) + len(b.skipped)
        if progress:
            progress(done, total)
    while pending:
        pending = _flush(model, prior, quality, pending, spill, chunk, errors)
    return skipped, source_bytes


def _flush(model, prior, quality, pending, spill, chunk, errors: list):
    """One chunk onto the spill; each of its images' squared error as the file decodes onto `errors`."""
    z, x = np.concatenate([m for m, _ in pending]), np.concatenate([i for _, i in pending])
    sym, z_hat = lossy.latent_symbols(prior, quality, z[:chunk])
    delta = int(prior.deltas[quality - 1])
    # the decoder's pass: for the residual, and for the PSNR (where there is no residual, on the
    # first PSNR_IMAGES images only: that pass would double a latents-only encode's time)
    measured = sum(len(e) for e in errors)
    x_hat = decoded(model, z_hat) if delta or measured < PSNR_IMAGES else None
    res = lossy.residual_symbols(prior, quality, x[:chunk].astype(np.int64) - x_hat) if delta else None
    spill.add(len(sym), lossy.encode_chunk(prior, quality, sym, res))
    if x_hat is not None:
        back = lossy.with_residual(prior, quality, x_hat, res) if delta else x_hat
        errors.append(np.array([np.mean((back[i].astype(np.float64) - x[i]) ** 2) for i in range(len(sym))]))
    return [(z[chunk:], x[chunk:])] if len(z) > chunk else []


def mean_psnr(errors: list) -> tuple[float | None, int, int]:
    """(mean PSNR in dB over the images not decoded exactly, or None; how many are exact; how many
    were measured) from each image's mean squared error in 8-bit levels."""
    mse = np.concatenate(errors) if errors else np.zeros(0)
    inexact = mse[mse > 0]
    psnr = float(np.mean(10 * np.log10(255.0**2 / inexact))) if len(inexact) else None
    return psnr, int(len(mse) - len(inexact)), int(len(mse))
