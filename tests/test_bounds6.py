"""Resource bounds a hostile (or merely large) input could break: time that grows faster than the
input, memory that should be bounded by pixels, output that should be bounded by what was asked."""

from __future__ import annotations

import numpy as np
import pytest


class _CountedDigest(bytes):
    """A digest that counts how often it is compared with another."""

    compared = 0

    def __eq__(self, other):
        type(self).compared += 1
        return bytes.__eq__(self, other)

    __hash__ = bytes.__hash__


def test_overlap_check_is_not_quadratic_in_same_size_files(tmp_path, monkeypatch):
    """threshold --normal checks the new images against the training images by content. Files of
    one size (every 16 px BMP) were each compared with every training file of that size: 22 s
    for 10k against 10k. A digest is now looked up, so comparisons stay near the file count."""
    from vaekit.anomaly import overlap

    n = 150
    mine, theirs = tmp_path / "mine", tmp_path / "theirs"
    for folder, tag in ((mine, b"m"), (theirs, b"t")):
        folder.mkdir()
        for i in range(n):
            (folder / f"{i:04d}.bmp").write_bytes(tag + i.to_bytes(4, "big"))  # all 5 bytes, all different
    monkeypatch.setattr(overlap, "file_sha256", lambda p: _CountedDigest(open(p, "rb").read()))
    _CountedDigest.compared = 0
    assert overlap.first_shared(sorted(mine.iterdir()), sorted(theirs.iterdir())) is None
    assert _CountedDigest.compared <= 2 * n  # was n * n = 22,500
    # a copy is still found, as the first file of theirs with those bytes
    (mine / "zz.bmp").write_bytes(b"t" + (7).to_bytes(4, "big"))
    (theirs / "zz-second.bmp").write_bytes(b"t" + (7).to_bytes(4, "big"))
    found = overlap.first_shared(sorted(mine.iterdir()), sorted(theirs.iterdir()))
    assert found == (mine / "zz.bmp", theirs / "0007.bmp")


@pytest.fixture(scope="module")
def coder(tmp_path_factory):
    """(model, folder): an untrained 16 px grey logistic model with lossy tables, and 10 images."""
    from PIL import Image

    import vaekit
    from export_support import random_run
    from vaekit import codec

    root = tmp_path_factory.mktemp("coder")
    run = random_run(root / "run", image_size=16, channels=1, latent_dim=4, base_channels=4, likelihood="logistic")
    rng = np.random.default_rng(0)
    (root / "images").mkdir()
    for i in range(10):
        Image.fromarray(rng.integers(0, 256, (16, 16), np.uint8)).save(root / "images" / f"i{i}.png")
    model = vaekit.load(run)
    codec.save_prior(run, codec.fit_prior(model, model.load_images(root / "images").images), model)
    return vaekit.load(run), root / "images"


@pytest.mark.parametrize("mode", [{"quality": 8}, {"lossless": True}])
def test_a_chunk_holds_a_bounded_number_of_pixels(coder, tmp_path, monkeypatch, mode):
    """A chunk was 1024 images whatever their size, and a lossy one is coded and decoded whole:
    1024 images of 128 px RGB took 2.6 GB to encode and 1.5 GB to decode (70 images: 0.8 GB).
    Now a chunk holds at most CHUNK_SUBPIXELS sub-pixels (here four 16 px grey images)."""
    from vaekit import codec
    from vaekit.codec import container

    model, images = coder
    monkeypatch.setattr(container, "CHUNK_SUBPIXELS", 4 * 16 * 16, raising=False)
    out = tmp_path / "x.vkc"
    codec.encode(model, images, out, **mode)
    header, _ = container.read_header(out)
    assert [c[0] for c in header.chunks] == [4, 4, 2]
    assert len(codec.decode(model, out, tmp_path / "back").written) == 10


def test_a_lossy_chunk_larger_than_any_vaekit_writes_is_refused(coder, tmp_path, monkeypatch):
    """A crafted .vkc can name all its images in one chunk of a few words, and the decoder
    allocated every image's residual symbols at once (8 bytes a sub-pixel): refused, exit 2."""
    from vaekit import codec
    from vaekit.codec import container

    model, images = coder
    out = tmp_path / "x.vkc"
    codec.encode(model, images, out, quality=8)  # one chunk of 10
    monkeypatch.setattr(container, "CHUNK", 4)
    monkeypatch.setattr(container, "CHUNK_SUBPIXELS", 4 * 16 * 16, raising=False)
    with pytest.raises(container.ArchiveError, match="a chunk of 10 images; vaekit writes at most 4") as e:
        codec.decode(model, out, tmp_path / "back")
    assert e.value.exit_code == 2
    assert not (tmp_path / "back").exists()


def _tiny_folder(folder, n=6):
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (16, 16), np.uint8)).save(folder / f"i{i}.png")
    return sorted(folder.iterdir())


def test_a_pixel_cache_that_cannot_be_written_does_not_move_the_folder_into_memory(tmp_path, monkeypatch):
    """When the cache could not be written (a full or read-only disk), every image was decoded into
    memory instead: 4096 images of 256 px RGB peaked at 808 MB instead of 48, and 200k would need
    39 GB. Past MEMORY_FALLBACK bytes that is now a one-line CannotWrite (exit 2) naming the cache;
    a small folder is still loaded in memory."""
    from vaekit.errors import CannotWrite
    from vaekit.training import cache

    paths = _tiny_folder(tmp_path / "imgs")
    (tmp_path / "afile").write_text("x")
    unwritable = tmp_path / "afile" / "cache"  # nothing can be created under a file
    small = cache.load_cached(paths, 16, 1, cache_dir=unwritable)
    assert not small.hit and small.images.shape == (6, 1, 16, 16)
    monkeypatch.setattr(cache, "MEMORY_FALLBACK", 5 * 16 * 16, raising=False)
    with pytest.raises(CannotWrite, match="pixel cache .* cannot hold these images decoded .*VAEKIT_CACHE_DIR") as e:
        cache.load_cached(paths, 16, 1, cache_dir=unwritable)
    assert e.value.exit_code == 2


