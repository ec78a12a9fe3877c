"""Latent code files: many images compressed to their posterior means, in one safetensors file.

A code file holds, for N images encoded by one model (D latent dimensions):

    tensors   codes      (N, D)  float32 (f32), float16 (f16) or uint8 (q8)
              scale      (D,)    float32, q8 only: z = offset + scale * code
              offset     (D,)    float32, q8 only
              orig_size  (N, 2)  int32, each source image's height and width (after EXIF rotation)
    metadata  format     "vaekit-codes"
              version    "1"
              header     JSON: precision, fingerprint (of the model's weights), latent_dim,
                         image_size, channels, count, names (relative posix paths), vaekit_version
              sha256     hex sha256 over format, version, header and every tensor's name, dtype,
                         shape and bytes (sorted by name)

It is read with numpy alone (`safetensors.numpy`, or by hand: 8-byte little-endian header
length, JSON header, raw little-endian tensor bytes); no pickle, no torch. Encoding is
deterministic (z = mu), so the same images and model always give the same file. Decoding
refuses a file whose fingerprint names another model, and one that is truncated or altered.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from vaekit import __version__
from vaekit import images as imageio
from vaekit.config import MAX_IMAGE_SIZE
from vaekit.errors import DamagedFile, ForeignModel
from vaekit.fileio import atomic_write_bytes, loads_json, read_regular, refuse_inside, split_safetensors

if TYPE_CHECKING:  # the engine is passed in; importing it here would cost nothing but clarity
    from vaekit.engine import Model

FORMAT = "vaekit-codes"
VERSION = 1
PRECISIONS = ("f32", "f16", "q8")
_DTYPES = {"f32": np.float32, "f16": np.float16, "q8": np.uint8}
_LEVELS = 255  # q8: codes 0..255
Progress = Callable[..., None]


# Twice Pillow's decompression-bomb limit, the largest image it opens at all (a big JPEG
# loads at reduced scale, and its size is still recorded): `decode --size original` never
# writes more than this per image, whatever a hand-made code file says.
MAX_ORIG_PIXELS = 2 * 89_478_485


class CodeFileError(DamagedFile):
    """A code file that is corrupt, truncated, tampered with, foreign, or for another model."""


class FingerprintMismatch(CodeFileError, ForeignModel):
    """The code file was written by a different model than the one asked to decode it."""


# --- the format ------------------------------------------------------------------------------

@dataclass
class CodeFile:
    codes: np.ndarray  # (N, D) as stored: float32, float16 or uint8 (see precision)
    names: list[str]  # relative posix path of each source image
    orig_size: np.ndarray  # (N, 2) int32 height, width of each source image
    precision: str  # "f32", "f16" or "q8"
    fingerprint: str  # the encoding model's fingerprint (ModelInfo.fingerprint)
    image_size: int  # the model's input size
    channels: int  # the model's channels
    scale: np.ndarray | None = None  # (D,) float32, q8 only
    offset: np.ndarray | None = None  # (D,) float32, q8 only
    vaekit_version: str = __version__

    @property
    def latent_dim(self) -> int:
        return int(self.codes.shape[1])

    def latents(self) -> np.ndarray:
        """The codes as float32 latents (N, D), dequantised for q8."""
        if self.precision == "q8":
            return (self.offset + self.scale * self.codes.astype(np.float32)).astype(np.float32)
        return self.codes.astype(np.float32)


def quantize(z: np.ndarray, precision: str) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Latents (N, D) -> (codes, scale, offset). q8 maps each dimension's [min, max] to 0..255."""
    if precision not in PRECISIONS:
        raise ValueError(f"invalid precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    z = np.asarray(z, dtype=np.float32)
    if z.ndim != 2:
        raise ValueError(f"expected latents of shape (N, D), got {z.shape}")
    if not np.isfinite(z).all():
        raise ValueError("latent codes contain NaN or infinity; the model is broken")
    if precision == "f32":
        return z.copy(), None, None
    if precision == "f16":
        with np.errstate(over="ignore"):  # checked just below, with a clearer message
            codes = z.astype(np.float16)
        if not np.isfinite(codes).all():
            raise ValueError("latent codes exceed float16's range (65504); use --precision f32")
        return codes, None, None
    lo, hi = (z.min(0), z.max(0)) if len(z) else (np.zeros(z.shape[1], np.float32),) * 2
    scale = ((hi - lo) / _LEVELS).astype(np.float32)
    scale[scale == 0] = 1.0  # a constant dimension: every code 0 decodes exactly to offset
    codes = np.clip(np.rint((z - lo) / scale), 0, _LEVELS).astype(np.uint8)
    return codes, scale, lo.astype(np.float32)


def _tensors(cf: CodeFile) -> dict[str, np.ndarray]:
    t = {"codes": np.ascontiguousarray(cf.codes), "orig_size": np.ascontiguousarray(cf.orig_size, dtype=np.int32)}
    if cf.precision == "q8":
        t["scale"], t["offset"] = np.ascontiguousarray(cf.scale), np.ascontiguousarray(cf.offset)
    return t


def _digest(version: str, header: str, tensors: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256(f"{FORMAT}|{version}|{header}|".encode())
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        h.update(f"{name}|{a.dtype.newbyteorder('<').str}|{list(a.shape)}|".encode())
        h.update(a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes())
    return h.hexdigest()


_ST_DTYPES = {"float32": "F32", "float16": "F16", "uint8": "U8", "int32": "I32"}


def _safetensors(tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> bytes:
    """The safetensors layout, written here because safetensors' own writer orders the
    metadata by a randomly seeded hash map: this way equal inputs give byte-equal files.
    Tensors go widest dtype first, so each stays aligned to its item size."""
    header: dict = {"__metadata__": metadata}
    chunks, offset = [], 0
    for name in sorted(tensors, key=lambda k: (-tensors[k].dtype.itemsize, k)):
        a = np.ascontiguousarray(tensors[name])
        raw = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": _ST_DTYPES[a.dtype.name], "shape": list(a.shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    return len(head).to_bytes(8, "little") + head + b"".join(chunks)


def to_bytes(cf: CodeFile) -> bytes:
    """Serialise a code file (safetensors with a JSON header and a checksum); deterministic."""
    _validate(cf)
    header = json.dumps({
        "precision": cf.precision, "fingerprint": cf.fingerprint, "latent_dim": cf.latent_dim,
        "image_size": cf.image_size, "channels": cf.channels, "count": len(cf.names),
        "names": cf.names, "vaekit_version": cf.vaekit_version,
    }, sort_keys=True, separators=(",", ":"))
    tensors = _tensors(cf)
    meta = {"format": FORMAT, "version": str(VERSION), "header": header, "sha256": _digest(str(VERSION), header, tensors)}
    return _safetensors(tensors, meta)


def from_bytes(data: bytes, source: str = "code file") -> CodeFile:
    """Parse and verify a code file; any damage raises CodeFileError naming `source`."""
    from safetensors.numpy import load

    meta, sizes = _safetensors_header(data, source)
    if meta.get("format") != FORMAT:
        raise CodeFileError(f"{source} is not a vaekit code file (format {meta.get('format')!r})")
    if meta.get("version") != str(VERSION):
        raise CodeFileError(f"{source} has code-file version {meta.get('version')!r}; this vaekit reads version {VERSION}")
    if len(data) != sizes:
        raise CodeFileError(f"{source} is truncated or has extra bytes ({len(data)} bytes, expected {sizes})")
    try:
        tensors = load(bytes(data))
    except Exception as e:  # safetensors raises its own error type on a damaged layout
        raise CodeFileError(f"{source} is corrupt: {e}") from None
    header = meta.get("header", "")
    if meta.get("sha256") != _digest(meta["version"], header, tensors):
        raise CodeFileError(f"{source} is damaged or was modified: its checksum does not match its contents")
    try:
        h = loads_json(header)
        cf = CodeFile(
            codes=tensors["codes"], names=list(h["names"]), orig_size=tensors["orig_size"],
            precision=h["precision"], fingerprint=h["fingerprint"], image_size=h["image_size"],
            channels=h["channels"], scale=tensors.get("scale"), offset=tensors.get("offset"),
            vaekit_version=h.get("vaekit_version", "?"),
        )
        if h["latent_dim"] != cf.latent_dim or h["count"] != len(cf.names):
            raise ValueError("header does not match the tensors")
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise CodeFileError(f"{source} has an invalid header: {e}") from None
    _validate(cf, source)
    return cf


def _safetensors_header(data: bytes, source: str) -> tuple[dict, int]:
    """(metadata, expected file length) from a safetensors header, checked by hand first so
    that a non-safetensors or truncated file gets a clear message instead of a parser's."""
    if len(data) < 8:
        raise CodeFileError(f"{source} is truncated or not a vaekit code file ({len(data)} bytes)")
    n = int.from_bytes(data[:8], "little")
    if 8 + n > len(data):
        raise CodeFileError(f"{source} is truncated or not a vaekit code file (header of {n} bytes, file of {len(data)})")
    try:
        header, _ = split_safetensors(data)
        meta = header.pop("__metadata__", None) or {}
        end = max((int(t["data_offsets"][1]) for t in header.values()), default=0)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        raise CodeFileError(f"{source} is corrupt or not a vaekit code file (unreadable header)") from None
    if not isinstance(meta, dict):
        raise CodeFileError(f"{source} is corrupt (metadata is not a mapping)")
    return meta, 8 + n + end


def _validate(cf: CodeFile, source: str = "code file") -> None:
    """Shapes, dtypes, values and names must be consistent; raises CodeFileError otherwise."""
    def bad(why: str):
        raise CodeFileError(f"{source} is invalid: {why}")

    if cf.precision not in PRECISIONS:
        bad(f"precision {cf.precision!r} is not one of {PRECISIONS}")
    if cf.codes.ndim != 2 or cf.codes.dtype != _DTYPES[cf.precision]:
        bad(f"codes must be ({_DTYPES[cf.precision].__name__}) (N, D), got {cf.codes.dtype} {cf.codes.shape}")
    n, d = cf.codes.shape
    if len(cf.names) != n:
        bad(f"{len(cf.names)} names for {n} codes")
    if cf.orig_size.shape != (n, 2) or cf.orig_size.dtype != np.int32 or (n and cf.orig_size.min() < 1):
        bad(f"orig_size must be positive int32 (N, 2), got {cf.orig_size.dtype} {cf.orig_size.shape}")
    if n and int(cf.orig_size.astype(np.int64).prod(1).max()) > MAX_ORIG_PIXELS:
        i = int(cf.orig_size.astype(np.int64).prod(1).argmax())
        bad(f"orig_size {cf.orig_size[i, 0]}x{cf.orig_size[i, 1]} of {cf.names[i]!r} is larger than any image vaekit "
            f"reads ({MAX_ORIG_PIXELS} pixels)")
    if cf.precision == "q8":
        for name, a in (("scale", cf.scale), ("offset", cf.offset)):
            if a is None or a.shape != (d,) or a.dtype != np.float32 or not np.isfinite(a).all():
                bad(f"q8 needs a finite float32 {name} of shape ({d},)")
    elif cf.scale is not None or cf.offset is not None:
        bad(f"scale/offset are only stored for q8, not {cf.precision}")
    if (not isinstance(cf.image_size, int) or isinstance(cf.image_size, bool) or not 16 <= cf.image_size <= MAX_IMAGE_SIZE
            or not isinstance(cf.channels, int) or cf.channels not in (1, 3)):
        bad(f"image size {cf.image_size!r} / channels {cf.channels!r}")
    if not isinstance(cf.fingerprint, str) or not cf.fingerprint:
        bad("missing model fingerprint")
    for name in cf.names:
        check_name(name, source)


def check_name(name: str, source: str = "code file") -> None:
    """A stored name must be a plain relative path: decoding writes files under it."""
    if not isinstance(name, str) or not name or "\\" in name or "\x00" in name:
        raise CodeFileError(f"{source} holds an unsafe image name {name!r}")
    p = PurePosixPath(name)
    if p.is_absolute() or PureWindowsPath(name).drive or any(part in ("..", ".") for part in name.split("/")) or "" in name.split("/"):
        raise CodeFileError(f"{source} holds an unsafe image name {name!r} (absolute, or leaving the output folder)")


def save(cf: CodeFile, path: str | Path) -> int:
    """Write a code file atomically; returns its size in bytes."""
    data = to_bytes(cf)
    atomic_write_bytes(Path(path), data)
    return len(data)


def load(path: str | Path) -> CodeFile:
    """Read and verify a code file (numpy only)."""
    path = Path(path)
    return from_bytes(read_regular(path, "code file"), source=f"code file {path}")


# --- encoding and decoding with a model ------------------------------------------------------

def original_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image file as vaekit decodes it (EXIF rotation applied), header only."""
    import warnings

    with warnings.catch_warnings(), imageio.open_image(path) as img:
        warnings.simplefilter("ignore")  # a big image's DecompressionBombWarning: we only read its header
        w, h = img.size
        try:
            orientation = img.getexif().get(0x0112, 1)
        except Exception:  # a broken EXIF block: images.decode ignores it too
            orientation = 1
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


def relative_names(paths: Sequence[Path], source: Path) -> list[str]:
    """Names relative to the input folder (the file name for a single file), posix style."""
    root = source if source.is_dir() else source.parent
    return [Path(p).relative_to(root).as_posix() for p in paths]


def load_source(model: "Model", source: str | Path, progress: Progress | None = None) -> tuple[imageio.LoadReport, list[str]]:
    """Decode every image under `source` with the model's preprocessing; names relative to it.

    Unreadable files are skipped (reported in the LoadReport); no usable image is an error.
    """
    source = Path(source)
    report = model.load_images(source, progress=progress)
    if len(report.paths) == 0:
        reasons = "; ".join(f"{p.name}: {r}" for p, r in report.skipped[:3])
        raise imageio.NoImagesError(f"no usable image in {source} ({len(report.skipped)} unreadable: {reasons})")
    return report, relative_names(report.paths, source)


def encode_images(model: "Model", x: np.ndarray, names: list[str], orig_size: np.ndarray, precision: str = "q8") -> CodeFile:
    """uint8 images (N, C, H, W) at the model's size -> a CodeFile of their posterior means."""
    if precision not in PRECISIONS:
        raise ValueError(f"invalid precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    mu, _ = model.encode(x)
    codes, scale, offset = quantize(mu, precision)
    info = model.info
    cf = CodeFile(codes, list(names), np.asarray(orig_size, dtype=np.int32).reshape(-1, 2), precision,
                  info.fingerprint, info.image_size, info.channels, scale, offset)
    _validate(cf, "new code file")
    return cf


@dataclass
class EncodeReport:
    path: Path  # the code file written
    count: int  # images encoded
    file_bytes: int  # size of the code file
    source_bytes: int  # total size of the source image files
    image_size: int  # the model's size: codes describe image_size × image_size images
    source_pixels: int  # total pixels of the source images at their original sizes
    precision: str
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def bytes_per_image(self) -> float:
        return self.file_bytes / self.count

    @property
    def bits_per_pixel(self) -> float:
        """Bits of code file per pixel of the model-sized image."""
        return 8 * self.file_bytes / (self.count * self.image_size**2)

    @property
    def bits_per_source_pixel(self) -> float:
        return 8 * self.file_bytes / self.source_pixels

    @property
    def ratio(self) -> float:
        """Source files' total size / code file size."""
        return self.source_bytes / self.file_bytes

    def to_dict(self) -> dict:
        return {
            "code_file": str(self.path), "images": self.count, "skipped": len(self.skipped),
            "precision": self.precision, "bytes": self.file_bytes, "bytes_per_image": self.bytes_per_image,
            "bits_per_pixel": self.bits_per_pixel, "bits_per_source_pixel": self.bits_per_source_pixel,
            "source_bytes": self.source_bytes, "compression_ratio": self.ratio,
        }


def refuse_existing(paths: Sequence[Path], overwrite: bool) -> None:
    if overwrite:
        return
    existing = [p for p in paths if p.exists()]
    if existing:
        what = f"{existing[0]} and {len(existing) - 1} more files already exist" if len(existing) > 1 else f"{existing[0]} already exists"
        raise FileExistsError(f"{what}; pass --overwrite to replace")


def encode_folder(
    model: "Model",
    source: str | Path,
    out: str | Path,
    precision: str = "q8",
    overwrite: bool = False,
    progress: Progress | None = None,
) -> EncodeReport:
    """Encode every image under `source` into the code file `out` (`vaekit encode`)."""
    out = Path(out)
    if precision not in PRECISIONS:
        raise ValueError(f"invalid precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if out.is_dir():
        raise IsADirectoryError(f"output {out} is a folder; give a file name such as {out / 'images.codes'}")
    refuse_inside(out, source, "output")
    refuse_existing([out], overwrite)
    report, names = load_source(model, source, progress)
    sizes = np.array([original_size(p) for p in report.paths], dtype=np.int32)
    cf = encode_images(model, report.images, names, sizes, precision)
    n_bytes = save(cf, out)
    return EncodeReport(out, len(names), n_bytes, sum(p.stat().st_size for p in report.paths), model.info.image_size,
                        int(sizes.prod(1).sum()), precision, report.skipped)


def check_model(cf: CodeFile, model: "Model", source: str = "code file") -> None:
    """Raise FingerprintMismatch unless `model` is the one that wrote `cf`."""
    info = model.info
    if cf.fingerprint != info.fingerprint:
        raise FingerprintMismatch(
            f"{source} was encoded by model {cf.fingerprint}, but {info.source} is model {info.fingerprint}; "
            "decode with the model that encoded it"
        )
    if (cf.latent_dim, cf.image_size, cf.channels) != (info.latent_dim, info.image_size, info.channels):
        raise FingerprintMismatch(f"{source} does not match the shape of model {info.source}")


def png_names(names: Sequence[str]) -> list[str]:
    """Output file names: each source name with a .png suffix ("a/b.jpg" -> "a/b.png").

    Two sources that would share a name ("a.jpg", "a.png") keep their whole name ("a.jpg.png").
    """
    first = [PurePosixPath(n).with_suffix(".png").as_posix() for n in names]
    counts: dict[str, int] = {}
    for f in first:
        counts[f] = counts.get(f, 0) + 1
    out = [f if counts[f] == 1 else n + ".png" for n, f in zip(names, first)]
    if len(set(out)) != len(out):
        dup = next(o for o in out if out.count(o) > 1)
        raise ValueError(f"two images would be written to the same file {dup!r}")
    return out


def restore_size(x: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Undo the model's preprocessing geometry: uint8 (C, s, s) -> (C, height, width).

    The model saw the centre square of the source, its shorter side resized to s; that square
    is resized back (bicubic) and put in the centre, and the margins the crop cut off, which no
    code describes, repeat its edge pixels.
    """
    from PIL import Image

    h, w = int(size[0]), int(size[1])
    m = min(h, w)
    img = Image.fromarray(x[0] if x.shape[0] == 1 else x.transpose(1, 2, 0))
    y = np.asarray(img.resize((m, m), Image.Resampling.BICUBIC))
    y = y[..., None] if y.ndim == 2 else y
    top, left = (h - m) // 2, (w - m) // 2
    y = np.pad(y, ((top, h - m - top), (left, w - m - left), (0, 0)), mode="edge")
    return np.ascontiguousarray(y.transpose(2, 0, 1))


@dataclass
class DecodeReport:
    out_dir: Path
    written: list[Path]  # one PNG per image, in the code file's order
    size: str  # "model" or "original"


def decode_file(
    model: "Model",
    code_file: str | Path,
    out_dir: str | Path,
    size: str = "model",
    overwrite: bool = False,
    progress: Progress | None = None,
    batch_size: int = 256,
) -> DecodeReport:
    """Decode a code file into PNGs under `out_dir`, named after the source images (`vaekit decode`).

    size="model" writes the model's image_size × image_size; "original" each source's size.
    Every target is checked before the first file is written.
    """
    if size not in ("model", "original"):
        raise ValueError(f"invalid size {size!r}: expected 'model' or 'original'")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"output {out_dir} exists and is not a folder")
    cf = load(code_file)
    check_model(cf, model, f"code file {code_file}")
    targets = [out_dir / n for n in png_names(cf.names)]
    refuse_existing(targets, overwrite)
    z, n = cf.latents(), len(targets)
    for s in range(0, n, batch_size):
        x = imageio.to_uint8(model.decode(z[s : s + batch_size]))
        for i, img in enumerate(x, start=s):
            imageio.save_png(img if size == "model" else restore_size(img, cf.orig_size[i]), targets[i])
        if progress:
            progress(min(n, s + batch_size), n)
    return DecodeReport(out_dir, targets, size)


# --- latent walks and grids --------------------------------------------------------------------

def interpolate(model: "Model", a: str | Path, b: str | Path, n: int = 8) -> np.ndarray:
    """Decode n evenly spaced points on the segment between two images' posterior means.

    Returns float (n, C, H, W) in [0, 1]; the first and last are the two reconstructions.
    """
    if not isinstance(n, int) or n < 2:
        raise ValueError(f"invalid n {n!r}: need at least 2 steps")
    report = model.load_images([Path(a), Path(b)])
    if report.skipped:
        p, why = report.skipped[0]
        raise ValueError(f"cannot read {p}: {why}")
    mu, _ = model.encode(report.images)
    t = np.linspace(0.0, 1.0, n, dtype=np.float32)[:, None]
    return model.decode((1 - t) * mu[0] + t * mu[1])


def write_grid(x: np.ndarray, path: str | Path, ncol: int = 8, overwrite: bool = False) -> Path:
    """Save images (N, C, H, W) as one PNG grid; refuses to replace a file unless overwrite."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"output {path} must be a .png file")
    if path.is_dir():
        raise IsADirectoryError(f"output {path} is a folder")
    refuse_existing([path], overwrite)
    imageio.save_png(imageio.make_grid(x, ncol=ncol), path)
    return path
