"""The .vkc header, in as few bytes as a one-image file can afford.

Fixed fields are single bytes, LEB128 varints and the two 64-bit hashes as raw bytes; what varies
with the folder is stored raw, raw-deflated or raw-LZMA2'd, whichever is smallest: the names,
NUL-separated (a name never holds a NUL; UTF-8, or the file's own bytes where it is not), then only where there is any, two NULs and JSON of the
original sizes that differ from the model's and a lossless archive's engine. A one-image header is
~31 bytes plus its name, where JSON with hex hashes cost ~320 (docs/codec.md); 10,000 numbered
names take ~0.3 bytes each (LZMA2). Format 2 (.vkc files of "VKC2") kept the names in the JSON too;
`unpack(data, version=2)` still reads it.
"""

from __future__ import annotations

import json
import lzma
import zlib
from dataclasses import dataclass, field

MODES = ("lossy", "lossless")
MAX_META = 1 << 31  # bytes of the variable part once decompressed
NAME_BYTES = 4096  # the longest stored name, in bytes (Linux's PATH_MAX)
# the most the names may expand to, per byte of the whole file: every image costs payload bytes
# besides its compressed name; 20,000 names under one 3,000-byte folder path expand 1,650 times
# their LZMA'd bytes (docs/codec.md), and a real file holds more than its names
EXPANSION = 4096
# the most names per byte of the whole file: each name becomes a Python str (~50-60 bytes) before
# anything else is checked, so a byte bound alone let 3-byte names ("ab\0" * N, LZMA'd) build
# ~20 bytes of objects per expanded byte (a 260 KB file passed 4 GB of RSS). An honest lossless
# image pays its 16-bit CRC at least (2,000 blank 16 px images: 2.54 bytes each); an honest lossy
# one may cost almost nothing but its name: 200,000 blank images in 200 folders of 1,000, quality 1,
# latent-dim 1, took 0.107 bytes each (9.3 a byte; 1,000 x 1,000 numbered names LZMA to 0.077
# each). The bounds leave about three times the densest honest file; encode refuses to write past them
NAMES_PER_BYTE = {"lossy": 32, "lossless": 1}
V2_QUOTES = 4096  # quotes a version-2 file's JSON may hold besides its names' (keys, the engine record)
# a file name that is not UTF-8 (POSIX allows any bytes) is a surrogate-escaped str in Python: its
# bytes are stored as they are and come back as the same str, so decode writes the same file name
NAMES = "surrogateescape"
_LZMA2 = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]


@dataclass
class Header:
    mode: str  # "lossy" or "lossless"
    fingerprint: str  # the encoding model's weights (ModelInfo.fingerprint), 16 hex digits
    tables: str  # hash of the integer tables the symbols were coded with, 16 hex digits
    image_size: int
    channels: int
    latent_dim: int
    names: list[str]  # relative posix path of each image, in coding order
    orig_size: list[list[int]]  # [height, width] of each source image
    chunks: list[list[int]] = field(default_factory=list)  # [images, words] per chunk
    quality: int | None = None  # lossy only
    engine: dict = field(default_factory=dict)  # lossless: what computed the tables (engine, versions, threads)


def varint(n: int) -> bytes:
    """n >= 0 as an unsigned LEB128 varint (7 bits a byte, low bits first)."""
    if n < 0:
        raise ValueError(f"cannot store {n} as a varint")
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


class Reader:
    """Reads a header's fields in order from bytes, raising on a short or malformed field."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ValueError("the header ends early")
        self.pos += n
        return self.data[self.pos - n : self.pos]

    def varint(self, limit: int = 1 << 40) -> int:
        n = shift = 0
        while True:
            b = self.take(1)[0]
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
            if shift > 63:
                raise ValueError("a number in the header is too long")
        if n > limit:
            raise ValueError(f"a number in the header is out of range ({n})")
        return n


def _lzma_window(n: int) -> list[dict]:
    """_LZMA2 with a window just large enough for `n` bytes: the preset's 64 MiB window took
    ~60 ms and tens of MB to set up for a few hundred bytes of names, and a window that holds the
    whole input gives the same bytes (measured: 46 B to 0.9 MB of names). Any decoder reads it:
    a window only has to be at least the encoder's."""
    return [{**_LZMA2[0], "dict_size": min(1 << 26, max(4096, 1 << (n - 1).bit_length()))}]


