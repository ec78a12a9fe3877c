"""Memory for one image is bounded by its pixels at one byte per channel (issue 21, item 4).

A large RGBA or 16-bit PNG compresses to almost nothing, and converting it through uint32 or
float64 copies of the whole image took 26-44 bytes a pixel. Each case runs in a fresh process
and reads its peak RSS (getrusage) before and after decoding; the bound is generous (a few bytes
per channel per pixel, which covers Pillow's own copy and the uint8 result) and far below what
the wide copies cost. The same holds for `vaekit anomaly-score` itself, and so for the web
app, which decodes uploads with the same function.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from export_support import random_run
from vaekit import images

SIDE = 3000  # 9 M pixels: 36 MB as RGBA
PER_CHANNEL = 5  # bytes per channel per pixel allowed above the process's baseline

MEASURE = r"""
import resource, sys
import numpy as np
from vaekit import images


def peak() -> int:
    # VmHWM: the peak RSS of this program since it started. (getrusage's ru_maxrss would do, but on
    # Linux it starts at the parent's RSS when the parent is large, as pytest with torch loaded is.)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


images.load_image(sys.argv[3], 16, 1)  # warm up: the decoders are imported
before = peak()
x = images.load_image(sys.argv[1], 64, int(sys.argv[2]))
grew = peak() - before
assert x.shape == (int(sys.argv[2]), 64, 64) and x.dtype == np.uint8
print(grew)
"""


def _grew(tmp_path: Path, code: str, *args) -> int:
    """Bytes the peak RSS of a fresh interpreter running `code` (with `args`) grew by, as it prints."""
    r = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    return int(r.stdout.split()[-1])


def _tiny(tmp_path: Path) -> Path:
    tiny = tmp_path / "tiny.png"
    Image.new("L", (20, 20), 9).save(tiny)
    return tiny


def _big(tmp_path: Path, mode: str) -> Path:
    if mode == "RGBA":
        img = Image.new("RGBA", (SIDE, SIDE), (200, 100, 50, 128))
    else:
        img = Image.fromarray(np.full((SIDE, SIDE), 40000, np.uint16))
    path = tmp_path / f"big-{mode.replace(';', '')}.png"
    img.save(path)
    return path


@pytest.mark.slow  # each case measures a fresh interpreter's peak memory
@pytest.mark.parametrize("mode,channels,file_channels", [("RGBA", 3, 4), ("RGBA", 1, 4), ("I;16", 1, 1),
                                                         ("I;16", 3, 1)])
def test_decoding_a_large_image_costs_a_few_bytes_per_channel(tmp_path, mode, channels, file_channels):
    big = _big(tmp_path, mode)
    grew = _grew(tmp_path, MEASURE, big, channels, _tiny(tmp_path))
    assert grew <= PER_CHANNEL * SIDE * SIDE * file_channels, f"{grew / SIDE**2:.1f} bytes per pixel"


@pytest.mark.slow  # the installed vaekit in two fresh processes
def test_anomaly_score_on_a_large_rgba_png_stays_within_the_bound(tmp_path):
    """The whole command, run twice (a tiny image, then the large one): the difference in peak RSS."""
    run = random_run(tmp_path / "run", image_size=16, channels=3, latent_dim=4, base_channels=4)
    exe = shutil.which("vaekit", path=str(Path(sys.executable).parent)) or "vaekit"
    peaks = []
    for name in ("small", "large"):
        folder = tmp_path / name
        folder.mkdir()
        if name == "small":
            Image.new("RGBA", (20, 20), (1, 2, 3, 4)).save(folder / "a.png")
        else:
            shutil.move(_big(tmp_path, "RGBA"), folder / "a.png")
        # a small parent between: a child's ru_maxrss starts at its parent's RSS (pytest with torch loaded)
        code = (f"import resource, subprocess, sys; r = subprocess.run({[exe, '--threads', '1', 'anomaly-score', str(run), str(folder), '--threshold', '0']!r}, "
                "capture_output=True); assert r.returncode == 0, r.stderr; "
                "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)")
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert r.returncode == 0, r.stderr
        peaks.append(int(r.stdout.split()[-1]))
    assert peaks[1] - peaks[0] <= PER_CHANNEL * SIDE * SIDE * 4, f"{(peaks[1] - peaks[0]) / SIDE**2:.1f} bytes per pixel"


STRIP = 9_000_000  # pixels of a 1-pixel-high 16-bit strip: 18 MB as Pillow holds it

MEASURE_STRIP = MEASURE.split("images.load_image(sys.argv[3]")[0] + r"""
images.decode(sys.argv[2], 1)  # warm up
before = peak()
x = images.decode(sys.argv[1], 1)
grew = peak() - before
assert x.shape == (1, int(sys.argv[3]), 1) and x.dtype == np.uint8 and int(x.max()) == 156
print(grew)
"""


@pytest.mark.slow  # a fresh interpreter's peak memory
def test_a_row_wider_than_a_strip_is_converted_in_pieces(tmp_path):
    # a strip was converted a row at a time, and one row of 89 M 16-bit pixels went through five
    # float64 copies: 2.5 GB for a 170 kB file (a helper's review, 2026-12-07)
    strip = tmp_path / "strip.png"
    Image.fromarray(np.full((1, STRIP), 40000, np.uint16)).save(strip)
    grew = _grew(tmp_path, MEASURE_STRIP, strip, _tiny(tmp_path), STRIP)
    # Pillow's own copy (2 bytes a pixel), its PNG decoder's two rows of filtered bytes (4), the
    # uint8 result (1); the row converted whole took ~28
    assert grew <= 8 * STRIP, f"{grew / STRIP:.1f} bytes per pixel"


def test_a_strip_that_cannot_be_resized_is_refused_from_its_header(tmp_path, monkeypatch):
    # the aspect-ratio refusal came after the whole strip was decoded
    from vaekit.images import convert

    strip = tmp_path / "strip.png"
    Image.fromarray(np.full((1, 300_000), 7, np.uint8)).save(strip)
    monkeypatch.setattr(convert, "to_uint8", lambda *a: pytest.fail("decoded before it was refused"))
    with pytest.raises(images.ImageReadError, match="aspect ratio too extreme: 300000x1"):
        images.load_image(strip, 32, 1)


def test_wide_pieces_cover_the_image_once():
    from vaekit.images.convert import STRIP_PIXELS, _boxes

    for w, h in [(5, 3), (STRIP_PIXELS, 2), (STRIP_PIXELS * 2 + 7, 3), (1, 10**6)]:
        seen = np.zeros((h, w), np.uint8) if w * h < 10**7 else None
        for x0, y0, x1, y1 in _boxes(w, h):
            assert (x1 - x0) * (y1 - y0) <= STRIP_PIXELS
            if seen is not None:
                seen[y0:y1, x0:x1] += 1
        assert seen is None or (seen == 1).all()


MEASURE_RESTORE = MEASURE.split("images.load_image(sys.argv[3]")[0] + r"""
from vaekit.codes import sizes
from vaekit.images.render import png_bytes
x = np.random.default_rng(0).integers(0, 256, (3, 32, 32), dtype=np.uint8)
png_bytes(sizes.restore_image(x, (40, 64)))  # warm up
before = peak()
h, w = int(sys.argv[1]), int(sys.argv[2])
png_bytes(sizes.restore_image(x, (h, w)))
print(peak() - before)
"""


@pytest.mark.slow  # a fresh interpreter's peak memory
def test_decoding_at_the_original_size_holds_the_image_about_twice(tmp_path):
    # a forged 184-byte .vkc asked for three images of 13375 x 13375: numpy's padded and
    # transposed copies held each 4-5 times (2 GB); Pillow builds it holding the square and the whole
    h, w = 3000, 4500
    grew = _grew(tmp_path, MEASURE_RESTORE, h, w)
    assert grew <= 2.9 * 3 * h * w, f"{grew / (3 * h * w):.1f} bytes per sub-pixel"  # the arrays: 3.3
