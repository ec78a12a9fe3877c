"""A corpus of hostile image files, for tests of every command that reads images.

`build(root)` writes good images, valid-but-awkward images (which must load, converted) and
bad files (which must be skipped, each with its reason) into `root`; `build(root, hostile=False)`
writes only what must load, byte for byte the same, so a command's results on the two folders
can be compared. Everything is generated here in about a second; nothing is downloaded.

The unreadable file (mode 0) is unreadable to anyone but root; tests read the corpus inside
`unprivileged()`, which makes it unreadable to root too (see there).
"""

from __future__ import annotations

import ctypes
import functools
import io
import os
import struct
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

NON_UTF8 = os.fsdecode(b"caf\xe9.png")  # Latin-1 bytes: not UTF-8, fine for a Linux file name


@dataclass(frozen=True)
class Entry:
    name: str  # path relative to the corpus root, posix; may hold surrogates (non-UTF-8 bytes)
    reason: str | None  # None: must load; else the start of the reason it must be skipped with


@dataclass
class Corpus:
    root: Path
    entries: list[Entry]

    @property
    def loadable(self) -> list[str]:
        return [e.name for e in self.entries if e.reason is None]

    @property
    def bad(self) -> dict[str, str]:
        return {e.name: e.reason for e in self.entries if e.reason is not None}

    def paths(self) -> list[Path]:
        """Every entry as a path (what a user would upload one by one)."""
        return [self.root / e.name for e in self.entries]

    def check_skipped(self, skipped) -> None:
        """`skipped` (pairs of path and reason) names every bad file once, each with its reason."""
        got = {}
        for path, reason in skipped:
            rel = Path(path).relative_to(self.root).as_posix() if Path(path).is_absolute() else Path(path).as_posix()
            assert rel not in got, f"{rel} skipped twice"
            got[rel] = reason
        assert sorted(got) == sorted(self.bad), f"skipped {sorted(got)}, expected {sorted(self.bad)}"
        for name, prefix in self.bad.items():
            assert got[name].startswith(prefix), f"{name}: reason {got[name]!r}, expected {prefix!r}..."


# --- the files ---------------------------------------------------------------------------------

