"""The code-file format: many images' posterior means in one safetensors file.

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
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np

from vaekit import __version__
from vaekit.config import MAX_IMAGE_SIZE
from vaekit.errors import BadInput, DamagedFile, ForeignModel
from vaekit.fileio import atomic_write_bytes, kind_of, loads_json, read_regular, read_safetensors_header

FORMAT = "vaekit-codes"
VERSION = 1
PRECISIONS = ("f32", "f16", "q8")
DTYPES = {"f32": np.float32, "f16": np.float16, "q8": np.uint8}  # the stored dtype of each precision
_LEVELS = 255  # q8: codes 0..255


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

    def latents(self, rows: slice = slice(None)) -> np.ndarray:
        """The codes (of `rows`) as float32 latents (N, D), dequantised for q8."""
        if self.precision == "q8":
            return (self.offset + self.scale * self.codes[rows].astype(np.float32)).astype(np.float32)
        return self.codes[rows].astype(np.float32)


def quantize(z: np.ndarray, precision: str) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Latents (N, D) -> (codes, scale, offset). q8 maps each dimension's [min, max] to 0..255."""
    if precision not in PRECISIONS:
        raise BadInput(f"invalid precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    z = np.asarray(z, dtype=np.float32)
    if z.ndim != 2:
        raise BadInput(f"expected latents of shape (N, D), got {z.shape}")
    check_finite(z)
    if precision == "f32":
        return z.copy(), None, None
    if precision == "f16":
        return store(z, "f16", None, None), None, None
    lo, hi = (z.min(0), z.max(0)) if len(z) else (np.zeros(z.shape[1], np.float32),) * 2
    scale, offset = q8_range(lo, hi)
    return store(z, "q8", scale, offset), scale, offset


class QuantizeError(BadInput):
    """Latents that cannot be stored: not finite (a broken model), or beyond float16's range."""


def check_finite(z: np.ndarray) -> None:
    """QuantizeError when latent codes hold NaN or infinity (a broken model)."""
    if not np.isfinite(z).all():
        raise QuantizeError("latent codes contain NaN or infinity; the model is broken")


def q8_range(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(scale, offset) of q8 from each dimension's min and max over all codes. Both ends are first
    widened to a grid of 1/256 to 1/512 of the range (under 1% more; an end float32 cannot hold so
    stays): a CPU kernel's rounding can move a min or max in its last bit in batches of another
    size, and the file stays the same unless an end, or the width against a power of two, lies
    within that last bit of a grid point."""
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    width = hi - lo
    step = np.exp2(np.floor(np.log2(np.where(width > 0, width, 1.0))) - 8)
    with np.errstate(over="ignore"):
        wide_lo = np.where(width > 0, np.floor(lo / step) * step, lo).astype(np.float32)
        wide_hi = np.where(width > 0, np.ceil(hi / step) * step, hi).astype(np.float32)
    lo = np.where(np.isfinite(wide_lo), wide_lo, lo).astype(np.float32)
    hi = np.where(np.isfinite(wide_hi), wide_hi, hi).astype(np.float32)
    scale = ((hi.astype(np.float64) - lo) / _LEVELS).astype(np.float32)
    scale[scale == 0] = 1.0  # a constant dimension: every code 0 decodes exactly to offset
    return scale, lo


def store(z: np.ndarray, precision: str, scale, offset) -> np.ndarray:
    """float32 latents (n, D) -> codes as stored, for a precision and (q8) a fixed range."""
    if precision == "f32":
        return z.copy()
    if precision == "f16":
        with np.errstate(over="ignore"):  # checked just below, with a clearer message
            codes = z.astype(np.float16)
        if not np.isfinite(codes).all():
            raise QuantizeError("latent codes exceed float16's range (65504); use --precision f32")
        return codes
    return np.clip(np.rint((z - offset) / scale), 0, _LEVELS).astype(np.uint8)


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


def safetensors_layout(tensors: dict[str, np.ndarray], shapes: dict[str, list[int]], metadata: dict[str, str]) -> tuple[bytes, list[str]]:
    """The safetensors header (length + JSON) and the order of the tensors' bytes after it.

    Written here because safetensors' own writer orders the metadata by a randomly seeded hash
    map: this way equal inputs give byte-equal files. Tensors go widest dtype first, so each
    stays aligned to its item size. `tensors` give the dtypes; `shapes` the shapes."""
    header: dict = {"__metadata__": metadata}
    order, offset = sorted(tensors, key=lambda k: (-tensors[k].dtype.itemsize, k)), 0
    for name in order:
        nbytes = int(np.prod(shapes[name], dtype=np.int64)) * tensors[name].dtype.itemsize
        header[name] = {"dtype": _ST_DTYPES[tensors[name].dtype.name], "shape": shapes[name],
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    return len(head).to_bytes(8, "little") + head, order


def header_json(cf: CodeFile) -> str:
    """The code file's metadata as the JSON string its safetensors header carries."""
    return json.dumps({
        "precision": cf.precision, "fingerprint": cf.fingerprint, "latent_dim": cf.latent_dim,
        "image_size": cf.image_size, "channels": cf.channels, "count": len(cf.names),
        "names": cf.names, "vaekit_version": cf.vaekit_version,
    }, sort_keys=True, separators=(",", ":"))


def to_bytes(cf: CodeFile) -> bytes:
    """Serialise a code file (safetensors with a JSON header and a checksum); deterministic."""
    validate(cf)
    header = header_json(cf)
    tensors = _tensors(cf)
    meta = {"format": FORMAT, "version": str(VERSION), "header": header, "sha256": _digest(str(VERSION), header, tensors)}
    head, order = safetensors_layout(tensors, {k: list(v.shape) for k, v in tensors.items()}, meta)
    return head + b"".join(little_endian(tensors[k]) for k in order)


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
        if not isinstance(h := loads_json(header), dict):  # "[1, 2]": "list indices must be integers or slices"
            raise ValueError("it is not a JSON object")
        cf = CodeFile(
            codes=tensors["codes"], names=list(h["names"]), orig_size=tensors["orig_size"],
            precision=h["precision"], fingerprint=h["fingerprint"], image_size=h["image_size"],
            channels=h["channels"], scale=tensors.get("scale"), offset=tensors.get("offset"),
            vaekit_version=h.get("vaekit_version", "?"))
        if h["latent_dim"] != cf.latent_dim or h["count"] != len(cf.names):
            raise ValueError("header does not match the tensors")  # caught just below
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise CodeFileError(f"{source} has an invalid header: {e}") from None
    validate(cf, source)
    return cf


def _safetensors_header(data: bytes, source: str) -> tuple[dict, int]:
    """(metadata, expected length) from the safetensors header (fileio's reader): a clear message, not a parser's."""
    try:
        h = read_safetensors_header(data)
    except ValueError as e:
        kind = kind_of(data[:4096]) or "safetensors"  # an image, a .vkc: named; a damaged code file: as it is
        raise CodeFileError(f"{source} is corrupt, truncated or not a vaekit code file ({e})" if "safetensors" in kind
                            or "code file" in kind else f"{source} is {kind}, not a vaekit code file") from None
    return h.metadata, h.end


def _finite_latents(cf: CodeFile, rows: int = 1 << 16) -> bool:
    """Whether every latent the codes stand for is finite, in memory bounded by `rows` codes (the
    streamed writer's probe names a million codes and holds none): q8's offset + scale * code is
    monotone in the code, so its ends (0 and 255) say it for all; f16/f32 codes a block at a time."""
    with np.errstate(over="ignore", invalid="ignore"):  # a forged q8 scale overflowed with numpy's two-line warning
        if cf.precision == "q8":
            return bool(np.isfinite(cf.offset + cf.scale * np.float32(_LEVELS)).all())  # offset: checked finite
        return all(np.isfinite(cf.codes[i:i + rows]).all() for i in range(0, len(cf.codes), rows))


def validate(cf: CodeFile, source: str = "code file") -> None:
    """Shapes, dtypes, values and names must be consistent; raises CodeFileError otherwise."""
    def bad(why: str):
        raise CodeFileError(f"{source} is invalid: {why}")

    if cf.precision not in PRECISIONS:
        bad(f"precision {cf.precision!r} is not one of {PRECISIONS}")
    if cf.codes.ndim != 2 or cf.codes.dtype != DTYPES[cf.precision]:
        bad(f"codes must be ({DTYPES[cf.precision].__name__}) (N, D), got {cf.codes.dtype} {cf.codes.shape}")
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
    if not _finite_latents(cf):
        bad("its latents are not finite (NaN, infinity, or a q8 scale and offset that overflow float32)")
    if (not isinstance(cf.image_size, int) or isinstance(cf.image_size, bool) or not 16 <= cf.image_size <= MAX_IMAGE_SIZE
            or not isinstance(cf.channels, int) or cf.channels not in (1, 3)):
        bad(f"image size {cf.image_size!r} / channels {cf.channels!r}")
    _check_shapes(cf, bad)
    if not isinstance(cf.fingerprint, str) or not cf.fingerprint:
        bad("missing model fingerprint")
    for name in cf.names:
        check_name(name, source)


def _check_shapes(cf: CodeFile, bad) -> None:
    """Every orig_size must be a shape vaekit could have encoded (`too_elongated`)."""
    hit = too_elongated(cf.orig_size, cf.image_size)
    if hit is not None:
        i, need = hit
        bad(f"orig_size {cf.orig_size[i][0]}x{cf.orig_size[i][1]} of {cf.names[i]!r} is too elongated for an image "
            f"vaekit encodes (resized to {cf.image_size} px it would take {need} pixels, at most {_max_resize()})")


def _max_resize() -> int:
    from vaekit.images.read import MAX_RESIZE_PIXELS

    return MAX_RESIZE_PIXELS


def too_elongated(sizes, image_size: int) -> tuple[int, int] | None:
    """(index, pixels) of the first recorded [height, width] that vaekit's reader could never have
    resized to `image_size` within MAX_RESIZE_PIXELS (vaekit.images.read.load_image refuses longer
    strips), or None. Decoding at the original size builds each image whole: a forged 1 x
    178,956,970 strip would not fit in memory (a traceback from Pillow); the square of
    MAX_ORIG_PIXELS is the largest it builds. Code files and .vkc headers both check it."""
    sizes = np.asarray(sizes, dtype=np.int64).reshape(-1, 2)
    if not len(sizes):
        return None
    h, w = sizes[:, 0], sizes[:, 1]
    s = image_size / np.minimum(h, w)  # as vaekit.images.read.resize_pixels
    need = np.maximum(image_size, np.rint(w * s)) * np.maximum(image_size, np.rint(h * s))
    i = int(need.argmax())
    return (i, int(need[i])) if need[i] > _max_resize() else None


def check_name(name: str, source: str = "code file") -> None:
    """A stored name must be a plain relative path: decoding writes files under it."""
    if not isinstance(name, str) or not name or "\\" in name or "\x00" in name:
        raise CodeFileError(f"{source} holds an unsafe image name {name!r}")
    try:
        os.fsencode(name)  # a name of a file's bytes (surrogateescape) is; JSON's "\ud800" is no file name
    except UnicodeEncodeError:
        raise CodeFileError(f"{source} holds an image name {name!r} that is no file name (a lone surrogate)") from None
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


def little_endian(a: np.ndarray) -> bytes:
    """An array's bytes in little-endian order, as safetensors stores them."""
    a = np.ascontiguousarray(a)
    return a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
