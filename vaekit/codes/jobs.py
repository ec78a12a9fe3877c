"""Folder jobs on code files: `vaekit encode` (streamed, resumable) and `vaekit decode`.

Encoding reads fixed batches (vaekit.stream) and journals each batch's posterior means to
`OUT.partial`; the code file is assembled from the journal at the end, chunk by chunk, so no
step holds every code, and a killed job continues with `resume=True`.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np

from vaekit import images as imageio
from vaekit import stream
from vaekit.stream import job
from vaekit.codes import batch_size as batches
from vaekit.codes.format import PRECISIONS, CodeFile, CodeFileError, FingerprintMismatch, validate, load, quantize
from vaekit.stream.batches import Layout, digest
from vaekit.codes.targets import check_targets, decodable, png_names  # noqa: F401  (png_names: re-exported)
from vaekit.codes.sizes import GONE, original_size, restore_image, restore_size, source_facts  # noqa: F401  (re-exported)
from vaekit.codes.writer import write_streamed
from vaekit.errors import BadInput, check_flags
from vaekit.fileio import atomic_writer, named_path, refuse_existing, refuse_inside
from vaekit.fileio.staging import recover, staged
from vaekit.inference.engine_onnx import refuse_model_files
from vaekit.images.arrays import check_batch_size
from vaekit.images.load import BATCH_PIXELS
from vaekit.stream.headers import model_settings
from vaekit.stream.journals import naming_failed_writes
from vaekit.progress import Progress
from vaekit.stream.shares import Shares

if TYPE_CHECKING:  # the engine is passed in; importing it here would cost nothing but clarity
    from vaekit.inference.engine import Model

CHUNK = 4096  # codes assembled into the file at a time, at most
CHUNK_BYTES = 64 << 20  # ... and at most this many bytes of them: a 512 px grid model's codes are 1 MB an image


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise BadInput(f"invalid precision {precision!r}: expected one of {', '.join(PRECISIONS)}")


def encode_images(model: "Model", x: np.ndarray, names: list[str], orig_size: np.ndarray, precision: str = "q8") -> CodeFile:
    """uint8 images (N, C, H, W) at the model's size -> a CodeFile of their posterior means."""
    _check_precision(precision)
    mu, _ = model.encode(x)
    codes, scale, offset = quantize(mu, precision)
    info = model.info
    cf = CodeFile(codes, list(names), np.asarray(orig_size, dtype=np.int32).reshape(-1, 2), precision,
                  info.fingerprint, info.image_size, info.channels, scale, offset)
    validate(cf, "new code file")
    return cf


def against_sources(source_bytes: int, file_bytes: int) -> str:
    """How much smaller (or larger) a written file is than its sources, "2.35× smaller" or "1.33×
    larger": two decimals below 10× (a file 4.6% larger than its sources read "1.0× smaller")."""
    ratio, word = (source_bytes / file_bytes, "smaller") if source_bytes >= file_bytes else (file_bytes / source_bytes, "larger")
    return f"{ratio:.{2 if ratio < 10 else 1}f}× {word}"


