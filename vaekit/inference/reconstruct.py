"""`vaekit reconstruct` as a job: streamed, written as it goes, resumable, shardable.

Like `anomaly-score` and `encode` (vaekit.anomaly.job, vaekit.codes.jobs): images are decoded
and reconstructed in fixed batches; each batch's PNGs are written, then its line (each image's
name, PSNR and SSIM) goes to the journal `OUT.partial` beside the output folder, so a killed job
continues with `resume=True` and a share (`shard=(i, n)`) journals on its own. When every
share is complete, one process writes `OUT/comparison.png` (`grid_name`: comparison-1.png when an
input's reconstruction takes that name; the first `grid_max` inputs beside
their reconstructions, read back from the PNGs, so it is the same whichever process wrote
them) and removes the journals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Sequence

import numpy as np

from vaekit import images as imageio
from vaekit import stream
from vaekit.errors import BadInput, check_flags
from vaekit.fileio import refuse_existing, refuse_inside
from vaekit.inference.engine_onnx import refuse_model_files
from vaekit.images.arrays import check_batch_size, check_int
from vaekit.images.quality import SSIM_MISSING, psnr, ssim
from vaekit.stream import job, pipeline
from vaekit.stream.batches import Layout, check_number, digest, refuse_changed_outputs
from vaekit.stream.headers import model_settings, resumed_batch_size
from vaekit.stream.journals import naming_failed_writes
from vaekit.stream.shares import Shares

if TYPE_CHECKING:
    from vaekit.inference.engine import Model

BATCH_SIZE = 256
GRID = "comparison.png"


def grid_name(targets: Sequence[str]) -> str:
    """The comparison grid's name in the output folder: GRID, or comparison-1.png (-2, ...) when
    an input's reconstruction takes that name (an image called comparison.png) or a folder of them
    does: a user's image is never refused for its name, nor its reconstruction replaced. Compared
    in lower case, as a disk that folds case (exFAT, APFS, NTFS) would: Comparison.png is taken too."""
    taken = {t.lower() for t in targets} | {p.as_posix().lower() for t in targets for p in PurePosixPath(t).parents}
    name, n = GRID, 1
    while name in taken:
        name, n = f"comparison-{n}.png", n + 1
    return name


@dataclass
class ReconstructReport:
    out_dir: Path
    names: list[str]  # source names, relative to the input folder
    written: list[Path]  # the reconstruction PNGs, same order
    grid: Path  # inputs next to reconstructions
    psnr: np.ndarray  # (N,) dB
    ssim: np.ndarray | None  # (N,); None where scikit-image is not installed
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    repeated: list[str] = field(default_factory=list)  # files named again after their first time, read once
    hidden: list[str] = field(default_factory=list)  # dot-named folders and image files in the inputs: not read

    def to_dict(self) -> dict:
        def num(v: float) -> float | None:  # JSON has no infinity
            return float(v) if np.isfinite(v) else None

        ssim = self.ssim if self.ssim is not None else np.full(len(self.names), np.nan)
        return {
            "out_dir": str(self.out_dir), "grid": str(self.grid),
            "images": [{"name": n, "file": str(w), "psnr": num(p), "ssim": num(s)}
                       for n, w, p, s in zip(self.names, self.written, self.psnr, ssim)],
            "mean_psnr": num(self.psnr.mean()), "mean_ssim": num(ssim.mean()),
            "ssim_note": None if self.ssim is not None else SSIM_MISSING,
            "skipped": [{"file": str(p), "reason": r} for p, r in self.skipped],
        }


@dataclass
class ReconstructJob(ReconstructReport):
    shard: tuple[int, int] = (0, 1)  # (index, count) this process reconstructed
    merged: bool = True  # False: a share whose grid another share's process writes (rows: this share's)
    pending: list[int] = field(default_factory=list)  # shares not complete yet
    resumed: int = 0  # batches a previous run had finished


def reconstruct_to_folder(model: "Model", source: str | Path | Sequence[str | Path], out_dir: str | Path,
                          overwrite: bool = False, grid_max: int = 32, progress=None, batch_size: int | None = None,
                          workers: int = 0, resume: bool = False, shard: tuple[int, int] | None = None,
                          merge_timeout: float | None = None) -> ReconstructJob:
    """Reconstruct every image under `source` (z = posterior mean) into `out_dir`, in bounded memory.

    Writes `<out_dir>/<name>.png` per image and `<out_dir>/comparison.png`; every target is
    checked before the first is written (resuming, the PNGs of finished batches are this job's
    own). shard: this process's share; None: torchrun's RANK / WORLD_SIZE, or all."""
    check_flags(overwrite=overwrite, resume=resume)
    from vaekit.codes.targets import check_targets, png_names

    batch_size = check_batch_size(resumed_batch_size(batch_size, resume, out_dir, shard), BATCH_SIZE)
    grid_max = check_int(grid_max, "grid_max", 1)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise BadInput(f"output {out_dir} exists and is not a folder")
    share = job.start(source, out_dir, shard, batch_size)  # a file named twice is one PNG, not a clash of two
    found, layout, (index, count) = share.found, share.layout, (share.layout.index, share.layout.count)
    refuse_inside(out_dir, found.sources, "output folder", folder=True)  # its PNGs would be read back as inputs
    refuse_model_files(out_dir, model.info.source, "output folder")  # --overwrite would replace the run's files
    targets = png_names(found.names, out_dir)  # relative to out_dir
    grid = out_dir / grid_name(targets)
    info = model.info
    settings = {"job": "reconstruct", **model_settings(model),
                "batch_size": batch_size, "files": len(found.paths), "file_list": digest(layout.paths),
                "inputs": [str(r) for r in found.roots], "grid_max": grid_max, "shard": [index, count]}
    shares, journal = job.open_share(out_dir, settings, layout, _row_check(found.names), resume, overwrite,
                                     folder=True)
    shares.outputs = (_png_files(out_dir, found.names, targets, layout), "reconstruction")  # checked at the merge too
    with job.held(journal, out_dir):
        if journal.resumed:
            _refuse_lost_pngs(journal, out_dir, found.names, targets, layout)
        todo = [b for b in layout.mine() if b not in journal.done]
        own = set(layout.positions(todo[0])) if journal.resumed and todo else set()  # see anomaly.job._check_maps
        taken = [out_dir / targets[i] for b in todo for i in layout.positions(b) if i not in own]
        check_targets(out_dir, [*(out_dir / t for t in targets), grid], overwrite=True,  # in the way
                      inputs=found.sources, model=info.source, folder=True)
        refuse_existing([*taken, *([] if journal.resumed else [grid])], overwrite)
        report = ReconstructJob(out_dir, [], [], grid, np.zeros(0), None, shard=(index, count),
                                resumed=len(journal.done), repeated=found.repeated, hidden=found.hidden)
        _run(model, found, journal, layout, [out_dir / t for t in targets], workers, progress,
             (overwrite, todo[0] if own else None))
        report.merged, report.pending = job.end(
            journal, shares, share.torchrun, merge_timeout, progress,
            lambda: _finish(shares, report, model, out_dir, found, targets, grid_max, overwrite))
        if not report.merged:
            _collect(shares.entries(index), report, out_dir, found, targets)
        return report


def _refuse_lost_pngs(journal, out_dir: Path, names: list[str], targets: list[str], layout: Layout) -> None:
    """A finished batch's reconstructions must be there, as the job wrote them (stream.batches)."""

    refuse_changed_outputs(journal, _png_files(out_dir, names, targets, layout), "reconstruction")


