"""What the demo's buttons do: one plain function per action, each a thin call into vaekit.

They take the model and plain values (file paths, numbers), return numpy images, tables and
files, and raise vaekit's own exceptions; `app.py` turns those into messages in the page.
Nothing here imports gradio, so tests call these functions directly.
"""

from __future__ import annotations

import math
import numbers
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from vaekit import codes, fileio
from vaekit.images import quality
from vaekit import images as imageio
from vaekit.anomaly.threshold import number
from vaekit.inference.engine import Model, score_unit
from vaekit.codec.compare import PillowFile, webp_at_size
from vaekit.errors import BadInput, MissingExtra
from vaekit_demo.inputs import whole as _whole

LATENT_MAX_SHOWN = 24  # images shown for one selection in the latent-space tab
# An uploaded code file is decoded in the server: a small file can name many images. The app
# decodes at most this many per file, within this many seconds (`vaekit decode` has no limit).
DECODE_MAX_ROWS = 1000
DECODE_MAX_SECONDS = 60.0


class NoModelError(BadInput):
    """A tab that needs a model was used before one was opened or trained."""


def need(model: Model | None) -> Model:
    if model is None:
        raise NoModelError("no model is open: train one on the Train tab, or open a run directory or .onnx file")
    return model


def describe(model: Model | None, roots: Sequence[Path] = ()) -> str:
    """One line of Markdown naming the model and what it expects; its path relative to the first
    of `roots` it lies in, else its last part (the page shows no server folders)."""
    from vaekit_demo.figures import page_score
    from vaekit_demo.security import md_code, public_path

    if model is None:
        return "**No model open.** Train one on the *Train* tab, or open a run directory or `.onnx` file."
    i = model.info
    kind = "gray" if i.channels == 1 else "RGB"
    score, _, t = page_score(model)  # an export without its reader: the atypicality it scores, and why
    thr = f"{number(t)} {score_unit(score)}" if t is not None else "none stored"  # as `vaekit threshold` says it
    if score != i.score:
        thr += f" ({score}: {model.effective_score(None)[1]})"
    read = f" (images read at {i.read_size} px, in tiles)" if i.read_size > i.image_size else ""
    return (f"**Model** {md_code(public_path(i.source, list(roots)))} · {i.engine} engine · {i.image_size}×{i.image_size}{read} "
            f"{kind} · latent {i.latent_dim} · {i.likelihood} · anomaly threshold {thr}")


def hwc(x: np.ndarray) -> np.ndarray:
    """(C, H, W) uint8 or float in [0, 1] -> what an image widget shows: (H, W) or (H, W, 3) uint8."""
    x = x if x.dtype == np.uint8 else imageio.to_uint8(x)
    return x[0] if x.shape[0] == 1 else np.ascontiguousarray(x.transpose(1, 2, 0))


def load_uploads(model: Model, paths: Sequence[str | Path] | None) -> imageio.LoadReport:
    """Decode uploaded files with the model's preprocessing; unreadable ones are skipped, none is an error."""
    from vaekit_demo.security import upload_paths

    report = model.load_images(upload_paths(paths, model.info.channels, model.info.read_size))
    if not report.paths:
        raise imageio.none_usable("among the uploads", report.skipped)
    return report


def _new_file(out_dir: Path, name: str) -> Path:
    """A fresh file name in its own folder, so concurrent users never overwrite each other."""
    folder = Path(out_dir) / uuid.uuid4().hex
    folder.mkdir(parents=True)
    return folder / name


# --- Compress ----------------------------------------------------------------------------------

@dataclass
class CompressResult:
    names: list[str]
    pairs: list[np.ndarray]  # per image: (C, H, 2W+pad) input next to its reconstruction, uint8
    psnr: np.ndarray  # (N,) dB, input vs. the reconstruction decoded from the stored codes
    ssim: np.ndarray  # (N,)
    report: codes.EncodeReport  # the code file: path, bytes, bits per pixel


