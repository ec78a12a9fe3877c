"""Fitting an archive's pixel model: the hand-binned context model or the learned one, by measurement.

`choose` fits vaekit.codec.fitted's context model as before and, where the archive is large enough
to carry a network's header and the model runs on torch (the onnxruntime engine never imports it,
and keeps the context model), trains vaekit.codec.learned's network on a sample of the first images' sub-pixels; it
keeps whichever codes a held-out sample of those sub-pixels in fewer bits, the header's bytes
included over the archive's expected size. Torch only trains; both models code in numpy.
"""

from __future__ import annotations

import math

import numpy as np

from vaekit.codec import colour, fitted, header, learned, tables
from vaekit.model.likelihood_np import LEVELS, LOGISTIC_LOG_SCALE_BOUNDS


def choose(likelihood: str, images: list[np.ndarray], mean_images: list[np.ndarray], expected_subpixels: int,
           torch: bool = True):
    """The pixel model an archive of about `expected_subpixels` sub-pixels codes with, fitted to
    `images` (uint8 (C, H, W)) and their decoder means (float64, same shape); `torch`: whether
    torch may train a network (False on the onnxruntime engine). Colour images are also fitted as
    G, R - G, B - G (vaekit.codec.colour), and coded so where that measures smaller on the same
    held-out sub-pixels, its header's extra bytes included over the archive's expected size."""
    plain = _choose(likelihood, images, mean_images, expected_subpixels, torch)
    held, _ = _positions(images)
    if images[0].shape[0] != 3 or not len(held):
        return plain
    xs, ms = [colour.forward(x) for x in images], [colour.mean(m) for m in mean_images]
    green = colour.Green(_choose(likelihood, xs, ms, expected_subpixels, torch))
    saving = (_bits(plain, images, mean_images, held) - _bits(green.inner, xs, ms, held)) * expected_subpixels
    extra = 8 * (header.stored_bytes(green.to_json()) - header.stored_bytes(plain.to_json()))
    return green if saving > extra else plain


def _choose(likelihood: str, images: list[np.ndarray], mean_images: list[np.ndarray], expected_subpixels: int,
            torch: bool) -> "fitted.PixelModel | learned.LearnedPixels":
    """The context model, or the network where it measures smaller, for the images as given."""
    context = fitted.fit(likelihood, images, mean_images)
    if expected_subpixels < learned.MIN_ARCHIVE or not torch:
        return context
    held, train = _positions(images)
    if len(held) < learned.MIN_HELD or len(train) < 10 * learned.BATCH:
        return context
    f, mean, level = _sample(images, mean_images, train)
    net = learned.LearnedPixels(likelihood, _train(f, mean, level, images[0].shape[0]))
    saving = (_bits(context, images, mean_images, held) - _bits(net, images, mean_images, held)) * expected_subpixels
    # as the header stores them, compressed: the context model's JSON of rounded numbers shrinks to a
    # fifth, the network's base64 to three quarters (uncompressed, a 3-channel network looked smaller)
    extra = 8 * (header.stored_bytes(net.to_json()) - header.stored_bytes(context.to_json()))
    return net if saving > extra else context