def _png_files(out_dir: Path, names: list[str], targets: list[str], layout: Layout):
    """A journal line's reconstructions, in the order its `outputs` pin them."""

    def files(e: dict) -> list[Path]:
        at = {names[i]: i for i in layout.positions(e["batch"])}
        return [out_dir / targets[at[r["name"]]] for r in e["rows"]]

    return files


def _row_check(names: Sequence[str]):
    def check(row, i: int) -> str | None:
        if not isinstance(row, dict) or set(row) != {"name", "psnr", "ssim"}:
            return "not a reconstruction row"
        if row["name"] != names[i]:
            return f"names {str(row['name'])[:80]!r}, not the batch's file {names[i]!r}"
        return check_number(row, "psnr") or (None if row["ssim"] is None else check_number(row, "ssim"))

    return check


def _num(v: float) -> float | str:
    return float(v) if math.isfinite(v) else repr(float(v))  # JSON has no infinity: "inf" as text


def _run(model: "Model", found: stream.Inputs, journal, layout: Layout, targets: list[Path], workers: int,
         progress, replacing: tuple[bool, int | None] = (True, None)) -> None:
    """Reconstruct this share's unfinished batches; a batch's PNGs, then its journal line, are
    written in a thread behind the reconstruction (in order). replacing: (--overwrite, the batch a
    resumed job may have begun writing): no other PNG replaces a file put there while the job ran."""
    info = model.info
    positions = stream.shard(found.paths, layout.index, layout.count, layout.batch_size) if layout.count > 1 else None
    total = len(found.paths) if positions is None else len(positions)
    done = sum(len(layout.positions(b)) for b in journal.done)
    has_ssim = [True]

    def write(item) -> None:
        b, pngs, rows = item
        digests = []
        for img, path in pngs:
            with journal.writing(path):
                digests.append(imageio.save_png(img, path, replacing[0], own=b.index == replacing[1]))
        with naming_failed_writes(journal.out):  # after its PNGs: a batch in the journal is a batch done
            journal.append(b.index, rows, [(str(p), r) for p, r in b.skipped], digests)

    with pipeline.WriteBehind(write) as writer:
        for b in stream.iter_batches(found.paths, info.image_size, info.channels, layout.batch_size, workers,
                                     positions, skip_batches=frozenset(journal.done)):
            rows, pngs = [], []
            if len(b.paths):
                x_hat = imageio.to_uint8(model.reconstruct(b.images))
                p = psnr(b.images, x_hat)
                s = _ssim(b.images, x_hat, has_ssim)
                rows = [{"name": found.names[i], "psnr": _num(p[k]), "ssim": None if s is None else _num(s[k])}
                        for k, i in enumerate(b.positions)]
                pngs = list(zip(x_hat, [targets[i] for i in b.positions]))
            writer.put((b, pngs, rows))
            done += len(b.paths) + len(b.skipped)
            if progress:
                progress(done, total)