def _png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _blob(i: int, size: tuple[int, int] = (20, 20)) -> np.ndarray:
    """A grey disc at a seeded place: tiny, learnable, different per i."""
    h, w = size
    rng = np.random.default_rng(i)
    yy, xx = np.mgrid[:h, :w]
    cy, cx, r = rng.uniform(6, h - 6), rng.uniform(6, w - 6), rng.uniform(3, 5)
    return np.where((yy - cy) ** 2 + (xx - cx) ** 2 < r * r, 220, 30).astype(np.uint8)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_header_only(w: int, h: int) -> bytes:
    """A PNG that claims w x h gray pixels and holds none: Pillow opens it from the header."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IEND", b"")


@functools.cache
def _files() -> dict[str, tuple[bytes, str | None]]:
    """name -> (bytes, skip reason or None). Built once per process: the big JPEG takes ~0.4 s."""
    rng = np.random.default_rng(0)
    out: dict[str, tuple[bytes, str | None]] = {}
    # good images: gray and colour, PNG and JPEG, one level down too
    for i in range(10):
        out[f"good_{i:02d}.png"] = (_png(Image.fromarray(_blob(i))), None)
    out["good_rgb.png"] = (_png(Image.fromarray(np.stack([_blob(20), _blob(21), _blob(22)], -1))), None)
    out["nested/good_10.png"] = (_png(Image.fromarray(_blob(10, (24, 20)))), None)
    out["nested/good_11.jpg"] = (_encode(Image.fromarray(np.stack([_blob(11, (18, 24))] * 3, -1)), "JPEG", quality=95), None)
    out["UPPER.PNG"] = (_png(Image.fromarray(_blob(12))), None)
    out["naïve ☃.png"] = (_png(Image.fromarray(_blob(13))), None)
    out[NON_UTF8] = (_png(Image.fromarray(_blob(14))), None)

    # valid but awkward: each must load, converted
    out["deep16.png"] = (_png(Image.fromarray((_blob(15).astype(np.uint16) * 257))), None)  # mode I;16
    pal = Image.fromarray(_blob(16)).convert("P")
    out["palette_alpha.png"] = (_png(pal, transparency=int(np.asarray(pal)[0, 0])), None)
    out["cmyk.jpg"] = (_encode(Image.fromarray(np.stack([_blob(17)] * 3, -1)).convert("CMYK"), "JPEG"), None)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    out["exif_rotated.jpg"] = (_encode(Image.fromarray(_blob(18, (16, 28))), "JPEG", exif=exif.tobytes()), None)
    frames = [Image.fromarray(_blob(19 + k)).convert("P") for k in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    out["animated.gif"] = (buf.getvalue(), None)
    out["one_pixel.png"] = (_png(Image.new("L", (1, 1), 200)), None)
    # 10000 x 10000 = 1e8 pixels, over Pillow's 89.5 MP bomb limit at full size, but a JPEG is
    # decoded at 1/8 scale when the model needs only a few pixels: it must load
    out["huge_10000x10000.jpg"] = (_encode(Image.new("L", (10000, 10000), 90), "JPEG", quality=50), None)
    out["strip_10000x1.png"] = (_png(Image.fromarray(rng.integers(0, 256, (1, 10000), dtype=np.uint8))), None)
    out["rgba.webp"] = (_encode(Image.fromarray(np.dstack([_blob(23)] * 3 + [_blob(24)])), "WEBP", lossless=True), None)
    out["float.tif"] = (_encode(Image.fromarray(_blob(25).astype(np.float32) / 255), "TIFF"), None)
    out["bilevel.bmp"] = (_encode(Image.fromarray(_blob(26) > 100), "BMP"), None)

    # bad files: each must be skipped, with its reason
    full = _png(Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)))
    out["truncated.png"] = (full[: len(full) // 2], "truncated or corrupt")
    jpeg = _encode(Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)), "JPEG")
    out["truncated.jpg"] = (jpeg[: len(jpeg) // 2], "truncated or corrupt")
    broken = bytearray(full)
    broken[full.index(b"IDAT") + 20] ^= 0xFF  # compressed data altered: its CRC no longer matches
    out["bad_crc.png"] = (bytes(broken), "truncated or corrupt")
    out["empty.png"] = (b"", "empty file")
    out["notes.png"] = (b"These are my notes, saved with the wrong name.\n", "not an image")
    out["page.jpg"] = (b"<!DOCTYPE html><html><body><h1>404 Not Found</h1></body></html>\n", "not an image")
    out["bomb_20000x20000.png"] = (_png_header_only(20000, 20000), "decompression bomb")  # > 2x: Pillow refuses
    out["bomb_10000x10000.png"] = (_png_header_only(10000, 10000), "decompression bomb")  # 1x..2x: Pillow warns
    out["unreadable.png"] = (_png(Image.fromarray(_blob(27))), "permission denied")
    return out


SYMLINKS = {  # name -> (target, skip reason or None)
    "alias.png": ("good_00.png", None),  # a second name for a good image: loads twice
    "loop.png": ("loop.png", "symbolic link loop"),
    "dangling.png": ("no-such-file.png", "broken symbolic link"),
}


def build(root: str | Path, hostile: bool = True) -> Corpus:
    """Write the corpus into `root` (created); hostile=False leaves out everything that must be skipped."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    entries = []
    for name, (data, reason) in _files().items():
        if reason is not None and not hostile:
            continue
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(0o000 if name == "unreadable.png" else 0o644)
        entries.append(Entry(name, reason))
    for name, (target, reason) in SYMLINKS.items():
        if reason is not None and not hostile:
            continue
        os.symlink(target, root / name)
        entries.append(Entry(name, reason))
    if hostile:
        os.symlink(".", root / "cycle")  # a folder that contains itself: scanned once
        (root / "empty-folder.png").mkdir()  # a folder with an image's name: holds nothing
    for folder in [root, *[p for p in root.rglob("*") if p.is_dir() and not p.is_symlink()]]:
        folder.chmod(0o755)
    return Corpus(root, sorted(entries, key=lambda e: e.name))


# --- reading without root's override -----------------------------------------------------------

# Root reads any file because of two capabilities, not because of its uid; without them in
# its effective set, root obeys permission bits like any owner (and still reads its own 0o644
# files, its Python installation, everything else the commands need).
_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH = 1, 2
_OVERRIDES = (1 << _CAP_DAC_OVERRIDE) | (1 << _CAP_DAC_READ_SEARCH)
_PR_CAPBSET_DROP = 24


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _capabilities(effective: int | None = None) -> int:
    """This thread's effective capabilities (low 32), after setting them when given."""
    libc = ctypes.CDLL(None, use_errno=True)
    header, data = _CapHeader(0x20080522, 0), (_CapData * 2)()  # _LINUX_CAPABILITY_VERSION_3
    if libc.capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget failed")
    if effective is not None:
        data[0].effective = effective
        if libc.capset(ctypes.byref(header), data) != 0:
            raise OSError(ctypes.get_errno(), "capset failed")
    return data[0].effective


@contextmanager
def unprivileged():
    """Run the block (in this thread) unable to read files whose permissions forbid it, also as
    root, so the corpus's unreadable file really is unreadable. A no-op for other users."""
    if os.geteuid() != 0:
        yield
        return
    before = _capabilities()
    _capabilities(before & ~_OVERRIDES)
    try:
        yield
    finally:
        _capabilities(before)


def unprivileged_exec() -> None:
    """For subprocess's preexec_fn: the program started cannot override file permissions either
    (root regains every capability on exec, except those dropped from the bounding set)."""
    if os.geteuid() == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        for cap in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
            if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def flat(text: str) -> str:
    """All whitespace removed: rich may wrap a long path anywhere."""
    return "".join(text.split())


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` and its bytes: to show a command changed nothing."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
