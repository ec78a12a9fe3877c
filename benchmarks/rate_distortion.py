"""vaekit's codec beside JPEG, WebP and AVIF (rate-distortion) and beside PNG, WebP, bz2, xz (lossless).

    .venv/bin/python benchmarks/rate_distortion.py RUN --mnist ../shared/data/mnist.npz [--n 2000] [--out benchmarks/out]
    .venv/bin/python benchmarks/rate_distortion.py RUN --folder held_out/ [--fit train/]

RUN is a trained run directory (lossless: any likelihood, docs/codec.md). Held-out images: the MNIST
test set (--mnist) or any folder (--folder, at the model's size). The lossy tables are the run's
own; with --fit (a folder, or the MNIST training set with --mnist) they are fitted again first.

Every per-image codec writes one file per image, its header included, because that is what a
user stores; vaekit's bytes are the .vkc of the whole set over the images (its header, names and
checksum included), and the mean size of a .vkc holding just one image (the first --single ones).
PSNR is the mean over images of vaekit.quality.psnr on the 8-bit pixels. Lossless: bits per sub-pixel of the set, header included.
Prints markdown tables and writes the curve as a PNG plot (matplotlib, Agg).
"""

from __future__ import annotations

import argparse
import bz2
import io
import lzma
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

PILLOW = {"JPEG": range(1, 96, 6), "WebP": range(0, 101, 5), "AVIF": range(0, 101, 6)}


def write_folder(x: np.ndarray, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(x):
        Image.fromarray(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)).save(folder / f"{i:05d}.png")
    return folder


def psnr(x: np.ndarray, y: np.ndarray) -> float:
    from vaekit.images import quality

    return float(np.mean(np.minimum(quality.psnr(x, y), 100.0)))  # an exact image counts 100 dB, not +inf


def pillow_point(x: np.ndarray, fmt: str, q: int, **kw) -> tuple[float, np.ndarray]:
    """Each (C, H, W) uint8 image as its own file (vaekit.codec.compare): (mean bytes, decoded images)."""
    from vaekit.codec.compare import pillow_file

    files = [pillow_file(img, fmt, q, **kw) for img in x]
    return float(np.mean([n for n, _ in files])), np.stack([dec for _, dec in files])


def vaekit_curve(model, folder: Path, x: np.ndarray, work: Path, single: int) -> tuple[list, list]:
    """(quality, bytes/img of the set's .vkc, PSNR) per quality; and (mean bytes, PSNR) of the
    first `single` images each coded alone in its own .vkc (what one image costs as one file)."""
    from vaekit import codec
    from vaekit.codec import prior

    rows, alone = [], []
    names = sorted(f"{i:05d}.png" for i in range(len(x)))
    order = [int(n[:5]) for n in names]
    ones = [write_folder(x[i : i + 1], work / f"one{i}") for i in range(min(single, len(x)))]
    for q in prior.QUALITIES:
        r = codec.encode(model, folder, work / f"q{q}.vkc", quality=q, overwrite=True)
        d = codec.decode(model, r.path, work / f"dq{q}", overwrite=True)
        y = np.stack([np.asarray(Image.open(p)) for p in d.written])
        y = y[:, None] if y.ndim == 3 else y.transpose(0, 3, 1, 2)
        rows.append((q, r.bytes_per_image, psnr(x[order], y)))
        sizes = [codec.encode(model, f, work / f"one{q}.vkc", quality=q, overwrite=True).file_bytes for f in ones]
        first = [order.index(i) for i in range(len(ones))]
        alone.append((float(np.mean(sizes)), psnr(x[: len(ones)], y[first])))
    return rows, alone


def lossless_table(model, folder: Path, x: np.ndarray, work: Path) -> list[tuple[str, float, str]]:
    from vaekit import codec

    dims = x[0].size * len(x)
    rows = []
    for name, fmt, kw in (("PNG (optimize)", "PNG", {"optimize": True}), ("WebP lossless", "WebP", {"lossless": True, "quality": 100, "method": 6})):
        total = 0
        for img in x:
            buf = io.BytesIO()
            Image.fromarray(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)).save(buf, format=fmt, **kw)
            total += buf.tell()
        rows.append((name, 8 * total / dims, "one file per image"))
    raw = np.ascontiguousarray(x).tobytes()
    rows.append(("bz2 -9 (whole set)", 8 * len(bz2.compress(raw, 9)) / dims, "raw pixels, one stream"))
    rows.append(("xz -9e (whole set)", 8 * len(lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME)) / dims, "raw pixels, one stream"))
    t = time.perf_counter()
    r = codec.encode(model, folder, work / "lossless.vkc", lossless=True, overwrite=True)
    te = time.perf_counter() - t
    d = codec.decode(model, r.path, work / "restored", overwrite=True)
    exact = all(np.array_equal(np.asarray(Image.open(p)), np.asarray(Image.open(folder / p.name))) for p in d.written)
    note = f"{r.pixel_model} pixel model; "  # a Gaussian's or Bernoulli's -ELBO is no code length of 8-bit pixels
    if model.info.likelihood == "logistic":
        elbo = model.score(x, samples=4, score="neg_elbo", maps=False).bits_per_dim.mean()
        note = f"-ELBO (4 draws) {elbo:.4f}; cost/ELBO {r.bits_per_dim / elbo:.4f}; "
    rows.append(("vaekit bits-back", r.bits_per_dim, f"{note}header {r.header_bytes} B; encode {te:.0f} s, "
                 f"decode {d.seconds:.0f} s; {'every pixel exact' if exact else 'NOT EXACT'}"))
    return rows


