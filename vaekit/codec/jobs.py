"""Folder jobs of the codec: fit the tables, encode a folder into a .vkc, decode a .vkc into PNGs.

What `vaekit encode --quality Q | --lossless` and `vaekit decode MODEL x.vkc` call. Memory stays
flat in the number of images: images are read in batches (lossy) or one by one (lossless),
coded in chunks of CHUNK images (fewer above 32 px RGB: container.CHUNK_SUBPIXELS), and the
chunks go to a spill file until the .vkc is written.
Decoding verifies the whole file first, writes into a staging folder, and moves the PNGs into
place only when every image decoded (and, lossless, passed its checksum): nothing half-written.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from vaekit import images as imageio
from vaekit import stream
from vaekit.codec import bitsback, container, lossy, tables
from vaekit.codec import lossless as lossless_job
from vaekit.codec import lossy_job
from vaekit.codec.lossy_job import BATCH
from vaekit.codec import prior as priors
from vaekit.codec.net import CANONICAL_THREADS, Net
from vaekit.codec.store import decoded, earlier_hashes, shape_problem, stored_prior
from vaekit.fileio.staging import recover, staged
from vaekit.images.arrays import check_int
from vaekit.inference.engine_onnx import refuse_model_files
from vaekit.codes.jobs import check_model, decodable
from vaekit.codes.sizes import restore_image
from vaekit.codes.targets import check_targets, png_names
from vaekit.errors import BadInput, check_flags
from vaekit.fileio import named_path, refuse_existing, refuse_inside, refuse_under_file

from vaekit.progress import Progress  # noqa: E402  (the one alias)
CHUNK = container.CHUNK  # images per ANS stream, at most container.CHUNK_SUBPIXELS sub-pixels
BITSBACK = f"bbans:latent{bitsback.LATENT_BITS}:crc{bitsback.CHECK_BITS}:p{tables.PRECISION}"
BITSBACK_TABLES = hashlib.sha256(BITSBACK.encode()).hexdigest()[:16]  # what a lossless header names


@dataclass
class EncodeResult:
    path: Path
    mode: str  # "lossy" or "lossless"
    quality: int | None
    count: int  # images coded
    file_bytes: int  # the whole .vkc, header included
    header_bytes: int  # of which the header (names, sizes, chunk table) and the checksum
    dims: int  # sub-pixels per image (C x H x W)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    source_bytes: int = 0  # the source files' total size
    seconds: float = 0.0
    pixel_model: str | None = None  # lossless: "model" (a logistic model's own), "fitted" (context) or "learned",
    #                                 either with " + subtract-green" (colour coded as G, R - G, B - G)
    residual: str | None = None  # lossy with a residual: "pixels" or "dct 8x8" / "dct 4x4" (vaekit.codec.transform)
    psnr: float | None = None  # lossy: mean PSNR (dB) of the images as the file decodes, at the model's size,
    #                            over those not decoded exactly (None where all are); see psnr_images
    exact: int = 0  # lossy: of those, images the file decodes to exactly (at the model's size)
    psnr_images: int = 0  # lossy: images the PSNR was measured on (all, or the first PSNR_IMAGES without a residual)
    resized: int = 0  # images whose source is not the model's size: the file holds them at the model's size
    hidden: list[str] = field(default_factory=list)  # dot-named folders and image files in the inputs: not read

    @property
    def bytes_per_image(self) -> float:
        return self.file_bytes / self.count

    @property
    def bits_per_dim(self) -> float:
        """File bits per sub-pixel of the model-sized images: the lossless rate."""
        return 8 * self.file_bytes / (self.count * self.dims)


@dataclass
class DecodeResult:
    out_dir: Path
    written: list[Path]  # one PNG per image, in the file's order
    mode: str
    seconds: float = 0.0


# --- encode ------------------------------------------------------------------------------------

def encode(model, source: str | Path | Sequence[str | Path], out: str | Path, quality: int | None = None,
           lossless: bool = False, overwrite: bool = False, progress: Progress | None = None,
           chunk: int = CHUNK, prior: priors.Prior | None = None) -> EncodeResult:
    """Encode every image under `source` into the .vkc `out`: lossy at `quality` (1..8, the
    model's stored tables, or `prior`, tables not stored yet: `encode --fit` stores them only
    once the file is written), or `lossless` (a bits-back archive of images of exactly the model's
    size; vaekit.codec.lossless). progress(done, total) after each batch or image (lossless: also
    phase="fit" around the pixel model's fit and phase="code" around each chunk's coding)."""
    t0 = time.perf_counter()
    out = Path(out)
    found = check_encode(model, source, out, quality, lossless, overwrite, chunk)
    chunk = container.chunk_images(model.info.channels, model.info.image_size, chunk)  # memory bounded by pixels
    if lossless and prior is not None:
        raise BadInput("a lossless archive uses no lossy tables: give no prior")
    if not lossless:
        prior = prior or stored_prior(model)
        if prior is None:
            raise BadInput(_no_tables(model))
        priors.check_quality(quality, len(prior.steps))
        problem = shape_problem(prior, model)
        if problem:
            raise BadInput(f"the lossy tables given cannot code this model's images: {problem}")
    info = model.info
    header = container.Header("lossless" if lossless else "lossy", info.fingerprint,
                              BITSBACK_TABLES if lossless else prior.hash, info.image_size, info.channels,
                              info.latent_dim, [], [], quality=quality)
    out.parent.mkdir(parents=True, exist_ok=True)
    spill, errors = container.Spill(out), []  # lossy: each image's squared error, as the file decodes
    try:
        skipped, source_bytes = (lossless_job.encode_folder(model, found, header, spill, chunk, progress) if lossless else
                                 lossy_job.encode_folder(model, prior, quality, found, header, spill, chunk, progress,
                                                         errors))
        if not header.names:
            raise imageio.none_usable(f"in {source}", skipped)
        decodable(header.names, source)  # the images stored, when a skipped one changed the output names
        header.chunks = spill.chunks
        size = container.write(out, header, spill.finish(), skip=spill.start, replace=overwrite)
    finally:
        spill.close()
    payload = 4 * sum(c[1] for c in header.chunks)
    return EncodeResult(out, header.mode, quality, len(header.names), size, size - payload, info.dims, skipped,
                        source_bytes, time.perf_counter() - t0, lossless_job.pixel_model_name(header) if lossless else None,
                        None if lossless else residual_name(prior, quality), *lossy_job.mean_psnr(errors),
                        resized=sum(list(hw) != [info.image_size] * 2 for hw in header.orig_size), hidden=found.hidden)


def residual_name(prior: priors.Prior, quality: int) -> str | None:
    """How a quality's residual is coded: None (latents only), "pixels", or "dct BxB"."""
    if not prior.deltas[quality - 1]:
        return None
    return f"dct {prior.transform}x{prior.transform}" if prior.transform else "pixels"