def compress(model: Model, paths: Sequence[str | Path], out_dir: Path, precision: str = "q8") -> CompressResult:
    """Encode uploads into one code file (`vaekit encode`); reconstruct from exactly what the file stores."""
    model = need(model)
    report = load_uploads(model, paths)  # the inputs shown next to their reconstructions
    # the code file holds each file once (an image uploaded twice is one server path): every row
    # shown is reconstructed from its file's one stored code
    row = {}
    for p in report.paths:
        row.setdefault(p, len(row))
    target = _new_file(out_dir, "images.codes")
    named = _named_once(list(row), target.parent / "uploads")
    enc = codes.encode_folder(model, named, target, precision)
    x_hat = imageio.to_uint8(model.decode(codes.load(enc.path).latents()))[[row[p] for p in report.paths]]
    x = report.images
    pairs = [imageio.make_grid(np.stack([a, b]), ncol=2) for a, b in zip(x, x_hat)]
    names = [named[row[p]].name for p in report.paths]
    return CompressResult(names, pairs, quality.psnr(x, x_hat), quality.ssim(x, x_hat), replace(enc, skipped=report.skipped))


def _named_once(paths: list[Path], folder: Path) -> list[Path]:
    """`paths` as the code file will name them, each name once. Uploads from two folders may share a
    name (two `a.png`), and a code file names every image by its file name: Compress refused them with
    "rename one", which a page cannot do. Then every upload is linked (or copied) into `folder` under
    a name of its own, "a.png" and "a (2).png"."""
    if len({p.name for p in paths}) == len(paths):
        return paths
    import shutil

    folder.mkdir()
    out = [folder / f"{stem}{p.suffix}" for p, stem in zip(paths, _distinct([p.stem for p in paths], [p.suffix for p in paths]))]
    for p, q in zip(paths, out):
        try:
            q.hardlink_to(p)
        except OSError:  # another file system
            shutil.copyfile(p, q)
    return out


def _distinct(stems: list[str], suffixes: Sequence[str] | None = None) -> list[str]:
    """The stems with " (2)", " (3)" ... added where a name (stem + suffix) would repeat an earlier one."""
    suffixes = suffixes or [""] * len(stems)
    taken, out = set(), []
    for stem, suffix in zip(stems, suffixes):
        name, k = stem, 1
        while name + suffix in taken:
            k += 1
            name = f"{stem} ({k})"
        taken.add(name + suffix)
        out.append(name)
    return out


def decompress(model: Model, code_file: str | Path) -> tuple[list[str], np.ndarray]:
    """A code file -> (names, decoded images (N, C, H, W) uint8) at the model's size."""
    model = need(model)
    if not code_file:
        raise BadInput("no code file given: upload a file written by Compress or `vaekit encode`")
    import time

    name = f"code file {Path(code_file).name}"  # the upload's own name, not the server's temp path
    data = fileio.read_regular(Path(code_file), name)  # a request can name a folder: "is a folder", not a bug
    if data[:3] == b"VKC":  # the .vkc that Encode .vkc and `vaekit encode --quality` write: not a code file
        raise BadInput(f"{name} is an entropy-coded .vkc archive; this box decodes code files written by Compress "
                       "(decode a .vkc with `vaekit decode MODEL FILE.vkc --out DIR`)")
    cf = codes.from_bytes(data, source=name)
    codes.check_model(cf, model, name)
    if len(cf.names) > DECODE_MAX_ROWS:
        raise BadInput(f"{name} holds {len(cf.names)} images; the web app decodes at most {DECODE_MAX_ROWS} "
                       "per file (use `vaekit decode` for more)")
    z, out, deadline = cf.latents(), [], time.monotonic() + DECODE_MAX_SECONDS
    for s in range(0, len(z), 64):
        if time.monotonic() > deadline:
            raise BadInput(f"decoding {name} took over {DECODE_MAX_SECONDS:.0f} s; use `vaekit decode` for it")
        out.append(imageio.to_uint8(model.decode(z[s : s + 64])))
    s_, c = model.info.image_size, model.info.channels
    return cf.names, np.concatenate(out) if out else np.zeros((0, c, s_, s_), np.uint8)


# --- Compress: the entropy-coded .vkc beside WebP at the same size ---------------------------

