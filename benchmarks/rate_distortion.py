"""Rate-distortion of vaekit's latent codes on held-out digits, next to PCA, JPEG and WebP.

    .venv/bin/python benchmarks/rate_distortion.py [--out benchmarks/out] [--epochs 30] [--latent-dim 8]

Trains a VAE on the built-in digits (all ten classes, 80% of each), then compresses the held-out
20% with vaekit's code files at q8, f16 and f32, and compares, at the same bytes per image:
  PCA (scikit-learn), fitted on the same training images, with the same number of components,
  each quantised to 8 bits exactly as vaekit's q8 codes are (per-dimension scale and offset);
  JPEG and WebP (Pillow) at the quality whose mean file size is closest to vaekit's q8 file.
Every method compresses the same pixels (the model's preprocessed image_size² images), and
PSNR / SSIM come from vaekit.quality. Prints one table and saves a plot (matplotlib, Agg).

Bytes per image: "payload" is the codes plus the quantisation parameters shared out over the
images; "file" is the whole code file (its JSON header holds every image's name) over the images.
"""

from __future__ import annotations

import argparse
import io
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def digits_split(root: Path, size: int) -> tuple[Path, Path]:
    """train/ and test/ holding all ten digit classes (write_digits' own 80/20 split per class)."""
    from vaekit.sample_data import write_digits

    train, test = root / "train", root / "test"
    for k in range(10):
        write_digits(root / f"class{k}", normal=k, size=size, n_anomalous=1)
        for sub, dst in (("train", train), ("test/normal", test)):
            dst.mkdir(parents=True, exist_ok=True)
            for p in sorted((root / f"class{k}" / sub).glob("*.png")):
                p.replace(dst / p.name)
        shutil.rmtree(root / f"class{k}")
    return train, test