def _no_tables(model) -> str:
    """Why a model has no lossy tables, and what to do: a run whose training was stopped before
    its finish stored them is resumed (fitting tables on it would code with unfinished weights)."""
    source = Path(model.info.source)
    if model.info.engine == "torch" and source.is_dir():
        from vaekit.training import rundir

        stopped = rundir.stopped_before_finish(source, rundir.read_config(source))
        if stopped:
            return stopped
    return (f"{source} has no entropy-coding tables yet; fit them on training images (vaekit encode ... --fit "
            "IMAGES, or vaekit.codec.fit_prior + save_prior) or write fixed-length codes (a .codes file)")


def loaded_model(model) -> None:
    """BadInput unless `model` is a loaded model: a run's path given instead was an AttributeError."""
    from vaekit.inference.engine import Model

    if not isinstance(model, Model):
        raise BadInput(f"model must be a loaded model (vaekit.load(RUN or .onnx)), got {model!r:.60}")


def check_encode(model, source, out: str | Path, quality: int | None = None, lossless: bool = False,
                 overwrite: bool = False, chunk: int = CHUNK) -> stream.Inputs:
    """Every check of `encode` that needs no tables (the options, the inputs, the output rule),
    so a caller that refits the tables first (`encode --fit`) changes nothing when one fails.
    Returns the inputs found."""
    check_flags(lossless=lossless, overwrite=overwrite)
    loaded_model(model)
    out = named_path(out, "output file")
    if lossless == (quality is not None):
        raise BadInput("give either a quality (1..8) or lossless, not both and not neither")
    check_int(chunk, "chunk", 1)  # True is no number of images (it was taken as 1)
    if not lossless:
        priors.check_quality(quality)
    if out.is_dir():
        raise BadInput(f"output {out} is a folder; give a file name such as {out / 'images.vkc'}")
    refuse_under_file(out)
    found = stream.find_inputs(source)
    decodable(found.names, source)
    refuse_inside(out, found.sources, "output")
    refuse_inside(out, model.info.source, "output", kind="the model's run directory")
    refuse_model_files(out, model.info.source, "output")  # nor onto an export's part (with --overwrite)
    refuse_existing([out], overwrite)
    return found


