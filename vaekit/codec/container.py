"""The .vkc file: entropy-coded images (lossy latents or a lossless bits-back archive) in one file.

    "VKC1"                      4 bytes, the magic
    header length               8 bytes, little-endian
    header                      xz-compressed JSON: format, version, mode ("lossy" or
                                "lossless"), the model's fingerprint, the table hash, quality,
                                image size, channels, latent dim, engine, names, original sizes
                                (lossy only: a lossless image is the model's size), and the
                                chunks: [images, uint32 words] of each
    chunks                      each chunk's ANS words, uint32 little-endian, one after another
    sha256                      32 bytes over everything before it

Written from a spill file, so memory stays flat in the number of images; read chunk by chunk
after the checksum is verified in one streaming pass, so a truncated, altered or foreign file is
refused (one line, a CodeFileError like the fixed-length code files') before any image is written.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np

from vaekit.codes.format import CodeFileError, FingerprintMismatch, MAX_ORIG_PIXELS, check_name
from vaekit.config import MAX_IMAGE_SIZE, MAX_Z_DIMS
from vaekit.fileio import atomic_writer, check_regular, loads_json

MAGIC = b"VKC1"
FORMAT = "vaekit-vkc"
VERSION = 1
MODES = ("lossy", "lossless")
MAX_HEADER = 1 << 30  # bytes of compressed header: far above any folder, below a hostile file's claim
MAX_JSON = 1 << 31  # bytes of header JSON once decompressed
_DIGEST = 32


class ArchiveError(CodeFileError):
    """A .vkc file that is truncated, altered, not a .vkc, or inconsistent."""


class ArchiveModelMismatch(ArchiveError, FingerprintMismatch):
    """A .vkc file written by another model (or with other tables) than the one decoding it."""


@dataclass
class Header:
    mode: str  # "lossy" or "lossless"
    fingerprint: str  # the encoding model's weights (ModelInfo.fingerprint)
    tables: str  # hash of the integer tables the symbols were coded with
    image_size: int
    channels: int
    latent_dim: int
    names: list[str]  # relative posix path of each image, in coding order
    orig_size: list[list[int]]  # [height, width] of each source image (lossless: left empty in the file)
    chunks: list[list[int]] = field(default_factory=list)  # [images, words] per chunk
    quality: int | None = None  # lossy only
    engine: dict = field(default_factory=dict)  # lossless: what computed the tables (engine, versions, threads)
    vaekit_version: str = ""

    def to_json(self) -> bytes:
        d = {"format": FORMAT, "version": VERSION, **self.__dict__}
        if self.mode == "lossless":
            d["orig_size"] = []  # every image is the model's size
        return json.dumps(d, sort_keys=True, separators=(",", ":")).encode()


def _check(h: Header, source: str) -> None:
    def bad(why: str):
        raise ArchiveError(f"{source} has an invalid header: {why}")

    if h.mode not in MODES:
        bad(f"mode {h.mode!r}")
    for name, v, lo, hi in (("image size", h.image_size, 16, MAX_IMAGE_SIZE), ("channels", h.channels, 1, 3),
                            ("latent dim", h.latent_dim, 1, MAX_Z_DIMS)):
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            bad(f"{name} {v!r}")
    if h.mode == "lossless" and not h.orig_size:
        h.orig_size = [[h.image_size, h.image_size]] * len(h.names) if isinstance(h.names, list) else []
    if not isinstance(h.names, list) or not isinstance(h.orig_size, list) or len(h.names) != len(h.orig_size):
        bad("names and sizes do not match")
    for size in h.orig_size:
        if not (isinstance(size, list) and len(size) == 2 and all(type(v) is int and v > 0 for v in size)
                and size[0] * size[1] <= MAX_ORIG_PIXELS):
            bad(f"original size {size!r:.40}")
    for name in h.names:
        check_name(name, source)
    if not all(isinstance(c, list) and len(c) == 2 and all(type(v) is int and v >= 0 for v in c) for c in h.chunks):
        bad("chunk table")
    if sum(c[0] for c in h.chunks) != len(h.names):
        bad("its chunks hold another number of images than it names")


def write(path: Path, header: Header, spill: Path) -> int:
    """Write the .vkc at `path` atomically from the header and the spill file of chunk words."""
    # xz, not zlib: a folder's names are most of the header, and xz stores numbered names in
    # ~0.3 bytes each where zlib needs ~2.3 (10,000 MNIST names; docs/codec.md)
    head = lzma.compress(header.to_json(), format=lzma.FORMAT_XZ, preset=9 | lzma.PRESET_EXTREME)
    h = hashlib.sha256()
    with atomic_writer(Path(path)) as f:
        for part in (MAGIC, len(head).to_bytes(8, "little"), head):
            f.write(part)
            h.update(part)
        with open(spill, "rb") as src:
            while block := src.read(1 << 20):
                f.write(block)
                h.update(block)
        f.write(h.digest())
    return Path(path).stat().st_size


def read_header(path: Path) -> tuple[Header, int]:
    """Verify the whole file (length, sha256) and parse its header: (header, offset of the chunks)."""
    source = f"{path}"
    size = check_regular(path, ".vkc file").st_size
    with open(path, "rb") as f:
        start = f.read(12)
        if len(start) < 12 or start[:4] != MAGIC:
            raise ArchiveError(f"{source} is not a vaekit .vkc file" + (" (truncated)" if start[:4] == MAGIC else ""))
        n = int.from_bytes(start[4:12], "little")
        if n > min(MAX_HEADER, size):
            raise ArchiveError(f"{source} is truncated or corrupt (a header of {n} bytes in a file of {size})")
        raw = f.read(n)
        _verify(f, start + raw, size, source)
    try:
        d = loads_json(_unxz(raw, source))
        if d.pop("format") != FORMAT or d.pop("version") != VERSION:
            raise ValueError("not this format or version")
        header = Header(**d)
    except (ValueError, TypeError, KeyError, lzma.LZMAError) as e:
        raise ArchiveError(f"{source} has an unreadable header: {e}") from None
    _check(header, source)
    if 12 + n + 4 * sum(c[1] for c in header.chunks) + _DIGEST != size:
        raise ArchiveError(f"{source} is truncated or has extra bytes")
    return header, 12 + n


def _unxz(raw: bytes, source: str) -> bytes:
    """The header's JSON, refusing a decompression bomb (a header claims at most MAX_JSON bytes)."""
    d = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    out = d.decompress(raw, max_length=MAX_JSON)
    if not d.eof:
        raise ArchiveError(f"{source} has an unreadable header (truncated, or larger than {MAX_JSON} bytes)")
    return out


