"""Whether a PNG's pixel data holds every row its header promises.

Pillow decodes a PNG whose compressed stream ends cleanly but early (fewer rows than the
header's height) without an error and fills the missing rows with black; vaekit would then
score or train on pixels the file does not hold. `missing_rows` inflates the IDAT chunks once
more, a bounded buffer at a time, and counts the bytes against what the header's size, bit
depth, colour type and interlacing need (PNG specification, sections 7-8).
"""

from __future__ import annotations

import struct
import zlib
from typing import BinaryIO

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel
# Adam7 passes: first column, first row, column step, row step
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
_STEP = 1 << 20  # inflate at most this many bytes at a time


def needed_bytes(width: int, height: int, depth: int, colour: int, interlaced: bool) -> int:
    """Bytes of filtered scanlines (a filter byte per row) the IHDR fields call for."""
    bits = depth * _SAMPLES[colour]

    def rows(w: int, h: int) -> int:
        return 0 if w == 0 or h == 0 else h * (1 + (w * bits + 7) // 8)

    if not interlaced:
        return rows(width, height)
    return sum(rows(-(-(width - x0) // dx) if width > x0 else 0, -(-(height - y0) // dy) if height > y0 else 0)
               for x0, y0, dx, dy in _ADAM7)


def _chunks(f: BinaryIO):
    """(kind, reader of its data in pieces) per chunk: a chunk's data (up to 4 GiB by its length
    field) is never held whole; what a reader leaves unread is skipped."""
    while True:
        head = f.read(8)
        if len(head) < 8:
            return
        length, kind = struct.unpack(">I4s", head)
        start = f.tell()
        yield kind, _pieces(f, length)
        f.seek(start + length + 4)  # past the data and its CRC (Pillow has checked what it read)
        if kind == b"IEND":
            return


def _pieces(f: BinaryIO, length: int):
    left = length
    while left > 0:
        piece = f.read(min(left, _STEP))
        if not piece:
            return
        left -= len(piece)
        yield piece


def missing_rows(f: BinaryIO) -> str | None:
    """Why the PNG read from `f` (at its start) holds less pixel data than its header needs, or
    None when it holds enough (or is not a PNG this check understands: Pillow judged it). Stops
    reading as soon as the rows are all there."""
    if f.read(8) != _SIGNATURE:
        return None
    need, got, inflate = None, 0, zlib.decompressobj()
    for kind, pieces in _chunks(f):
        if kind == b"IHDR":
            data = b"".join(pieces)
            if len(data) < 13:
                return None
            w, h, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", data[:13])
            if colour not in _SAMPLES:
                return None
            need = needed_bytes(w, h, depth, colour, interlace == 1)
        elif kind == b"IDAT" and need is not None:
            try:
                for piece in pieces:
                    while piece and got < need:
                        got += len(inflate.decompress(piece, _STEP))
                        piece = inflate.unconsumed_tail
                    if got >= need:
                        return None
            except zlib.error:
                return None  # Pillow decoded it; a damaged stream is Pillow's to report
    if need is None or got >= need:
        return None
    return f"truncated or corrupt: its pixel data ends after {got} of the {need} bytes its header needs"


def chunks_after_pixels(f: BinaryIO) -> bool:
    """Whether the PNG read from `f` (at its start) has chunks other than IDAT and IEND after its
    first IDAT: what Pillow reads only when it decodes the pixels (an eXIf or text chunk there).
    Reads chunk headers only; True where the file is not a PNG this check understands."""
    if f.read(8) != _SIGNATURE:
        return True
    seen_pixels = False
    for kind, _ in _chunks(f):
        if kind == b"IDAT":
            seen_pixels = True
        elif seen_pixels and kind != b"IEND":
            return True
    return False