# --- decode ------------------------------------------------------------------------------------

def read_info(archive: str | Path) -> container.Header:
    """The verified header of a .vkc (what `vaekit info x.vkc` would show)."""
    return container.read_header(Path(archive))[0]


def decode(model, archive: str | Path, out_dir: str | Path, size: str = "model", overwrite: bool = False,
           progress: Progress | None = None) -> DecodeResult:
    """Decode a .vkc into one PNG per image under `out_dir`, named after the sources.
    size="original" restores each lossy image's source size (lossless images are the model's)."""
    check_flags(overwrite=overwrite)
    loaded_model(model)
    t0 = time.perf_counter()
    if size not in ("model", "original"):
        raise BadInput(f"invalid size {size!r}: expected 'model' or 'original'")
    archive, out_dir = named_path(archive, "archive"), named_path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise BadInput(f"output {out_dir} exists and is not a folder")
    refuse_under_file(out_dir)
    # --overwrite would replace the run's own files
    refuse_inside(out_dir, model.info.source, "output folder", kind="the model's run directory")
    header, offset = container.read_header(archive, lambda h: check_model(h, model, str(archive), container.ArchiveModelMismatch))  # names after
    _check_model(header, model, archive)
    prior = stored_prior(model, header.tables) if header.mode == "lossy" else None
    if header.mode == "lossy" and prior is None:
        current = stored_prior(model)
        raise container.ArchiveModelMismatch(
            f"{archive} was coded with tables {header.tables}, but {model.info.source} has "
            f"{'none' if current is None else current.hash} (and {len(earlier_hashes(model))} earlier sets); "
            "decode with the model (and tables) that encoded it")
    if prior is not None and not 1 <= header.quality <= len(prior.steps):
        raise container.ArchiveError(f"{archive} is damaged or foreign: it names quality {header.quality}, but its "
                                     f"tables have qualities 1 to {len(prior.steps)}")
    targets = [out_dir / n for n in png_names(header.names, out_dir)]
    recover(out_dir)  # a decode killed while moving its PNGs here: its files are not in the way
    check_targets(out_dir, targets, overwrite, model=model.info.source, source=archive)  # every one, before the first is written
    with staged(out_dir, targets, replace=overwrite) as paths:
        _decode_into(model, prior, header, archive, offset, paths, size, progress)
    return DecodeResult(out_dir, targets, header.mode, time.perf_counter() - t0)


def _check_model(header: container.Header, model, archive: Path) -> None:
    """What the archive needs of the model beyond its fingerprint (read_header's check, before the names)."""
    info = model.info
    if header.mode == "lossless":
        if header.tables != BITSBACK_TABLES:
            raise container.ArchiveError(f"{archive} was written with other bits-back settings than this vaekit's "
                                         f"({BITSBACK})")
        wrote = header.engine.get("engine")
        if wrote != info.engine:  # measured: every image's tables differ between the engines (docs/codec.md)
            raise bitsback.Desynchronised(
                f"{archive} is a lossless archive written with the {wrote} engine; decode it with that engine "
                f"({'the run directory' if wrote == 'torch' else 'the exported .onnx'}): the two engines' floats differ "
                f"in the last bits, and bits-back decoding needs them identical")
        _check_device(header, model, archive)
        _check_quantization(header, model, archive)


