"""How the defect reader reads large images: its windows against the whole image, and the time.

    python benchmarks/reader_tiles.py [--run RUN] [--sides 1024,1536,2048] [--threads 2] [--repeats 3]

A surface model's reader reads an image whole up to vaekit.reader.score.READ_TILE px a side and a
larger one in overlapping windows (vaekit.reader.score.read_tiled). Before 2026-12-06 the windows
were 256 px overlapping by 64 px (the "fixed 256" arm, reproduced here), so a 1024 px image was
read as 25 windows; now they are the fewest windows of at most 1024 px overlapping by >= 128 px,
on the net's 16 px grid. For each image side the script reads a photo enlarged to it (scikit-image's
gravel, grey) with both and reports the median time of --repeats reads and how far each lies from
reading the image whole in one window (the largest and mean |change| of the defect probability;
"whole" is read only up to 1536 px, where one window still fits in memory comfortably).
The reader: RUN's (a surface run trained with its defect reader), or, without --run, one trained
here for 60 steps on 300 crops of the photo (its logits have real structure; its scores mean nothing).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def fixed_256(run, x: np.ndarray) -> np.ndarray:
    """The reading before 2026-12-06: 256 px windows, a quarter overlapping, tent-blended."""
    b, _, h, w = x.shape
    if max(h, w) <= 256:
        return np.asarray(run(x), dtype=np.float32)
    t = min(256, h, w)
    overlap = t // 4

    def starts(n: int) -> list[int]:
        s = list(range(0, n - t + 1, t - overlap))
        return s if s[-1] == n - t else s + [n - t]

    ramp = np.minimum(np.arange(t) + 1.0, t - np.arange(t, dtype=np.float64))
    weight = ramp[:, None] * ramp[None, :]
    out, total = np.zeros((b, h, w)), np.zeros((h, w))
    for y0 in starts(h):
        for x0 in starts(w):
            out[:, y0:y0 + t, x0:x0 + t] += run(np.ascontiguousarray(x[:, :, y0:y0 + t, x0:x0 + t])) * weight
            total[y0:y0 + t, x0:x0 + t] += weight
    return (out / total).astype(np.float32)


def reader(run_dir: str | None):
    import torch

    from vaekit.reader.net import ReaderConfig
    from vaekit.reader.train import for_reading, load_reader, train_reader

    if run_dir:
        import vaekit

        return for_reading(vaekit.load(run_dir, device="cpu").reader())
    from skimage import data

    img = np.asarray(data.gravel(), np.uint8)
    rng = np.random.default_rng(0)
    crops = np.stack([img[y:y + 64, x:x + 64] for y, x in rng.integers(0, img.shape[0] - 64, (300, 2))])[:, None]
    torch.manual_seed(0)
    return for_reading(load_reader(train_reader(crops, None, ReaderConfig(steps=60), 0)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", default=None)
    ap.add_argument("--sides", default="1024,1536,2048")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import torch
    from skimage import data

    from vaekit.reader.score import READ_TILE, read_tiled

    torch.set_num_threads(args.threads)
    net = reader(args.run)
    photo = np.asarray(data.gravel(), np.float32) / 255.0

    def run(v):
        with torch.inference_mode():
            return net(torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32))).numpy()

    sigmoid = lambda v: 1.0 / (1.0 + np.exp(-v.astype(np.float64)))  # noqa: E731
    print(f"{'side':>6} {'fixed 256 s':>12} {'now s':>8} {'ratio':>6}   {'fixed 256: max / mean |dp|':>28}   {'now: max / mean |dp|':>22}")
    for side in map(int, args.sides.split(",")):
        k = -(-side // photo.shape[0])
        x = np.kron(photo, np.ones((k, k), np.float32))[:side, :side][None, None]
        times = {"fixed": [], "now": []}
        for _ in range(args.repeats):
            for name, fn in (("fixed", lambda: fixed_256(run, x)), ("now", lambda: read_tiled(run, x))):
                t0 = time.perf_counter()
                out = fn()
                times[name].append(time.perf_counter() - t0)
                if name == "fixed":
                    fixed = out
                else:
                    now = out
        tf, tn = statistics.median(times["fixed"]), statistics.median(times["now"])
        cells = ["", ""]
        if side <= 1536:
            whole = sigmoid(read_tiled(run, x, tile=max(side, READ_TILE)))
            cells = [f"{np.abs(sigmoid(v) - whole).max():.4f} / {np.abs(sigmoid(v) - whole).mean():.5f}" for v in (fixed, now)]
        print(f"{side:>6} {tf:>12.2f} {tn:>8.2f} {tf / tn:>6.2f}   {cells[0]:>28}   {cells[1]:>22}", flush=True)


if __name__ == "__main__":
    main()