@dataclass
class VkcImage:
    name: str
    file: Path  # this image's own .vkc, as `vaekit encode --quality` writes it
    bytes: int  # the whole file, header included
    bits_per_pixel: float  # file bits per pixel of the model-sized image
    psnr: float  # dB, input vs. the image decoded from the file
    ssim: float | None  # None without scikit-image
    webp: PillowFile  # the WebP file of the same (model-sized) image closest to `bytes`
    webp_ssim: float | None
    shown: np.ndarray  # (C, H, 3W+pad) input | decoded .vkc | decoded WebP, uint8


VKC_COLUMNS = ["file", ".vkc bytes", "bits/px", "PSNR (dB)", "SSIM", "WebP quality", "WebP bytes", "WebP PSNR (dB)",
               "WebP SSIM"]


def encode_vkc(model: Model, paths: Sequence[str | Path], out_dir: Path,
               level: int) -> tuple[list[VkcImage], list[tuple[Path, str]]]:
    """Each upload as its own .vkc at quality `level` (one file per image, as WebP writes one),
    decoded back from the file and set beside the WebP file of the same image closest to its size:
    (one VkcImage per usable upload, the skipped ones)."""
    from vaekit import codec

    model = need(model)
    if isinstance(level, float) and level.is_integer():  # a slider's 6.0
        level = int(level)
    report = load_uploads(model, paths)
    shown, stems = [], _distinct([p.stem for p in report.paths])  # a.png and a.jpg: a.vkc and a (2).vkc
    for path, x, stem in zip(report.paths, report.images, stems):
        enc = codec.encode(model, [path], _new_file(out_dir, f"{stem}.vkc"), quality=level)
        dec = codec.decode(model, enc.path, enc.path.parent / "decoded")
        y = imageio.decode(dec.written[0], model.info.channels).transpose(2, 0, 1)  # (C, H, W) as the file holds it
        webp = webp_at_size(x, enc.file_bytes)
        shown.append(VkcImage(path.name, enc.path, enc.file_bytes, 8 * enc.file_bytes / (x.shape[1] * x.shape[2]),
                              float(quality.psnr(x[None], y[None])[0]), _ssim(x, y), webp, _ssim(x, webp.decoded),
                              imageio.make_grid(np.stack([x, y, webp.decoded]), ncol=3)))
    return shown, report.skipped


def _ssim(x: np.ndarray, y: np.ndarray) -> float | None:
    try:
        return float(quality.ssim(x[None], y[None])[0])
    except MissingExtra:
        return None


# --- Anomaly -----------------------------------------------------------------------------------

@dataclass
class AnomalyResult:
    rows: list  # vaekit.anomaly.ScoreRow per image, `path` being the upload's file name
    overlays: list[np.ndarray]  # per image: (3, H, W) uint8 heat map of its per-pixel score over it
    threshold: float
    score: str  # which score (the one the model's threshold and held-out scores are about)
    csv: Path  # the rows as vaekit writes them (`vaekit anomaly-score --out x.csv`)
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [r.path for r in self.rows]

    @property
    def scores(self) -> np.ndarray:
        return np.array([r.score for r in self.rows])

    @property
    def anomalous(self) -> np.ndarray:
        return np.array([bool(r.anomalous) for r in self.rows])

    def table(self, decimals: int = 3) -> list[list]:
        """A row per upload: the scored ones, then the unreadable ones with why (no score)."""
        return ([[r.path, _shown(r.score, decimals), _shown(r.bits_per_dim, 5), "anomalous" if r.anomalous else "normal"]
                 for r in self.rows] + [[p.name, None, None, f"unreadable: {why}"] for p, why in self.skipped])


def _shown(v: float, decimals: int) -> float | None:
    """A table cell, empty (None) for a number that is not finite (NaN is no JSON): Bernoulli bits of grey images."""
    return round(v, decimals) if math.isfinite(v) else None


ANOMALY_COLUMNS = ["file", "score", "bits/dim", "verdict"]


def finite_threshold(threshold) -> float:
    """The slider's threshold as a float; BadInput for NaN, infinity or none (a request made by hand:
    the histogram drew its line at NaN)."""
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not math.isfinite(threshold):
        raise BadInput(f"invalid threshold {threshold!r:.40}: expected a finite number")
    return float(threshold)