def _compress(raw: bytes) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    options = [b"\0" + raw, b"\1" + c.compress(raw) + c.flush(),
               b"\2" + lzma.compress(raw, lzma.FORMAT_RAW, filters=_lzma_window(len(raw)))]
    return min(options, key=len)


def _decompress(blob: bytes, limit: int = MAX_META, names: tuple[bytes, int, int] | None = None) -> bytes:
    try:
        return _inflate(blob, limit, names)
    except (lzma.LZMAError, zlib.error) as e:
        raise ValueError(f"the header's names are damaged ({e})") from None


PIECE = 1 << 20  # bytes inflated at a time: the names are counted as they come, not once all are there


def _inflate(blob: bytes, limit: int, names: tuple[bytes, int, int] | None = None) -> bytes:
    """The variable part, inflated PIECE bytes at a time to at most `limit` bytes and, given
    `names` = (mark, most marks, most names), at most that many of the byte `mark` (a name's
    separator, NUL; in a version-2 file's JSON, a quote): a table of millions of tiny names is
    refused when its count passes what the file can hold, before the rest is inflated."""
    mark, most, shown = names or (b"\0", -1, 0)

    def refuse_many(count: int) -> None:
        if names is not None and count > most:
            raise ValueError(f"the header's names are larger than the file can hold ({shown} names at most)")

    method, body = blob[:1], blob[1:]
    if method == b"\0":
        refuse_many(_marks(body, mark, b""))
        return body
    if method == b"\1":
        d = zlib.decompressobj(-15)
        step = lambda: d.decompress(d.unconsumed_tail, min(PIECE, limit - size))  # noqa: E731
        first = d.decompress(body, min(PIECE, limit))
    elif method == b"\2":
        d = lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=_LZMA2)
        step = lambda: d.decompress(b"", max_length=min(PIECE, limit - size))  # noqa: E731
        first = d.decompress(body, max_length=min(PIECE, limit))
    else:
        raise ValueError(f"unknown compression {method!r}")
    pieces, size, count = [first], len(first), _marks(first, mark, b"")
    while not d.eof and size < limit and (names is None or count <= most) and (piece := step()):
        count += _marks(piece, mark, pieces[-1][-1:])
        pieces.append(piece)
        size += len(piece)
    refuse_many(count)
    if not d.eof:
        raise ValueError(f"the header's names are truncated or larger than its {limit} bytes for its images")
    return b"".join(pieces)


def _marks(piece: bytes, mark: bytes, before: bytes) -> int:
    """The bytes `mark` in `piece` not escaped by a backslash (a quote in a JSON string is \\"; a
    name holding a quote must not count as more names): `before`, the byte before the piece. An
    escaped backslash before a string's closing quote is taken for an escape, so a string counts
    one quote at least: never more names than counted."""
    if mark == b"\0":
        return piece.count(mark)
    return piece.count(mark) - piece.count(b"\\" + mark) - (before == b"\\" and piece[:1] == mark)


def names_limit(images: int, file_bytes: int | None = None) -> int:
    """The most bytes the variable part may expand to for a file of `images` images: a name of up
    to NAME_BYTES, its original size in JSON, and room for the engine; and, given the file's size,
    at most EXPANSION times it (at least 1 MiB). A small file whose names claim millions of images
    (a names bomb) is refused at this size, not after expanding them."""
    limit = min(MAX_META, images * (NAME_BYTES + 64) + (1 << 16))
    return limit if file_bytes is None else min(limit, max(1 << 20, EXPANSION * file_bytes))


def _extras(h: Header) -> dict:
    meta: dict = {}
    if any(list(s) != [h.image_size, h.image_size] for s in h.orig_size):
        meta["sizes"] = h.orig_size
    if h.engine:
        meta["engine"] = h.engine
    return meta


def stored_bytes(meta: dict) -> int:
    """The bytes a JSON object takes in a header's variable part, compressed as `pack` compresses
    it (measured alone: beside the names it may take a few bytes fewer)."""
    return len(_compress(json.dumps(meta, separators=(",", ":")).encode()))


def _pack_names(h: Header) -> bytes:
    """Format 3's variable part: NUL-separated names, then b"\0\0" + JSON of the extras, if any."""
    if any(not n or "\0" in n for n in h.names):
        raise ValueError("a stored name must be non-empty and hold no NUL")
    extras = _extras(h)
    raw = b"\0".join(n.encode("utf-8", NAMES) for n in h.names)
    return raw + (b"\0\0" + json.dumps(extras, separators=(",", ":")).encode() if extras else b"")