@dataclass
class EncodeReport:
    path: Path  # the code file written
    count: int  # images encoded
    file_bytes: int  # size of the code file
    source_bytes: int  # total size of the source image files
    image_size: int  # the model's size: codes describe image_size × image_size images
    source_pixels: int  # total pixels of the source images at their original sizes
    precision: str
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    shard: tuple[int, int] = (0, 1)  # (index, count) this process encoded
    merged: bool = True  # False: a share whose code file another share's process writes
    pending: list[int] = field(default_factory=list)  # shares not complete yet (merged False)
    resumed: int = 0  # batches a previous run had finished
    repeated: list[str] = field(default_factory=list)  # files named again after their first time, encoded once
    hidden: list[str] = field(default_factory=list)  # dot-named folders and image files in the inputs: not read

    @property
    def bytes_per_image(self) -> float:
        return self.file_bytes / self.count

    @property
    def bits_per_pixel(self) -> float:
        """Bits of code file per pixel of the model-sized image."""
        return 8 * self.file_bytes / (self.count * self.image_size**2)

    @property
    def bits_per_source_pixel(self) -> float:
        return 8 * self.file_bytes / self.source_pixels

    @property
    def ratio(self) -> float:
        """Source files' total size / code file size."""
        return self.source_bytes / self.file_bytes

    @property
    def against_sources(self) -> str:
        return against_sources(self.source_bytes, self.file_bytes)

    def to_dict(self) -> dict:
        return {
            "code_file": str(self.path), "images": self.count, "skipped": len(self.skipped),
            "precision": self.precision, "bytes": self.file_bytes, "bytes_per_image": self.bytes_per_image,
            "bits_per_pixel": self.bits_per_pixel, "bits_per_source_pixel": self.bits_per_source_pixel,
            "source_bytes": self.source_bytes, "compression_ratio": self.ratio,
        }



def _settings(model: "Model", found, layout: Layout, precision: str) -> dict:
    """An encode job's journal header: what a resume or another share must share with it."""
    index, count = layout.index, layout.count
    return {"job": "encode", **model_settings(model), "batch_size": layout.batch_size,
            "files": len(found.paths), "file_list": digest(layout.paths), "inputs": [str(r) for r in found.roots],
            "shard": [index, count],
            # the merge writes every share's codes at the merging share's precision: shares
            # asked for another one are another job (a resume alone may change it, as ever)
            **({"precision": precision} if count > 1 else {})}


def encode_folder(
    model: "Model",
    source: str | Path | Sequence[str | Path],
    out: str | Path,
    precision: str = "q8",
    overwrite: bool = False,
    progress: Progress | None = None,
    resume: bool = False,
    batch_size: int | None = None,
    workers: int = 0,
    shard: tuple[int, int] | None = None,
    merge_timeout: float | None = None,
) -> EncodeReport:
    """Encode every image under `source` into the code file `out` (`vaekit encode`), in bounded memory.

    Each batch's codes go to `out.partial` as they are computed; `resume` continues a killed job.
    shard=(i, n) (or torchrun's RANK / WORLD_SIZE) encodes share i of n; the share that finds
    all complete writes `out` (report.merged), the same file an unsharded run writes. batch_size
    None: `batch_size.default_batch_size` (a batch's codes are one journal line, held whole);
    resuming, the journal's own; one whose line would pass the bound is refused
    (`batch_size.encode_batch_size`)."""
    check_flags(overwrite=overwrite, resume=resume)
    out = Path(out)
    _check_precision(precision)
    batch_size = batches.encode_batch_size(batch_size, model.info.latent_dim, out, shard, resume)
    if out.is_dir():
        raise BadInput(f"output {out} is a folder; give a file name such as {out / 'images.codes'}")
    share = job.start(source, out, shard, batch_size)
    found, layout, (index, count) = share.found, share.layout, (share.layout.index, share.layout.count)
    decodable(found.names, share.inputs)
    refuse_inside(out, found.sources, "output")
    refuse_inside(out, model.info.source, "output", kind="the model's run directory")
    refuse_model_files(out, model.info.source, "output")  # nor onto an export's part (with --overwrite)
    refuse_existing([out], overwrite or resume)  # resuming: once its shares are read (open_share)
    info = model.info
    mu_bytes = batches.mu_bytes(info.latent_dim)
    shares, journal = job.open_share(out, _settings(model, found, layout, precision), layout,
                                     _row_check(found.names, info.latent_dim), resume, overwrite, mu_bytes)
    with job.held(journal, out):
        resumed = len(journal.done)
        _encode_batches(model, found, journal, layout, workers, progress)
        report = EncodeReport(out, 0, 0, 0, info.image_size, 0, precision, shard=(index, count), resumed=resumed,
                              repeated=found.repeated, hidden=found.hidden)
        report.merged, report.pending = job.end(
            journal, shares, share.torchrun, merge_timeout, progress,
            lambda: _write_code_file(shares, report, info, share.inputs, overwrite))
        return report