def _check_device(header: container.Header, model, archive: Path) -> None:
    """A torch archive decodes on the kind of device that wrote it (a GPU's floats are not the
    CPU's): refused before any image, not at the first image's checksum."""
    wrote = header.engine.get("device")
    if header.engine.get("engine") != "torch" or wrote is None:  # onnxruntime's, or written before it was recorded
        return
    if not isinstance(wrote, str) or not re.fullmatch(r"(cpu|cuda)(:[0-9]{1,4})?", wrote):  # the devices vaekit runs on
        raise container.ArchiveError(f"{archive} is damaged or foreign: it names the device {wrote!r:.20}")
    kind, have = wrote.split(":")[0], str(model.device)
    if kind != have.split(":")[0]:
        raise bitsback.Desynchronised(f"{archive} is a lossless archive written on {wrote}, but this decode runs on "
                                      f"{have}; decode it with --device {kind}: the devices' floats differ in the "
                                      "last bits, and bits-back decoding needs them identical")


def _check_quantization(header: container.Header, model, archive: Path) -> None:
    """An int8 export keeps its float model's fingerprint, but its floats are another model's."""
    if header.engine.get("engine") != "onnxruntime":
        return
    wrote, have = header.engine.get("quantization", "none"), model.config.get("quantization", "none")
    if wrote != have:
        raise bitsback.Desynchronised(f"{archive} is a lossless archive written with an export quantised "
                                      f"{wrote!r:.20}, but {model.info.source} is quantised {have!r:.20}; decode it "
                                      "with the export that wrote it")


def _decode_into(model, prior, header, archive, offset, staged, size, progress) -> None:
    if header.mode == "lossless":
        net = Net(model)
        net.pixels = lossless_job.pixel_model(header, model, archive)
        with net.pinned(_threads(header, archive)):  # the count the encoder's torch calls ran on
            _decode_chunks(model, prior, header, archive, offset, staged, size, progress, net)
    else:
        _decode_chunks(model, prior, header, archive, offset, staged, size, progress, None)


def _threads(header: container.Header, archive: Path) -> int:
    """The torch thread count a lossless archive was written with: CANONICAL_THREADS since vaekit
    pinned it, the user's --threads before (decoded on that count, so those files still decode)."""
    threads = header.engine.get("threads", CANONICAL_THREADS)
    if header.engine.get("engine") != "torch":
        return CANONICAL_THREADS  # unused: onnxruntime's threads are its session's (and did not matter)
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= MAX_ARCHIVE_THREADS:
        raise container.ArchiveError(f"{archive} is damaged or foreign: it names {threads!r:.20} torch threads "
                                     f"(vaekit writes 1, and wrote at most {MAX_ARCHIVE_THREADS})")
    return threads


MAX_ARCHIVE_THREADS = 1024  # the CLI's --threads bound: files of before recorded it (vaekit writes 1 now)


def _decode_chunks(model, prior, header, archive, offset, staged, size, progress, net) -> None:
    done, n = 0, len(staged)
    for count, words in container.iter_chunks(archive, header, offset):
        if header.mode == "lossless":
            for k, x in enumerate(bitsback.decode_chunk(net, words, count, source=str(archive))):
                imageio.save_png(x, staged[done + count - 1 - k])  # a stack: last image first
        else:
            shape = (header.channels, header.image_size, header.image_size)
            try:
                z, res = lossy.decode_chunk(prior, header.quality, words, count, shape)
            except (ValueError, RuntimeError) as e:
                raise container.ArchiveError(f"{archive} cannot be decoded: {e}") from None
            delta = int(prior.deltas[header.quality - 1])
            for s in range(0, count, BATCH):
                x = decoded(model, z[s:s + BATCH])
                x = lossy.with_residual(prior, header.quality, x, res[s:s + BATCH]) if delta else x.astype(np.uint8)
                for i, img in enumerate(x, start=done + s):
                    imageio.save_png(img if size == "model" else restore_image(img, header.orig_size[i]), staged[i])
        done += count
        if progress:
            progress(done, n)