def test_a_disk_without_room_for_the_cache_is_said_before_decoding(tmp_path, monkeypatch):
    """A disk with less room than the entry needs is told before the first image is decoded, not
    when it is full (hours later, for a large folder)."""
    import collections

    from vaekit.errors import CannotWrite
    from vaekit.training import cache

    paths = _tiny_folder(tmp_path / "imgs")
    monkeypatch.setattr(cache, "MEMORY_FALLBACK", 5 * 16 * 16, raising=False)
    monkeypatch.setattr(cache.shutil, "disk_usage", lambda p: collections.namedtuple("U", "total used free")(1, 1, 100))

    def no_decoding(*a, **k):
        raise AssertionError("decoded before the room was checked")

    monkeypatch.setattr(cache.images, "iter_load", no_decoding)
    with pytest.raises(CannotWrite, match="0.0 GB free"):
        cache.load_cached(paths, 16, 1, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


@pytest.mark.parametrize("action", ["anomaly", "compress"])
def test_the_web_app_takes_a_bounded_number_of_uploads_at_once(tmp_path, monkeypatch, action):
    """Gradio bounds each upload's size, not how many there are, and a request's uploads were all
    decoded, scored and drawn together: 2,000 uploads at 128 px RGB peaked at 1.05 GB (13 MB an
    upload at 1024 px). Past the limit the request is refused before anything is decoded."""
    import vaekit
    from export_support import random_job
    from vaekit.errors import BadInput
    from vaekit_demo import handlers, security

    run, images = random_job(tmp_path, 5)
    model = vaekit.load(run)
    uploads = sorted(images.iterdir())
    monkeypatch.setattr(security, "UPLOAD_MAX_FILES", 4, raising=False)
    call = {"anomaly": lambda: handlers.anomaly(model, uploads, 1e9, tmp_path / "out"),
            "compress": lambda: handlers.compress(model, uploads, tmp_path / "out")}[action]
    with pytest.raises(BadInput, match="5 images uploaded; the web app takes at most 4 at a time"):
        call()
    assert not (tmp_path / "out").exists()
    {"anomaly": lambda: handlers.anomaly(model, uploads[:4], 1e9, tmp_path / "out"),
     "compress": lambda: handlers.compress(model, uploads[:4], tmp_path / "out")}[action]()


READ_MEMORY = r"""
import numpy as np, torch
from vaekit.reader.net import ReaderConfig, ReaderNet
from vaekit.reader.train import read


def peak() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024


torch.manual_seed(0)
torch.set_num_threads(1)
net = ReaderNet(1, ReaderConfig(width=4, depth=1))
x = np.random.default_rng(0).integers(0, 256, (40000, 1, 16, 16), dtype=np.uint8)
read(net, x[:600], batch=512)  # the first calls allocate torch's own buffers
before = peak()
scores, maps = read(net, x, batch=512)
assert maps.shape == (40000, 16, 16) and scores.shape == (40000,)
print((peak() - before) / x.size)
"""


@pytest.mark.slow  # a fresh interpreter with torch, reading 10 M pixels: ~3.5 s
def test_the_torch_defect_reader_holds_its_maps_not_whole_float64_copies(tmp_path):
    """A surface model reads one long strip whole, as many tiles (a 1 x 60,000 PNG of 60 KB under a
    16 px model: 60,000 tiles). The torch engine's reader turned all of them into float32, then
    float64 probabilities and box sums at once: 48 bytes a pixel above the maps it returns (the
    strip peaked 1.05 GB above the process's baseline; the ONNX engine, batch by batch, 0.22). Now
    it works batch by batch too: the float32 maps (4 bytes a pixel) and their concatenation."""
    import os
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", READ_MEMORY], capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert run.returncode == 0, run.stderr
    per_pixel = float(run.stdout.split()[-1])
    assert per_pixel < 16, f"{per_pixel:.1f} bytes a pixel (was 48)"


OVERLAY_MEMORY = r"""
import numpy as np
from vaekit.images import heatmap_overlay


def peak() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024


image = np.random.default_rng(0).integers(0, 256, (1, 16, 250_000), dtype=np.uint8)  # 4 M pixels
heat = np.random.default_rng(1).random((16, 250_000), dtype=np.float32)
heatmap_overlay(image[:, :, :1000], heat[:, :1000])
before = peak()
out = heatmap_overlay(image, heat)
assert out.shape == (3, 16, 250_000)
print((peak() - before) / heat.size)
"""


def test_a_heat_map_overlay_costs_its_output_not_float64_copies(tmp_path):
    """`--maps` colours each image's heat map over it. A surface's map of a long strip is read whole
    (a 1 x 60,000 PNG under a 16 px model: 16 x 960,000 pixels), and the colouring took float64
    copies of the whole image, map and colours: ~150 bytes a pixel. Now run by run: the uint8
    overlay (3 bytes a pixel) and a bounded run."""
    import os
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", OVERLAY_MEMORY], capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert run.returncode == 0, run.stderr
    per_pixel = float(run.stdout.split()[-1])
    assert per_pixel < 16, f"{per_pixel:.1f} bytes a pixel"
