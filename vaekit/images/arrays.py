"""What a Python caller may pass as images, checked at the API edge like the CLI checks its options.

`Model.encode`, `.score`, `.reconstruct` and `.iter_scores` take images as arrays or as files.
`user_images` tells the two apart (a path, a folder, a list or any iterable of them; or array
data) and `as_images` turns array data into what the engines expect, uint8 (N, C, H, W):

- uint8 is taken as it is; other integer types only when every value lies in 0..255;
- floats only when finite and in [0, 1] (what `Model.decode` returns), converted to uint8 by
  rounding x * 255: never divided by 255 a second time, never silently rescaled;
- bool, complex, text and object arrays are refused, and so is any other shape.

Each refusal is a BadInput (a VaekitError) with a one-line message that names the value and
what is allowed. Numpy only, no torch: both engines use it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from itertools import chain, islice
from pathlib import Path

import numpy as np

from vaekit.config import MAX_BATCH_SIZE
from vaekit.errors import BadInput

WHAT = "images: a uint8 array (N, C, H, W), floats in [0, 1], an image file, a folder, or a list of them"


def check_int(value, name: str, minimum: int = 0, maximum: int | None = None) -> int:
    """`value` as an int when it is an integer (not a bool, a float or text) in range; else BadInput."""
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if ok and value >= minimum and (maximum is None or value <= maximum):
        return int(value)
    bound = f"an integer >= {minimum}" + (f" and <= {maximum}" if maximum is not None else "")
    raise BadInput(f"{name} must be {bound}, got {value!r}")


def check_batch_size(value, default: int | None = None) -> int:
    """A batch size: an integer from 1 to MAX_BATCH_SIZE; None means `default` (when given).
    0, 1.5, "8" and True are refused, not read as the default."""
    if value is None and default is not None:
        value = default
    return check_int(value, "batch_size", 1, MAX_BATCH_SIZE)


def _is_path(v) -> bool:
    return isinstance(v, (str, os.PathLike))


def user_images(x, channels: int, size: int) -> tuple[list[Path] | None, np.ndarray | None]:
    """(paths, None) when `x` names image files or folders, (None, uint8 images) when it is array
    data (checked by `as_images`). A generator is read once, here."""
    if x is None:
        raise BadInput(f"no images given (None); expected {WHAT}")
    if _is_path(x):
        if not str(x):  # Path("") is the current folder: never what an empty name meant
            raise BadInput("no images given (an empty name is not the current folder)")
        return [Path(x)], None
    if isinstance(x, np.ndarray):
        return None, as_images(x, channels, size)
    if isinstance(x, (bytes, bytearray, dict)) or not isinstance(x, Iterable):
        raise BadInput(f"invalid images of type {type(x).__name__}; expected {WHAT}")
    items = list(x)
    if not items:
        raise BadInput(f"no images given (an empty {type(x).__name__}); expected {WHAT}")
    paths = [_is_path(v) for v in items]
    if all(paths):
        if not all(str(v) for v in items):
            raise BadInput("no images given (an empty name is not the current folder)")
        return [Path(v) for v in items], None
    if any(paths):
        raise BadInput("a list of images must hold only paths or only arrays, not both")
    return None, as_images(items, channels, size)


_NONE = object()


def user_batches(x, channels: int, size: int, batch_size: int) -> tuple[list[Path] | None, Iterator[np.ndarray] | None]:
    """`user_images` for a caller who reads the images `batch_size` at a time (`Model.iter_scores`):
    (paths, None) as there; else (None, uint8 batches). A one-pass iterator of arrays (a generator)
    is read one batch at a time, never held whole; each batch is checked as `as_images` checks."""
    if not isinstance(x, Iterator):
        paths, arr = user_images(x, channels, size)
        return paths, None if arr is None else (arr[i : i + batch_size] for i in range(0, len(arr), batch_size))
    first = next(x, _NONE)
    if first is _NONE:
        raise BadInput(f"no images given (an empty {type(x).__name__}); expected {WHAT}")
    if _is_path(first):
        return user_images([first, *x], channels, size)
    return None, _batches(chain([first], x), channels, size, batch_size)


def _batches(items: Iterator, channels: int, size: int, batch_size: int) -> Iterator[np.ndarray]:
    """Each batch checked by `as_images`, and all of one kind (uint8, other integers, floats): a list
    mixing them is refused whole, so a stream that changes kind is refused at the change (h5)."""
    first = None
    while batch := list(islice(items, batch_size)):
        if any(_is_path(v) for v in batch):
            raise BadInput("a list of images must hold only paths or only arrays, not both")
        try:
            kinds = {_kind(np.asarray(v).dtype) for v in batch}
        except (ValueError, TypeError, RuntimeError):  # ragged, or a tensor that needs grad: as_images says which
            kinds = first or set()
        first = first or kinds
        if len(kinds | first) > 1:
            raise BadInput(f"the images are not all of one kind ({', '.join(sorted(kinds | first))}): give them all "
                           "as uint8, or all as floats in [0, 1]")
        yield as_images(batch, channels, size)


def _kind(dtype: np.dtype) -> str:
    return "uint8" if dtype == np.uint8 else {"f": "float", "i": "integer", "u": "integer"}.get(dtype.kind, str(dtype))


def as_images(x, channels: int, size: int) -> np.ndarray:
    """Array data -> uint8 (N, channels, size, size); BadInput for any other dtype, value or shape."""
    want = f"(N, {channels}, {size}, {size})"
    if isinstance(x, (list, tuple)):
        shapes = {np.shape(v) for v in x}
        if len(shapes) > 1:
            raise BadInput(f"the images differ in shape ({', '.join(map(str, sorted(shapes)[:3]))}); "
                           f"every image must be ({channels}, {size}, {size})")
    if _masked(x):
        # np.asarray drops the mask: the hidden values were scored as if they were pixels (h5, 2026-12-07)
        raise BadInput("images with masked pixels are not accepted (every pixel is read); pass x.filled(value)")
    try:
        a = np.asarray(x)
    except (ValueError, TypeError, RuntimeError) as e:  # RuntimeError: a torch tensor that needs grad
        raise BadInput(f"images cannot be read as one array ({e}); expected {want}") from None
    _check_kind(a)  # the shape before the values: latent codes given as images (reconstruct(z)) were told
    # their floats lie outside [0, 1] and to pass x.astype(np.uint8), not that they are no images
    if a.ndim == 3 and a.shape == (channels, size, size):
        raise BadInput(f"expected a batch of images {want}, got one image {a.shape}: pass x[None]")
    if a.ndim != 4 or a.shape[1:] != (channels, size, size):
        raise BadInput(f"expected images of shape {want}, got {a.shape}")
    return _as_uint8(a)


def _masked(x, depth: int = 0) -> bool:
    """Whether `x` holds a masked array with a pixel masked: itself, or an image or channel of a
    list of them ([[channel]] too: np.asarray dropped the masks of a list's channels as well)."""
    if isinstance(x, np.ma.MaskedArray):
        return bool(np.ma.is_masked(x))
    return depth < 2 and isinstance(x, (list, tuple)) and any(_masked(v, depth + 1) for v in x)


def _check_kind(a: np.ndarray) -> None:
    """BadInput for a dtype that never holds images (bool, complex, text, bytes, object)."""
    kind = a.dtype.kind
    if kind not in "iuf":
        names = {"b": "bool", "c": "complex", "U": "text", "S": "bytes", "O": "object"}
        raise BadInput(f"images of dtype {a.dtype} ({names.get(kind, kind)}) are not accepted; expected {WHAT}")


def _as_uint8(a: np.ndarray) -> np.ndarray:
    _check_kind(a)
    if a.dtype == np.uint8:
        return a
    if a.dtype.kind in "iu":
        if a.size and (a.min() < 0 or a.max() > 255):
            raise BadInput(f"{a.dtype} images must hold values in 0..255, got {a.min()}..{a.max()}")
        return a.astype(np.uint8)
    if not np.isfinite(a).all():  # floats
        raise BadInput("float images must be finite, got NaN or infinity")
    if a.size and (a.min() < 0 or a.max() > 1):
        # each end as its dtype's shortest exact text: 1.0000001 at .4g read "got 0..1", values in range
        lo, hi = (str(v).removesuffix(".0") for v in (a.min(), a.max()))
        raise BadInput(f"float images must lie in [0, 1] (as Model.decode returns them), got {lo}..{hi}; "
                       f"for 0..255 data pass x.astype(np.uint8)")
    return np.rint(a * 255).astype(np.uint8)  # as images.to_uint8 does


def as_latents(z, latent_dim: int) -> np.ndarray:
    """Latent codes -> float32 (N, latent_dim), finite; BadInput for complex, text or other shapes."""
    try:
        a = np.asarray(z)
    except (ValueError, TypeError) as e:
        raise BadInput(f"latent codes cannot be read as one array ({e})") from None
    if a.dtype.kind not in "iuf" or a.dtype == np.bool_:
        raise BadInput(f"latent codes must be real numbers, got dtype {a.dtype}")
    if a.ndim != 2 or a.shape[1] != latent_dim:
        raise BadInput(f"expected latent codes of shape (N, {latent_dim}), got {a.shape}")
    if not np.isfinite(a).all():
        raise BadInput("latent codes must be finite, got NaN or infinity")
    big, most = float(np.abs(a).max(initial=0)), float(np.finfo(np.float32).max)
    if big > most:  # finite, but the cast to float32 would make it infinite (a numpy warning)
        raise BadInput(f"latent codes must fit in float32 (at most {most:.4g}), got {big:.4g}")
    return a.astype(np.float32)