def _ssim(x, x_hat, has_ssim: list[bool]):
    if not has_ssim[0]:
        return None
    try:
        return ssim(x, x_hat)
    except ImportError:  # a vaekit[runtime] box: PSNR only, and the CLI says why
        has_ssim[0] = False
        return None


def _collect(entries, report: ReconstructJob, out_dir: Path, found: stream.Inputs, targets: list[str]) -> list[int]:
    """The report's rows from journal entries; each row's position in the file list."""
    names, ps, ss, skipped = [], [], [], []
    for e in entries:
        skipped += [(Path(p), r) for p, r in e["skipped"]]
        for r in e["rows"]:
            names.append(r["name"])
            ps.append(float(r["psnr"]))
            ss.append(None if r["ssim"] is None else float(r["ssim"]))
    where = {n: i for i, n in enumerate(found.names)}  # unique: png_names refused any clash
    at = [where[n] for n in names]
    report.names, report.skipped, report.psnr = names, skipped, np.array(ps, dtype=np.float64)
    report.written = [out_dir / targets[i] for i in at]
    report.ssim = None if any(s is None for s in ss) else np.array(ss, dtype=np.float64)
    return at


def _finish(shares: Shares, report: ReconstructJob, model: "Model", out_dir: Path, found: stream.Inputs,
            targets: list[str], grid_max: int, replace: bool = True) -> None:
    """The comparison grid from the first `grid_max` images (inputs decoded again, grey where one
    can no longer be read; reconstructions read back from their PNGs), then the journals go. Not
    over a file at the grid's name unless `replace` (--overwrite); one with this very grid's bytes
    is the job's own (a merge that died before the journals went, this share's or another's) and
    is kept as it is."""
    at = _collect(shares.merged(), report, out_dir, found, targets)
    if not report.names:
        shares.remove()
        raise imageio.none_usable(f"in {stream.named(found.roots)}", report.skipped)
    info, shown = model.info, []
    for i, png in zip(at[:grid_max], report.written[:grid_max]):
        try:
            shown.append(imageio.load_image(found.paths[i], info.image_size, info.channels))
        except imageio.ImageReadError:  # removed or damaged since its batch: a grey tile, not a failed job
            shown.append(np.full((info.channels, info.image_size, info.image_size), 128, np.uint8))
        shown.append(imageio.load_image(png, info.image_size, info.channels))
    image = imageio.make_grid(np.stack(shown), ncol=8)
    imageio.save_png(image, report.grid, replace, own=True)  # a file put there while the job ran stays
    shares.remove()