def _row_check(names: Sequence[str], latent_dim: int):
    """A journal row must be the codes of file `names[i]`: its size, bytes and latent_dim means."""
    def check(row, i: int) -> str | None:
        if not isinstance(row, dict) or set(row) != {"name", "size", "bytes", "mu"}:
            return "not a code row"
        if row["name"] != names[i]:
            return f"names {str(row['name'])[:80]!r}, not the batch's file {names[i]!r}"
        size, n = row["size"], row["bytes"]
        if not (isinstance(size, list) and len(size) == 2 and all(type(v) is int and 0 < v < 1 << 31 for v in size)):
            return f"size {size!r:.40} is not [height, width]"
        if type(n) is not int or n < 0:
            return f"bytes {n!r:.40} is not a file size"
        try:
            mu = np.frombuffer(base64.b64decode(row["mu"], validate=True), "<f4")
        except (TypeError, ValueError):
            return "mu is not base64 text"
        if mu.shape != (latent_dim,) or not np.isfinite(mu).all():
            return f"mu holds {mu.size} numbers, not {latent_dim} finite ones"
        return None

    return check


def _encode_batches(model: "Model", found: stream.Inputs, journal, layout: Layout, workers: int,
                    progress: Progress | None) -> None:
    info, size = model.info, layout.batch_size
    positions = stream.shard(found.paths, layout.index, layout.count, size) if layout.count > 1 else None
    total = len(found.paths) if positions is None else len(positions)
    done = sum(len(layout.positions(b)) for b in journal.done)
    for b in stream.iter_batches(found.paths, info.image_size, info.channels, size, workers, positions,
                                 skip_batches=frozenset(journal.done)):
        mu = model.encode(b.images)[0].astype(np.float32) if len(b.paths) else np.zeros((0, info.latent_dim), np.float32)
        facts = [source_facts(p) for p in b.paths]
        rows = [{"name": found.names[i], "size": list(f[0]), "bytes": f[1],
                 "mu": base64.b64encode(np.ascontiguousarray(z, "<f4").tobytes()).decode()}
                for i, f, z in zip(b.positions, facts, mu) if not isinstance(f, str)]
        gone = [(i, p, f) for i, p, f in zip(b.positions, b.paths, facts) if isinstance(f, str)]
        if gone:  # the journal lists a batch's skipped files in the file list's order
            listed = dict(b.skipped)  # their positions lie in this batch's slice: not the whole list, once per file
            at = {found.paths[i]: i for i in layout.positions(b.index) if found.paths[i] in listed}
            skipped = sorted([*((at[p], p, r) for p, r in b.skipped), *gone], key=lambda t: t[0])
        else:
            skipped = [(0, p, r) for p, r in b.skipped]
        with naming_failed_writes(journal.out):
            journal.append(b.index, rows, [(str(p), r) for _, p, r in skipped])
        done += len(b.paths) + len(b.skipped)
        if progress:
            progress(done, total)