def _verify(f: BinaryIO, head: bytes, size: int, source: str) -> None:
    if size < len(head) + _DIGEST:
        raise ArchiveError(f"{source} is truncated ({size} bytes)")
    h = hashlib.sha256(head)
    left = size - len(head) - _DIGEST
    while left > 0:
        block = f.read(min(left, 1 << 20))
        if not block:
            raise ArchiveError(f"{source} is truncated")
        h.update(block)
        left -= len(block)
    if f.read(_DIGEST) != h.digest():
        raise ArchiveError(f"{source} is damaged or was modified: its checksum does not match its contents")


def iter_chunks(path: Path, header: Header, offset: int) -> Iterator[tuple[int, np.ndarray]]:
    """(images, words) of each chunk, read one at a time."""
    with open(path, "rb") as f:
        f.seek(offset)
        for count, words in header.chunks:
            data = f.read(4 * words)
            if len(data) != 4 * words:
                raise ArchiveError(f"{path} is truncated")
            yield count, np.frombuffer(data, "<u4").astype(np.uint32)


class Spill:
    """The chunk words of a .vkc being written, in a temporary file beside it (removed on close)."""

    def __init__(self, out: Path):
        self.path = Path(out).with_name(f".{Path(out).name}.{os.getpid()}.chunks")
        self.chunks: list[list[int]] = []
        self._f = open(self.path, "wb")

    def add(self, count: int, words: np.ndarray) -> None:
        self._f.write(np.ascontiguousarray(words, "<u4").tobytes())
        self.chunks.append([int(count), int(len(words))])

    def finish(self) -> Path:
        self._f.close()
        return self.path

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()
        self.path.unlink(missing_ok=True)

