"""The lossless half of `vaekit encode`: a folder onto a bits-back archive, image by image.

Every image is read as stored (a file whose pixels would not come back byte for byte is skipped
and named), coded one at a time on the canonical torch thread count (vaekit.codec.net) in chunks
(vaekit.codec.bitsback). A logistic model codes pixels with its own likelihood; a Gaussian or
Bernoulli model with a pixel model fitted to the archive's first images (vaekit.codec.fitted's
context model, or vaekit.codec.learned's network where it measures smaller), which the header
carries for the decoder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vaekit import images as imageio
from vaekit.codec import bitsback, colour, container, fitted, learned, learned_fit
from vaekit.codec.net import CANONICAL_THREADS, Net
from vaekit.codes.sizes import source_facts


def encode_folder(model, found, header, spill, chunk, progress) -> tuple[list, int]:
    """Every image of `found` onto the archive, chunk by chunk: (skipped (path, why), source bytes)."""
    net = Net(model)
    with net.pinned(CANONICAL_THREADS):  # not --threads: the decoder must see the same floats (net.py)
        header.engine = net.describe()
        return _encode_images(net, found, header, spill, chunk, progress)


def _encode_images(net, found, header, spill, chunk, progress):
    """Only files whose stored pixels come back byte for byte, of the model's size; others skipped, named."""
    info = net.model.info
    want = (info.channels, info.image_size, info.image_size)
    skipped, source_bytes, batch, total = [], 0, [], len(found.paths)
    for k, (path, name) in enumerate(zip(found.paths, found.names)):
        try:
            inexact = imageio.not_exact(path, info.channels)  # only pixels that come back byte for byte
            if inexact:
                skipped.append((path, inexact))
                continue
            shown = _shown_size(path)  # from the header: a 9400 px file is not decoded to be refused
            if shown == (want[2], want[1]):
                x = np.ascontiguousarray(imageio.decode(path, info.channels).transpose(2, 0, 1))  # (C, H, W) as stored
                shown = (x.shape[2], x.shape[1])
        except imageio.ImageReadError as e:
            skipped.append((path, e.reason))
            continue
        if shown != (want[2], want[1]):  # skipped and named, as every file it cannot hold exactly; the others go on
            skipped.append((path, f"{shown[0]}x{shown[1]} pixels; a lossless archive holds images of exactly "
                                  f"the model's size, {want[2]}x{want[1]}"))
            continue
        facts = source_facts(path)
        if isinstance(facts, str):
            skipped.append((path, facts))
            continue
        batch.append(x)
        header.names.append(name)
        header.orig_size.append([want[1], want[2]])
        source_bytes += facts[1]
        if len(batch) == chunk:  # the archive's size: the images kept so far and the files not read yet
            _code_chunk(net, batch, spill, header, (len(header.names) + total - k - 1) * int(np.prod(want)), progress)
            batch = []
        if progress:
            progress(k + 1, total)
    if batch:
        _code_chunk(net, batch, spill, header, len(header.names) * int(np.prod(want)), progress)
    return skipped, source_bytes


def _shown_size(path) -> tuple[int, int]:
    """(width, height) from the file's header; ImageReadError where it cannot be read (it was,
    a moment ago, by not_exact: a file replaced since)."""
    try:
        return imageio.file_shown_size(path)
    except imageio.ImageReadError:
        raise
    except (OSError, ValueError) as e:
        raise imageio.ImageReadError(path, f"unreadable: {e}") from None


def _code_chunk(net, batch, spill, header, expected_subpixels: int, progress=None) -> None:
    """One chunk onto the archive; the first one of a model without a logistic likelihood fits its
    pixel model first (vaekit.codec.learned_fit.choose: the context model or the learned one, for an
    archive of about `expected_subpixels`), which the header keeps for the decoder: on the chunk's
    first FIT_IMAGES, fewer where the chunk is smaller (its bound on sub-pixels bounds the fit's memory).
    progress (if any) hears phase "fit" before and after that fit, and phase "code" with the images
    coded so far before and after the chunk, so that a front end does not sit on the reading's 100%."""
    likelihood = net.model.info.likelihood
    coded = len(header.names) - len(batch)
    if net.pixels is None and likelihood != "logistic":
        if progress:
            progress(0, 1, phase="fit")
        fit_on = batch[:fitted.FIT_IMAGES]
        rng = np.random.default_rng(0)  # the decoder's means at a posterior draw, as bits-back codes with
        # (not at its mean: -1 % on product photos and on MNIST, docs/codec.md); seeded, so one folder one archive
        net.pixels = learned_fit.choose(likelihood, fit_on, [net.sampled_mean_image(x, rng) for x in fit_on],
                                        expected_subpixels, torch=net.engine == "torch")
        header.engine["pixels"] = net.pixels.to_json()
        if progress:
            progress(1, 1, phase="fit")
    if progress:
        progress(coded, None, phase="code")
    spill.add(len(batch), bitsback.encode_chunk(net, batch)[0])
    if progress:
        progress(coded + len(batch), None, phase="code")


def pixel_model_name(header: container.Header) -> str:
    """What codes a written archive's pixels: "model" (a logistic model's own likelihood), "fitted"
    (the context model) or "learned" (the network), "+ subtract-green" where colour is coded as
    G, R - G, B - G (vaekit.codec.colour)."""
    pixels = header.engine.get("pixels")
    if pixels is None:
        return "model"
    green = pixels.get("kind") == colour.KIND
    pixels = pixels.get("inner", {}) if green else pixels
    return ("learned" if pixels.get("kind") == learned.KIND else "fitted") + (" + subtract-green" if green else "")


def pixel_model(header: container.Header, model, archive: Path):
    """The fitted pixel model (context or learned) a lossless archive of a Gaussian or Bernoulli model carries."""
    info = model.info
    if info.likelihood == "logistic":
        return None
    try:
        return learned.from_json(header.engine.get("pixels"), info.likelihood, info.channels)
    except ValueError as e:
        raise container.ArchiveError(f"{archive} is damaged or foreign: {e}") from None