def _write_code_file(shares: Shares, report: EncodeReport, info, source, overwrite: bool) -> None:
    """The code file from every share's journal, chunk by chunk, atomically; then the journals go."""
    kept, sizes, skipped = [], [], []
    for e in shares.merged():
        skipped += [(Path(p), r) for p, r in e["skipped"]]
        for r in e["rows"]:
            kept.append(r["name"])
            sizes.append(r["size"])
            report.source_bytes += r["bytes"]
    if not kept:
        shares.remove()
        raise imageio.none_usable(f"in {stream.named(source)}", skipped)
    sizes = np.array(sizes, dtype=np.int32).reshape(-1, 2)

    rows = max(1, min(CHUNK, CHUNK_BYTES // (4 * info.latent_dim)))  # 4096 such codes were 4 GB, held 3 times

    def chunks() -> Iterator[np.ndarray]:
        batch = []
        for e in shares.merged():
            for r in e["rows"]:
                batch.append(np.frombuffer(base64.b64decode(r["mu"]), "<f4"))
                if len(batch) == rows:
                    yield np.stack(batch).astype(np.float32)
                    batch = []
        if batch:
            yield np.stack(batch).astype(np.float32)

    # not over a file put there while the job ran; one with these very bytes is a died merge's own: kept
    with atomic_writer(report.path, replace=overwrite, keep_same=True) as f:
        write_streamed(f, chunks, kept, sizes, report.precision, info.fingerprint, info.image_size, info.channels,
                       info.latent_dim)
    shares.remove()
    report.count, report.skipped, report.file_bytes = len(kept), skipped, report.path.stat().st_size
    report.source_pixels = int(sizes.astype(np.int64).prod(1).sum())


def check_model(cf, model: "Model", source: str = "code file", error: type = FingerprintMismatch) -> None:
    """Raise `error` unless `model` is the one that wrote `cf` (a CodeFile, or a .vkc's header:
    anything with its fingerprint, latent_dim, image_size and channels)."""
    info = model.info
    if cf.fingerprint != info.fingerprint:
        raise error(
            f"{source} was encoded by model {cf.fingerprint}, but {info.source} is model {info.fingerprint}; "
            "decode with the model that encoded it"
        )
    if (cf.latent_dim, cf.image_size, cf.channels) != (info.latent_dim, info.image_size, info.channels):
        raise error(f"{source} does not match the shape of model {info.source}")


@dataclass
class DecodeReport:
    out_dir: Path
    written: list[Path]  # one PNG per image, in the code file's order
    size: str  # "model" or "original"


def decode_file(
    model: "Model",
    code_file: str | Path,
    out_dir: str | Path,
    size: str = "model",
    overwrite: bool = False,
    progress: Progress | None = None,
    batch_size: int | None = 256,
) -> DecodeReport:
    """Decode a code file into PNGs under `out_dir`, named after the source images (`vaekit decode`).

    size="model" writes the model's image_size × image_size; "original" each source's size.
    Every target is checked before the first file is written, and every PNG is written to a
    staging folder first (vaekit.fileio.staging): an interrupted decode leaves none of them.
    batch_size: None is 256 (fewer where a batch's pixels would pass BATCH_PIXELS).
    """
    check_flags(overwrite=overwrite)
    batch_size = check_batch_size(batch_size, 256)
    if size not in ("model", "original"):
        raise BadInput(f"invalid size {size!r}: expected 'model' or 'original'")
    out_dir = named_path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise BadInput(f"output {out_dir} exists and is not a folder")
    # --overwrite would replace the run's own files
    refuse_inside(out_dir, model.info.source, "output folder", kind="the model's run directory")
    cf = load(code_file)
    check_model(cf, model, f"code file {code_file}")
    if not cf.names:  # as a .vkc of none is refused: "wrote 0 images" made an empty folder, exit 0 (h2)
        raise CodeFileError(f"code file {code_file} holds no image (vaekit encode writes none such): nothing to decode")
    targets = [out_dir / n for n in png_names(cf.names, out_dir)]
    recover(out_dir)  # a decode killed while moving its PNGs here: its files are not in the way
    check_targets(out_dir, targets, overwrite, model=model.info.source, source=Path(code_file))
    n, step = len(targets), max(1, min(batch_size, BATCH_PIXELS // model.info.image_size ** 2))  # bounded by pixels
    # staged as a .vkc's decode is: a Ctrl-C or a failure halfway left some PNGs, which the next
    # decode then refused as existing outputs
    with staged(out_dir, targets, replace=overwrite) as paths:
        for s in range(0, n, step):
            x = imageio.to_uint8(model.decode(cf.latents(slice(s, s + step))))
            for i, img in enumerate(x, start=s):
                imageio.save_png(img if size == "model" else restore_image(img, cf.orig_size[i]), paths[i])
            if progress:
                progress(min(n, s + step), n)
    return DecodeReport(out_dir, targets, size)

