"""The .vkc file: entropy-coded images (lossy latents or a lossless bits-back archive) in one file.

    "VKC3"                      4 bytes, the magic (its last byte the format's version)
    header length               a LEB128 varint
    header                      vaekit.codec.header: mode, quality, channels, image size, latent
                                size, the model's fingerprint and the table hash (8 bytes each),
                                the chunk table [images, uint32 words], and the names (NUL-
                                separated), original sizes (where not the model's) and engine
                                (lossless, JSON), compressed
    chunks                      each chunk's ANS words, uint32 little-endian, one after another
    checksum                    the first 8 bytes of the sha256 of everything before it

Format 2 ("VKC2": the names in the JSON, a 16-byte checksum) is still read; files are written in
format 3, whose one-image files are 22 bytes smaller (48 bytes of overhead with a 9-character name).

Written from a spill file, so memory stays flat in the number of images; read chunk by chunk
after the checksum is verified in one streaming pass, so a truncated, altered or foreign file is
refused (one line, a CodeFileError like the fixed-length code files') before any image is written.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

import numpy as np

from vaekit.codec.header import MODES, NAMES_PER_BYTE, Header, Reader, expand, pack, unpack_fixed, varint
from vaekit.codes.format import MAX_ORIG_PIXELS, CodeFileError, FingerprintMismatch, check_name, too_elongated
from vaekit.config import MAX_IMAGE_SIZE, MAX_Z_DIMS
from vaekit.errors import cannot_write
from vaekit.fileio import atomic_writer, check_regular
from vaekit.fileio.outputs import cut_name
from vaekit.fileio.leftovers import open_spill, partial_tag, remove_stale

MAGIC = b"VKC3"
ENGINES = ("torch", "onnxruntime")  # what a lossless header's engine may name (ModelInfo.engine)
CHUNK = 1024  # images per ANS stream: bounded memory, and a lossless chunk's start costs < 0.01 bit per image
# ... and at most this many sub-pixels (1024 images of 32 x 32 RGB): a lossy chunk is decoded whole,
# ~40 bytes a sub-pixel (1024 images of 128 px RGB took 2.6 GB to encode, 1.5 GB to decode)
CHUNK_SUBPIXELS = CHUNK * 32 * 32 * 3
MAX_HEADER = 1 << 30  # bytes of header: far above any folder, below a hostile file's claim
# bytes of sha256 kept, per format version: against damage, not a signature (a file that anyone
# could have rewritten, checksum included, is not authenticated by any length of it)
DIGESTS = {b"VKC2": 16, b"VKC3": 8}


class ArchiveError(CodeFileError):
    """A .vkc file that is truncated, altered, not a .vkc, or inconsistent."""


class ArchiveModelMismatch(ArchiveError, FingerprintMismatch):
    """A .vkc file written by another model (or with other tables) than the one decoding it."""


def _check(h: Header, source: str) -> None:
    def bad(why: str):
        raise ArchiveError(f"{source} has an invalid header: {why}")

    if h.mode not in MODES:
        bad(f"mode {h.mode!r}")
    for name, v, lo, hi in (("image size", h.image_size, 16, MAX_IMAGE_SIZE), ("channels", h.channels, 1, 3),
                            ("latent dim", h.latent_dim, 1, MAX_Z_DIMS), ("quality", h.quality or 1, 1, 255)):
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            bad(f"{name} {v!r}")
    if (h.mode == "lossy") != (h.quality is not None) or not isinstance(h.engine, dict):
        bad("quality or engine does not fit the mode")
    if h.mode == "lossless" and h.engine.get("engine") not in ENGINES:  # else "written with the None engine"
        bad(f"it names the engine {h.engine.get('engine')!r:.40}, not one of {', '.join(ENGINES)}")
    if not isinstance(h.names, list) or not isinstance(h.orig_size, list) or len(h.names) != len(h.orig_size):
        bad("names and sizes do not match")
    for size in h.orig_size:
        if not (isinstance(size, list) and len(size) == 2 and all(type(v) is int and v > 0 for v in size)
                and size[0] * size[1] <= MAX_ORIG_PIXELS):
            bad(f"original size {size!r:.40}")
    hit = too_elongated(h.orig_size, h.image_size)
    if hit is not None:  # decode --size original would build it whole: a forged strip was Pillow's MemoryError
        bad(f"original size {h.orig_size[hit[0]]} is too elongated for an image vaekit encodes ({hit[1]} pixels "
            f"at {h.image_size} px)")
    if sum(c[0] for c in h.chunks) != len(h.names):
        bad("its chunks hold another number of images than it names")
    for name in h.names:  # a format-2 file's JSON may name a list or an object, which set() below cannot hash
        if not isinstance(name, str):
            check_name(name, source)  # "holds an unsafe image name", as it said before the repeated names' check
    if len(set(h.names)) != len(h.names):  # before each name's path checks (~25 us a name): a forged
        # table of millions of one name took minutes to reach "two images would be written to the same file"
        seen: set[str] = set()
        twice = next(n for n in h.names if n in seen or seen.add(n))
        bad(f"it names the image {twice!r:.80} more than once (vaekit writes each name once)")
    for name in h.names:
        check_name(name, source)


def _check_chunks(h: Header, source: str) -> None:
    """The chunk table's own bounds, before any name is expanded: a forged table of one huge lossy
    chunk built millions of names (seconds, hundreds of MB) before this refused it."""
    def bad(why: str):
        raise ArchiveError(f"{source} has an invalid header: {why}")

    for name, v, lo, hi in (("image size", h.image_size, 16, MAX_IMAGE_SIZE), ("channels", h.channels, 1, 3)):
        if not lo <= v <= hi:  # as _check says it; chunk_images divides by them
            bad(f"{name} {v!r}")
    if not h.chunks:
        bad("it holds no image (vaekit writes none such)")
    if any(c[0] < 1 or c[1] < 1 for c in h.chunks):  # each still walked every residual context: a DoS
        bad("an empty chunk (no images or no words; vaekit writes none)")
    most = max(CHUNK, chunk_images(h.channels, h.image_size))  # what any vaekit wrote (1024 before the bound)
    if h.mode == "lossy" and any(c[0] > most for c in h.chunks):
        bad(f"a chunk of {max(c[0] for c in h.chunks)} images; vaekit writes at most {most} at "
            f"{h.image_size} px (a lossy chunk is decoded whole)")


def chunk_images(channels: int, image_size: int, chunk: int | None = None) -> int:
    """Images per chunk at this size: `chunk` (all of CHUNK_SUBPIXELS when None), at most
    CHUNK_SUBPIXELS sub-pixels, one image at least."""
    fit = max(1, CHUNK_SUBPIXELS // (channels * image_size * image_size))
    return fit if chunk is None else min(chunk, fit)


def write(path: Path, header: Header, spill: Path, skip: int = 0, replace: bool = True) -> int:
    """Write the .vkc at `path` atomically from the header and the spill file of chunk words
    (which begin `skip` bytes into it); replace=False: not over a file put there meanwhile."""
    head = pack(header)
    size = len(MAGIC) + len(varint(len(head))) + len(head) + os.path.getsize(spill) - skip + DIGESTS[MAGIC]
    if len(header.names) > max(1024, NAMES_PER_BYTE[header.mode] * size):  # what read_header refuses
        from vaekit.errors import BadInput

        raise BadInput(f"{len(header.names)} images in {size} bytes are more than a .vkc may name (at most "
                       f"{NAMES_PER_BYTE[header.mode]} a byte, so that a forged file cannot claim millions for "
                       "nothing): encode them at a higher quality")
    h = hashlib.sha256()
    with atomic_writer(Path(path), replace=replace) as f:
        for part in (MAGIC, varint(len(head)), head):
            f.write(part)
            h.update(part)
        with open(spill, "rb") as src:
            src.seek(skip)
            while block := src.read(1 << 20):
                f.write(block)
                h.update(block)
        f.write(h.digest()[:DIGESTS[MAGIC]])
    return Path(path).stat().st_size


def read_header(path: Path, check: Callable[[Header], None] | None = None) -> tuple[Header, int]:
    """Verify the whole file's checksum, then parse its header: (header, offset of the chunks).
    `check(header)`, before the names are expanded (the header has none yet), may refuse the file
    cheaply: a foreign model's file costs nothing however many names it claims."""
    source = f"{path}"
    size = check_regular(path, ".vkc file").st_size
    with open(path, "rb") as f:
        start = f.read(4)
        if len(start) < 4 or start not in DIGESTS:
            other = start[:3] == MAGIC[:3] and len(start) == 4
            raise ArchiveError(f"{source} is not a .vkc file this vaekit reads" + (" (another format version)" if other else ""))
        version, digest = start[3] - ord("0"), DIGESTS[start]
        # the checksum sits at the file's end, so it is checked before any field is read: a damaged
        # header length or chunk table was trusted to word the refusal ("truncated", when one bit of
        # a word count had flipped)
        _verify(f, size, source, digest)
        try:
            f.seek(4)
            r = Reader(f.read(10))  # the header length, a varint of at most 10 bytes
            n, offset = r.varint(min(MAX_HEADER, size - 4 - digest)), 4 + r.pos  # it fits before the checksum
            f.seek(offset)
            header, blob = unpack_fixed(f.read(n))
            expected = offset + n + 4 * sum(c[1] for c in header.chunks) + digest
        except (ValueError, TypeError, KeyError, IndexError) as e:
            raise ArchiveError(f"{source} has an unreadable header: {e}") from None
    if expected != size:  # a checksum that fits: written so, not damaged
        raise ArchiveError(f"{source} has an invalid header: it describes a file of {expected} bytes, not {size}")
    if check is not None:
        check(header)
    _check_chunks(header, source)  # before the names: the table alone says a forged file is no vaekit file
    try:
        expand(header, blob, version, size)
    except (ValueError, TypeError, KeyError, IndexError) as e:
        raise ArchiveError(f"{source} has an unreadable header: {e}") from None
    _check(header, source)
    return header, offset + n