def throughput(model, folder: Path, n: int, work: Path) -> tuple[float, float]:
    """Images per second of encode + decode: vaekit lossy (quality 4) and the q8 code files."""
    from vaekit import codec, codes

    t = time.perf_counter()
    r = codec.encode(model, folder, work / "speed.vkc", quality=4, overwrite=True)
    codec.decode(model, r.path, work / "speed_vkc", overwrite=True)
    vkc = n / (time.perf_counter() - t)
    t = time.perf_counter()
    rep = codes.encode_folder(model, folder, work / "speed.codes", "q8", overwrite=True)
    codes.decode_file(model, rep.path, work / "speed_q8", overwrite=True)
    return vkc, n / (time.perf_counter() - t)


def plot(path: Path, curves: dict, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for name, pts in curves.items():
        pts = sorted(pts)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="*" if "vaekit" in name else ".", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("bytes per image (header included)")
    ax.set_ylabel("PSNR (dB)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def load_data(args, model) -> tuple[np.ndarray, np.ndarray | None]:
    """(held-out uint8 (N, C, H, W), images to fit the tables on or None)."""
    if args.mnist:
        d = np.load(args.mnist)
        fit = d["xtr"][:, None] if args.fit else None
        return d["xte"][: args.n, None], fit
    held = model.load_images(args.folder).images[: args.n]
    return held, (model.load_images(args.fit).images if args.fit else None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path, help="trained run directory")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--mnist", type=Path, help="mnist.npz (xte held out; xtr fits the tables with --fit)")
    src.add_argument("--folder", type=Path, help="a folder of held-out images")
    ap.add_argument("--fit", nargs="?", const=True, default=None, help="fit the tables again (on this folder, or xtr)")
    ap.add_argument("--n", type=int, default=2000, help="held-out images for the curve")
    ap.add_argument("--lossless-n", type=int, default=0, help="images in the lossless table (default: --n)")
    ap.add_argument("--single", type=int, default=100, help="images also coded one per .vkc file")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    import vaekit
    from vaekit import codec

    torch.set_num_threads(args.threads)
    model = vaekit.load(args.run)
    x, fit = load_data(args, model)
    if fit is not None:
        codec.save_prior(args.run, codec.fit_prior(model, fit), model)
    work = Path(tempfile.mkdtemp(prefix="vaekit-rd-"))
    folder = write_folder(x, work / "held_out")
    t0 = time.perf_counter()
    rows, alone = vaekit_curve(model, folder, x, work, args.single)
    curves = {"vaekit (.vkc of the set)": [(b, p) for _, b, p in rows],
              f"vaekit (one .vkc per image, first {min(args.single, len(x))})": alone}
    print(f"## Lossy, {len(x)} held-out images {x.shape[1]}x{x.shape[2]}x{x.shape[3]}, model {model.info.fingerprint} "
          f"({model.info.likelihood}, latent {model.info.latent_shape})\n")
    print("| codec | setting | bytes/image | PSNR dB |\n|---|---|---|---|")
    for q, b, p in rows:
        print(f"| vaekit | quality {q} | {b:.1f} (alone: {alone[q - 1][0]:.1f} B, {alone[q - 1][1]:.2f} dB) | {p:.2f} |")
    for fmt, qualities in PILLOW.items():
        pts = []
        for q in qualities:
            b, y = pillow_point(x, fmt, q)
            pts.append((b, psnr(x, y)))
            print(f"| {fmt} | quality {q} | {b:.1f} | {pts[-1][1]:.2f} |")
        curves[fmt] = pts
    print(f"\nplot: {plot(args.out / 'rate_distortion.png', curves, f'{len(x)} held-out images')}  ({time.perf_counter() - t0:.0f} s)")
    lx = x if not args.lossless_n else load_data(argparse.Namespace(**{**vars(args), "n": args.lossless_n}), model)[0]
    lfolder = folder if lx is x else write_folder(lx, work / "lossless_set")
    print(f"\n## Lossless, {len(lx)} images, bits per sub-pixel (header included)\n")
    print("| codec | bits/dim | note |\n|---|---|---|")
    for name, bpd, note in lossless_table(model, lfolder, lx, work):
        print(f"| {name} | {bpd:.4f} | {note} |")
    vkc, q8 = throughput(model, folder, len(x), work)
    print(f"\nthroughput, encode + decode of {len(x)} images, {args.threads} thread(s): .vkc quality 4 {vkc:.0f} img/s, "
          f"q8 code files {q8:.0f} img/s (ratio {vkc / q8:.2f}); load average {os.getloadavg()[0]:.1f}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