def _refuse_unfinished(model: Model) -> None:
    """BadInput for a run whose training stopped before its finish (a Stop in the Train tab, a Ctrl-C):
    it stores no threshold or calibration, and the page named its score explicitly, which passed the
    library's refusal: it scored the -ELBO against the slider's 0 and called every image anomalous."""
    run = model.info.source
    if not (isinstance(getattr(model, "config", None), dict) and Path(run).is_dir()):
        return  # an export (vaekit export refuses an unfinished run)
    from vaekit.training.rundir import stopped_before_finish

    why = stopped_before_finish(Path(run), model.config)
    if why:
        raise BadInput(f"{why}; then open it again to score images")


def anomaly(model: Model, paths: Sequence[str | Path], threshold: float, out_dir: Path) -> AnomalyResult:
    """Score uploads against `threshold` (`vaekit anomaly-score`), with heat maps and a CSV."""
    from vaekit import anomaly as detect
    from vaekit.fileio import atomic_write_text
    from vaekit_demo.security import upload_paths

    model = need(model)
    _refuse_unfinished(model)
    paths = upload_paths(paths, model.info.channels, model.info.read_size)
    threshold = finite_threshold(threshold)
    score = model.effective_score(None)[0]  # an export without its reader scores the atypicality: named so
    try:
        report = detect.score_images(model, paths, score=score, threshold=float(threshold))
    except imageio.NoImagesError:
        load_uploads(model, paths)  # raises the same error, naming each upload and why it is unreadable
        raise
    # rows name the uploads, not the server's temporary copies of them
    rows = [replace(r, path=n) for r, n in zip(report.rows, report.names)]
    out = _new_file(out_dir, "scores.csv")
    atomic_write_text(out, detect.rows_csv(rows))
    overlays = [imageio.heatmap_overlay(x, m) for x, m in zip(report.images, report.pixel_maps)]
    return AnomalyResult(rows, overlays, float(threshold), score, out, report.skipped)


# --- Generate ----------------------------------------------------------------------------------

def sample_grid(model: Model, n: int, temperature: float, seed: int) -> np.ndarray:
    """n draws from the prior as one grid image, (C, H, W) uint8."""
    # the temperature as sent: Model.sample names a missing or non-number one (float(None) was a TypeError)
    x = need(model).sample(_whole(n, "the number of samples"), temperature, _whole(seed, "the seed"))
    return imageio.to_uint8(imageio.make_grid(x, ncol=math.ceil(math.sqrt(len(x)))))


def interpolation_strip(model: Model, a: str | Path, b: str | Path, steps: int) -> np.ndarray:
    """Decoded points between two images' codes as one strip, (C, H, W) uint8."""
    model = need(model)
    if not a or not b:
        raise BadInput("interpolation needs two images: upload one on each side")
    x = codes.interpolate(model, a, b, _whole(steps, "the number of steps"))
    return imageio.to_uint8(imageio.make_grid(x, ncol=len(x)))


# --- Latent space ------------------------------------------------------------------------------

LatentMap = codes.LatentMap


def latent_map(model: Model, folder: str | Path, method: str = "PCA", limit: int = 500,
               confine_to: Path | None = None) -> LatentMap:
    """Encode up to `limit` images of a folder (spread evenly over it) and project their codes to 2-D;
    with `confine_to`, refused when a link in it leads outside that folder."""
    model = need(model)
    if not folder:
        raise BadInput("no folder given: type the path of a folder of images on this machine")
    return codes.latent_map(model, Path(folder).expanduser(), method, _whole(limit, "the number of images"), confine_to)


def latent_pick(model: Model, m: LatentMap, x_lo: float, x_hi: float) -> list[tuple[np.ndarray, str]]:
    """The images whose first coordinate lies in [x_lo, x_hi], nearest the middle first."""
    model = need(model)
    lo, hi = sorted((float(x_lo), float(x_hi)))
    inside = np.flatnonzero((m.xy[:, 0] >= lo) & (m.xy[:, 0] <= hi))
    inside = inside[np.argsort(np.abs(m.xy[inside, 0] - (lo + hi) / 2))][:LATENT_MAX_SHOWN]
    if len(inside) == 0:
        return []
    x = model.load_images([m.paths[i] for i in inside]).images
    return [(img, f"{m.names[i]} · {m.scores[i]:.1f}") for img, i in zip(x, inside)]
