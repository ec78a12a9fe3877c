"""Writing a code file whose codes never sit in memory at once (`vaekit encode` on large folders).

The latents come in chunks, read again for each pass: q8's range, the checksum, the bytes.
The result is byte for byte what `format.to_bytes` gives for the same codes.
"""

from __future__ import annotations

import hashlib
from typing import BinaryIO, Callable, Iterator

import numpy as np

from vaekit.codes.format import (DTYPES, FORMAT, PRECISIONS, VERSION, CodeFile, check_finite, header_json, safetensors_layout, little_endian,
                                 store, validate, q8_range)
from vaekit.errors import BadInput


def write_streamed(f: BinaryIO, chunks: Callable[[], Iterator[np.ndarray]], names: list[str], orig_size: np.ndarray,
                  precision: str, fingerprint: str, image_size: int, channels: int, latent_dim: int) -> int:
    """Write a code file to `f` from float32 latents that come in chunks, never all in memory.

    `chunks()` yields (n, D) latents in order and is called again for each pass (q8's range,
    the checksum, the bytes). The file is byte for byte what `save` writes for the same codes."""
    if precision not in PRECISIONS:
        raise BadInput(f"invalid precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    scale = offset = None
    if precision == "q8":
        lo = hi = np.zeros(latent_dim, np.float32)
        for i, z in enumerate(chunks()):
            check_finite(z)
            lo, hi = (z.min(0), z.max(0)) if i == 0 else (np.minimum(lo, z.min(0)), np.maximum(hi, z.max(0)))
        scale, offset = q8_range(lo, hi)
    n = len(names)
    shape_only = np.broadcast_to(np.zeros((), DTYPES[precision]), (n, latent_dim))  # no memory: checks shapes
    probe = CodeFile(shape_only, names, np.asarray(orig_size, np.int32), precision, fingerprint, image_size, channels,
                     scale, offset)
    validate(probe, "new code file")
    header = header_json(probe)
    small = {"orig_size": np.ascontiguousarray(probe.orig_size, dtype=np.int32)}
    if precision == "q8":
        small["scale"], small["offset"] = scale, offset
    codes_spec = np.zeros((0, latent_dim), DTYPES[precision])
    h = hashlib.sha256(f"{FORMAT}|{VERSION}|{header}|".encode())
    for name in sorted([*small, "codes"]):
        a = codes_spec if name == "codes" else small[name]
        shape = [n, latent_dim] if name == "codes" else list(a.shape)
        h.update(f"{name}|{a.dtype.newbyteorder('<').str}|{shape}|".encode())
        parts = (little_endian(_stored(z, precision, scale, offset)) for z in chunks()) if name == "codes" else [little_endian(a)]
        for raw in parts:
            h.update(raw)
    meta = {"format": FORMAT, "version": str(VERSION), "header": header, "sha256": h.hexdigest()}
    layout = {**small, "codes": shape_only[:0]}
    shapes = {k: ([n, latent_dim] if k == "codes" else list(v.shape)) for k, v in layout.items()}
    head, order = safetensors_layout(layout, shapes, meta)
    f.write(head)
    size = len(head)
    for name in order:
        for raw in ((little_endian(_stored(z, precision, scale, offset)) for z in chunks()) if name == "codes" else [little_endian(small[name])]):
            f.write(raw)
            size += len(raw)
    return size


def _stored(z: np.ndarray, precision: str, scale, offset) -> np.ndarray:
    z = np.asarray(z, np.float32)
    check_finite(z)
    return store(z, precision, scale, offset)