def _unpack_names(raw: bytes, images: int | None = None, most: int | None = None) -> dict:
    from vaekit.fileio import loads_json

    end = raw.find(b"\0\0")
    count = raw.count(b"\0", 0, end if end >= 0 else len(raw)) + 1 if raw else 0  # before any str is built
    if images is not None and count != images:
        raise ValueError(f"it names {count} images, but its chunks hold {images}")
    if most is not None and count > most:
        raise ValueError(f"the header's names are larger than the file can hold ({most} names at most)")
    meta = loads_json(raw[end + 2:]) if end >= 0 else {}
    if not isinstance(meta, dict) or "names" in meta:
        raise ValueError("the header's extra fields are not an object")
    return {**meta, "names": _split_names(raw, end if end >= 0 else len(raw))}


def _split_names(raw: bytes, stop: int) -> list[str]:
    """The NUL-separated names in raw[:stop], one slice at a time: no copy of all of them as bytes
    beside the strings (names that expand to hundreds of MB held four copies at once)."""
    out: list[str] = []
    start = 0
    while stop:
        i = raw.find(b"\0", start, stop)
        out.append(raw[start:stop if i < 0 else i].decode("utf-8", NAMES))
        if i < 0:
            break
        start = i + 1
    return out


def pack(h: Header) -> bytes:
    """The header's bytes in format 3 (ValueError for hashes that are not 16 hex digits)."""
    blob = _compress(_pack_names(h))
    parts = [bytes([MODES.index(h.mode), h.quality or 0, h.channels]), varint(h.image_size), varint(h.latent_dim),
             bytes.fromhex(h.fingerprint), bytes.fromhex(h.tables), varint(len(h.chunks))]
    if len(parts[3]) != 8 or len(parts[4]) != 8:
        raise ValueError("fingerprint and table hash must be 16 hex digits")
    parts += [varint(v) for c in h.chunks for v in c]
    return b"".join(parts) + varint(len(blob)) + blob


def unpack(data: bytes, version: int = 3) -> Header:
    """Parse header bytes of format `version` (2 or 3); ValueError (or KeyError, TypeError) on
    anything malformed."""
    h, blob = unpack_fixed(data)
    expand(h, blob, version)
    return h


def unpack_fixed(data: bytes) -> tuple[Header, bytes]:
    """The fixed fields (no names yet: `expand` adds them) and the compressed variable part;
    cheap, so a caller can check the model before expanding names."""
    r = Reader(data)
    mode, quality, channels = r.take(3)
    image_size, latent_dim = r.varint(1 << 20), r.varint(1 << 30)
    fingerprint, tables = r.take(8).hex(), r.take(8).hex()
    chunks = [[r.varint(), r.varint()] for _ in range(r.varint(1 << 32))]
    blob = r.take(r.varint(len(data)))
    if r.pos != len(data) or mode >= len(MODES):
        raise ValueError("the header has extra bytes or an unknown mode")
    return Header(MODES[mode], fingerprint, tables, image_size, channels, latent_dim, [], [], chunks,
                  quality or None), blob


def expand(h: Header, blob: bytes, version: int = 3, file_bytes: int | None = None) -> None:
    """Fill in `h`'s names, original sizes and engine from the variable part `blob`, expanded to
    at most names_limit(the images its chunk table holds, the file's size)."""
    from vaekit.fileio import loads_json

    images = sum(c[0] for c in h.chunks)
    most = images if file_bytes is None else min(images, max(1024, NAMES_PER_BYTE[h.mode] * file_bytes))
    # a name is a NUL-separated field (version 3) or a JSON string, two quotes (version 2; the JSON's
    # keys and engine record take a few hundred more)
    raw = _decompress(blob, names_limit(images, file_bytes),
                      (b'"', 2 * most + V2_QUOTES, most) if version == 2 else (b"\0", most + 1, most))
    meta = loads_json(raw) if version == 2 else _unpack_names(raw, images, most)
    if not isinstance(meta, dict):
        raise ValueError("the header's variable part is not an object")
    names = meta["names"]
    h.names = names
    h.orig_size = meta.get("sizes") or [[h.image_size, h.image_size]] * (len(names) if isinstance(names, list) else 0)
    h.engine = meta.get("engine") or {}