def _verify(f: BinaryIO, size: int, source: str, digest: int) -> None:
    """The sha256 of the file's bytes before its last `digest` against those bytes, streamed."""
    f.seek(0)
    h = hashlib.sha256()
    left = size - digest
    while left > 0:
        block = f.read(min(left, 1 << 20))
        if not block:
            break  # shrunk while read
        h.update(block)
        left -= len(block)
    if left or size < 5 + digest or f.read(digest) != h.digest()[:digest]:
        raise ArchiveError(f"{source} is truncated, damaged or was modified: its checksum does not match its contents")


def iter_chunks(path: Path, header: Header, offset: int) -> Iterator[tuple[int, np.ndarray]]:
    """(images, words) of each chunk, read one at a time."""
    with open(path, "rb") as f:
        f.seek(offset)
        for count, words in header.chunks:
            data = f.read(4 * words)
            if len(data) != 4 * words:
                raise ArchiveError(f"{path} is truncated")
            yield count, np.frombuffer(data, "<u4").astype(np.uint32)


def _spill_name(out: Path) -> str:
    """The output's name as its spill file carries it: cut to leave room for the spill's own
    bytes (a process id, a token, .chunks), so any name a file system holds can be written (a
    250-byte one was refused: "cannot write .NAME.PID-TOKEN.chunks: File name too long")."""
    return cut_name(out.name, 48)


class Spill:
    """The chunk words of a .vkc being written, in a temporary file beside it (removed on close)."""

    def __init__(self, out: Path):
        self.out = Path(out)  # what a failed write names: the .vkc, not this temporary file
        name = _spill_name(Path(out))
        self.path = Path(out).with_name(f".{name}.{os.getpid()}-{os.urandom(3).hex()}.chunks")
        remove_stale(self.path.parent, f".{name}.", ".chunks", folders=False)  # a killed encode's
        self.chunks: list[list[int]] = []
        self._f = open_spill(self.path)  # begins with the tag that lets a later encode know a killed one's
        self.start = len(partial_tag())

    def add(self, count: int, words: np.ndarray) -> None:
        try:
            self._f.write(np.ascontiguousarray(words, "<u4").tobytes())
        except OSError as e:
            raise cannot_write(e, self.out) from None
        self.chunks.append([int(count), int(len(words))])

    def finish(self) -> Path:
        self._f.close()
        return self.path

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()
        self.path.unlink(missing_ok=True)