def _positions(images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint random (image, pixel) pairs, seeded: the held-out ones (an eighth, at most HELD_OUT)
    and the training ones (at most FIT_SUBPIXELS sub-pixels), each sorted."""
    c, h, w = images[0].shape
    every = len(images) * h * w
    order = np.random.default_rng(0).permutation(every)
    n_held = min(learned.HELD_OUT // c, every // 8)
    held = np.sort(order[:n_held])
    train = np.sort(order[n_held:n_held + learned.FIT_SUBPIXELS // c])
    return held, train


def _by_image(pairs: np.ndarray, images: list[np.ndarray]):
    """(index, rows, cols) of each image's pixels among `pairs` (flat image * H * W + pixel)."""
    _, h, w = images[0].shape
    which, pixel = np.divmod(pairs, h * w)
    for k in np.unique(which):
        rows, cols = np.divmod(pixel[which == k], w)
        yield int(k), rows, cols


def _sample(images, mean_images, pairs):
    """The training sample: features (N, width) float32 (~200 bytes a sub-pixel, N at most
    FIT_SUBPIXELS), decoder means (N,), levels (N,), channel-major per image."""
    parts = [(learned.features(images[k], mean_images[k], r, c).astype(np.float32), mean_images[k][:, r, c].ravel(),
              images[k][:, r, c].ravel()) for k, r, c in _by_image(pairs, images)]
    return tuple(np.concatenate(p) for p in zip(*parts))


def _bits(model, images, mean_images, pairs) -> float:
    """The mean code length in bits of the sub-pixels `pairs` under a pixel model's quantised tables."""
    total, n = 0.0, 0
    for k, rows, cols in _by_image(pairs, images):
        x = images[k]
        total += float(tables.bits(model.tables(x, mean_images[k], rows, cols), x[:, rows, cols].ravel()).sum())
        n += x.shape[0] * len(rows)
    return total / n


def _train(f: np.ndarray, mean: np.ndarray, level: np.ndarray, channels: int) -> list[np.ndarray]:
    """The network's arrays, as float64 copies of their float16 values: Adam with a one-cycle
    learning rate on minibatches of the sample, seeded, on the caller's torch thread count."""
    import torch

    gen = torch.Generator().manual_seed(0)
    shapes = learned.shapes(channels)
    with torch.random.fork_rng(devices=[]):  # the layers' initial weights, seeded; the caller's CPU
        torch.random.default_generator.manual_seed(0)  # stream restored after, no GPU's reseeded
        net = torch.nn.Sequential(torch.nn.Linear(shapes[0][1], learned.HIDDEN), torch.nn.Tanh(),
                                  torch.nn.Linear(learned.HIDDEN, learned.HIDDEN), torch.nn.Tanh(),
                                  torch.nn.Linear(learned.HIDDEN, 4))
    f, mean = (torch.from_numpy(np.ascontiguousarray(a, np.float32)) for a in (f, mean))
    level = torch.from_numpy(level.astype(np.int64))
    opt = torch.optim.Adam(net.parameters(), learned.LR)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, learned.LR, total_steps=learned.STEPS, pct_start=0.1)
    for _ in range(learned.STEPS):
        pick = torch.randint(0, len(f), (learned.BATCH,), generator=gen)
        loss = _nll(net(f[pick]), mean[pick], level[pick])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    arrays = [p.detach().numpy() for p in net.parameters()]
    return [a.astype(np.float16).astype(np.float64) for a in arrays]


def _nll(out, mean, level):
    """The mean negative log-likelihood (nats) of `distribution`'s, computed stably in log space."""
    import torch
    from torch.nn.functional import logsigmoid

    centre = mean + learned.SHIFT * out[:, 0]
    scale = out[:, 1].clamp(*LOGISTIC_LOG_SCALE_BOUNDS).exp()
    logits = torch.stack([out[:, 2], out[:, 3], torch.zeros_like(out[:, 2])], 1).log_softmax(1)
    x, half = level / (LEVELS - 1), 0.5 / (LEVELS - 1)
    hi, lo = (x + half - centre) / scale, (x - half - centre) / scale
    # log(sigmoid(hi) - sigmoid(lo)) = log sigmoid(hi) + log sigmoid(-lo) + log(1 - e^(lo - hi))
    middle = logsigmoid(hi) + logsigmoid(-lo) + torch.log1p(-torch.exp(lo - hi).clamp(max=1 - 1e-7))
    inner = torch.where(level <= 1, logsigmoid(hi), torch.where(level >= LEVELS - 2, logsigmoid(-lo), middle))
    logp = torch.where(level == 0, logits[:, 0], torch.where(level == LEVELS - 1, logits[:, 1], logits[:, 2] + inner))
    return -logp.mean() / math.log(2)