def metrics(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    from vaekit import quality

    return float(quality.psnr(x, y).mean()), float(quality.ssim(x, y).mean())


def pca_q8(train: np.ndarray, test: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    """PCA with k components, each quantised to 8 bits like vaekit's q8; (reconstructions, payload B/img)."""
    from sklearn.decomposition import PCA

    from vaekit import codes
    from vaekit.images import to_uint8

    n, shape = len(test), test.shape
    pca = PCA(k, random_state=0).fit(train.reshape(len(train), -1) / 255.0)
    s = pca.transform(test.reshape(n, -1) / 255.0).astype(np.float32)
    c, scale, offset = codes.quantize(s, "q8")
    x_hat = pca.inverse_transform(offset + scale * c.astype(np.float32)).reshape(shape)
    return to_uint8(x_hat), (c.nbytes + scale.nbytes + offset.nbytes) / n


def pillow_codec(x: np.ndarray, fmt: str, quality: int) -> tuple[np.ndarray, float]:
    """Encode each (C, H, W) uint8 image with Pillow; (decoded images, mean file bytes)."""
    out, sizes = [], []
    for img in x:
        buf = io.BytesIO()
        pil = Image.fromarray(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0))
        pil.save(buf, format=fmt, quality=quality)
        sizes.append(buf.tell())
        dec = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert(pil.mode))
        out.append(dec[None] if dec.ndim == 2 else dec.transpose(2, 0, 1))
    return np.stack(out), float(np.mean(sizes))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/out"), help="folder for the plot")
    ap.add_argument("--image-size", type=int, default=16)
    ap.add_argument("--latent-dim", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (few: the machine is shared)")
    ap.add_argument("--workdir", type=Path, default=None, help="keep data and run here (default: a temp folder)")
    args = ap.parse_args()

    import torch

    import vaekit
    from vaekit import codes
    from vaekit.config import ModelConfig, TrainConfig
    from vaekit.images import to_uint8
    from vaekit.train import train as fit_folder

    torch.set_num_threads(args.threads)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="vaekit-rd-"))
    t0 = time.perf_counter()
    train_dir, test_dir = digits_split(work / "digits", args.image_size)
    cfg = ModelConfig(image_size=args.image_size, channels=1, latent_dim=args.latent_dim, base_channels=16,
                      likelihood="bernoulli")
    fit_folder(train_dir, work / "run", cfg, TrainConfig(epochs=args.epochs, lr=2e-3, device="cpu"), cache_dir=work / "cache")
    t_train = time.perf_counter() - t0
    model = vaekit.load(work / "run")
    x_train = model.load_images(train_dir).images
    x = model.load_images(test_dir).images
    n, d = len(x), model.info.latent_dim

    rows = []  # (method, setting, payload B/img, file B/img, psnr, ssim)
    for p in ("q8", "f16", "f32"):
        rep = codes.encode_folder(model, test_dir, work / f"{p}.codes", p, overwrite=True)
        cf = codes.load(rep.path)
        payload = (cf.codes.nbytes + sum(a.nbytes for a in (cf.scale, cf.offset) if a is not None)) / n
        rows.append(("vaekit", p, payload, rep.bytes_per_image, *metrics(x, to_uint8(model.decode(cf.latents())))))
    target = rows[0][3]  # JPEG / WebP: the quality whose files are closest in size to vaekit's q8 file
    pca_curve = {}
    for k in sorted({1, 2, 4, 8, 16, 32, 64, d}):
        y, size = pca_q8(x_train, x, min(k, args.image_size**2))
        pca_curve[k] = (size, *metrics(x, y))
    rows.append(("PCA", f"{d} × 8 bit", pca_curve[d][0], float("nan"), *pca_curve[d][1:]))
    curves = {"PCA q8": [pca_curve[k] for k in sorted(pca_curve)]}
    for fmt in ("JPEG", "WebP"):
        curve = []
        for q in range(1, 101):
            y, size = pillow_codec(x, fmt, q)
            curve.append((size, q, y))
        size, q, y = min(curve, key=lambda c: abs(c[0] - target))
        rows.append((fmt, f"quality {q}", size, size, *metrics(x, y)))
        curves[fmt] = [(s, *metrics(x, yy)) for s, qq, yy in curve[::9] + [curve[-1]]]

    print(f"rate-distortion on {n} held-out digits ({args.image_size}×{args.image_size} gray), "
          f"VAE latent_dim {d}, {args.epochs} epochs on {len(x_train)} images ({t_train:.0f} s incl. data)")
    print(f"{'method':8} {'setting':13} {'payload B/img':>13} {'file B/img':>10} {'PSNR dB':>8} {'SSIM':>7}")
    for m, s, pb, fb, ps, ss in rows:
        fbs = "-" if np.isnan(fb) else f"{fb:.1f}"
        print(f"{m:8} {s:13} {pb:13.1f} {fbs:>10} {ps:8.2f} {ss:7.4f}")
    vq8, pca = rows[0], rows[3]
    verdict = "met" if vq8[4] >= pca[4] else "NOT met"
    print(f"target vaekit q8 PSNR >= PCA at equal payload ({vq8[2]:.1f} vs {pca[2]:.1f} B/img): "
          f"{vq8[4]:.2f} vs {pca[4]:.2f} dB -> {verdict}")
    plot = plot_curves(args.out / "rate_distortion.png", rows, curves)
    print(f"plot: {plot}   total {time.perf_counter() - t0:.0f} s")
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


def plot_curves(path: Path, rows, curves) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, col, label in ((axes[0], 1, "PSNR (dB)"), (axes[1], 2, "SSIM")):
        for name, pts in curves.items():
            pts = sorted(pts)
            ax.plot([p[0] for p in pts], [p[col] for p in pts], marker=".", label=name)
        for m, s, pb, fb, ps, ss in rows:
            if m == "vaekit":
                ax.scatter([pb], [ps if col == 1 else ss], marker="*", s=120, zorder=3, label=f"vaekit {s}")
        ax.set_xscale("log")
        ax.set_xlabel("bytes per image (payload)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("vaekit latent codes vs PCA, JPEG, WebP on held-out digits")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
