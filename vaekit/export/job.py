"""`vaekit export`: trace, check parity, optionally quantise, seal, and write the files atomically."""

from __future__ import annotations

import math

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from vaekit.inference.engine_onnx import part_paths, refuse_model_files
from vaekit.errors import BadInput, OutputExists, cannot_write
from vaekit.export.graphs import OPSET, ROLES, export_graphs, export_reader
from vaekit.export.metadata import metadata_for, sealed, set_metadata
from vaekit.export.parity import Parity, check_parity, load_parity_images, require_parity, sample_inputs
from vaekit.export.quantize import QUANTIZE, Quantization, calibration_feeds, quantize_int8
from vaekit.fileio import refuse_existing, refuse_inside, refuse_under_file
from vaekit.fileio.outputs import MAX_NAME_BYTES, cut_name, put_in_place
from vaekit.fileio.leftovers import mark_partial, remove_stale
from vaekit.images.arrays import as_images
from vaekit.progress import Progress



@dataclass
class ExportReport:
    files: dict[str, Path]  # role -> written file
    fingerprint: str
    parity: list[Parity]
    samples: int  # images the parity check ran on
    quantization: Quantization | None = None
    seconds: float = 0.0
    opset: int = OPSET
    bytes: dict[str, int] = field(default_factory=dict)


def _checked(out, run_dir, overwrite: bool, images, quantize, rtol: float, atol: float) -> Path:
    """`out` checked (`_check_out`), and the other arguments: BadInput before any work."""
    out = _check_out(out, run_dir, overwrite)
    if images is not None and not isinstance(images, np.ndarray):  # the parity images are inputs too
        refuse_inside(out, [images] if isinstance(images, (str, os.PathLike)) else images, "output")
    if quantize is not None and quantize not in QUANTIZE:
        raise BadInput(f"quantize must be one of {QUANTIZE} or None, got {quantize!r}")
    if not (0 <= rtol < math.inf and 0 <= atol < math.inf):  # inf * 0 is NaN: no tolerance could pass
        raise BadInput(f"tolerances must be finite numbers >= 0, got rtol={rtol}, atol={atol}")
    return out


def _check_out(out: Path, run_dir: Path, overwrite: bool = False) -> Path:
    out = Path(out)
    if not out.name.endswith(".onnx") or out.name == ".onnx":
        raise BadInput(f"output must be a file name ending in .onnx, got {str(out)!r}")
    # an export inside its run would outlive a `train --out RUN --overwrite` there as if it were the new
    # run's, and its staging folder (.model.safetensors.onnx.vaekit-export-*.tmp) could match the run's own
    # temporary-file names, which training deletes as strays of its writes
    refuse_model_files(out, Path(run_dir), "output")
    refuse_under_file(out)  # a file, a link loop or a read-only folder on its way: said before the trace
    for p in part_paths(out).values():  # the parts' names are longer than the one given (is_dir raised ENAMETOOLONG)
        if len(os.fsencode(p.name)) > MAX_NAME_BYTES:
            raise BadInput(f"output name {out.name[:40]!r}... is too long: its part {p.name[-16:]!r} would be named in "
                           f"{len(os.fsencode(p.name))} bytes, more than {MAX_NAME_BYTES} bytes (the most a file system holds)")
    for p in part_paths(out).values():
        if p.is_dir():
            raise BadInput(f"output {p} is a folder; give a file name ending in .onnx")
    for p in part_paths(out).values():  # the two side files too: the user named only the main one
        refuse_existing(p, overwrite)
    return out


_STAGING = ".{name}.vaekit-export-{pid}.tmp"  # the staging folder, next to the output; pid as "PID-TOKEN"
_STAGING_EXTRA = 64  # bytes _STAGING adds to a name, at most (a pid of 20 digits and its token)


def _staging_name(out: Path) -> str:
    """The output's name as the staging folder carries it: cut to leave room for _STAGING's own
    bytes, so a name that fits a file system stages too (a 230-byte one did not)."""
    return cut_name(out.name, _STAGING_EXTRA)


def _remove_stale_staging(out: Path) -> None:
    """Delete staging folders of exports that were killed (SIGKILL leaves them): those whose
    process is gone. A live export's folder is left alone."""
    prefix, suffix = _STAGING.format(name=_staging_name(out), pid="|").split("|")
    remove_stale(out.parent, prefix, suffix)


def export(
    run_dir: str | Path,
    out: str | Path,
    images: np.ndarray | str | Path | Sequence[str | Path] | None = None,
    quantize: str | None = None,
    rtol: float = 1e-4,
    atol: float = 1e-4,
    progress: Progress | None = None,
    overwrite: bool = False,
) -> ExportReport:
    """Export the run in `run_dir` to `out` (+ .encoder.onnx, .decoder.onnx), verified.

    Existing files at any of the names are replaced only with `overwrite`.
    images: what to run the parity check on: uint8 (N, C, H, W) at the model's size, or
    image files / folders (the first 64 images, preprocessed as the model does); default
    `sample_inputs`. quantize="int8": write statically quantised (QDQ) models instead of
    fp32, calibrated on `images` if given, else on the run's training images (refused when
    they are gone: the model's own samples misjudge real images); fp32 parity is
    still checked against torch first, and the score change the quantisation causes is
    reported (not judged: that is the user's call, and the stored threshold stays fp32's).
    Raises ExportError when the ONNX engine does not match torch within rtol/atol.
    """
    from vaekit.inference.engine_onnx import OnnxModel

    t0 = time.perf_counter()
    out = _checked(out, run_dir, overwrite, images, quantize, rtol, atol)

    def step(done: int, what: str) -> None:
        if progress:
            progress(done, 5, phase=what)

    job = _Job(run_dir, rtol, atol)
    user_images, images = job.parity_images(images) if images is not None or quantize != "int8" else job.int8_images()
    step(0, "export")
    protos = job.graphs()
    step(1, "export")
    refuse_under_file(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(out)
    staging = mark_partial(out.parent / _STAGING.format(name=_staging_name(out), pid=f"{os.getpid()}-{os.urandom(4).hex()}"))
    try:
        staged = job.write(protos, part_paths(staging / out.name), "none")
        step(2, "parity")
        candidate = OnnxModel(staged["scorer"])
        parity = require_parity(check_parity(job.reference, candidate, images, rtol, atol), "ONNX model")
        step(3, "parity")
        quant = None
        if quantize == "int8":
            staged, quant = job.int8(staging, out.name, staged, candidate, user_images, images)
        step(4, "write")
        final = _publish(staged, out, overwrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    step(5, "write")
    return ExportReport(files=final, fingerprint=job.fingerprint, parity=parity, samples=len(images),
                        quantization=quant, seconds=time.perf_counter() - t0,
                        bytes={r: p.stat().st_size for r, p in final.items()})


class _Job:
    """One export's torch reference and the steps that use it."""

    def __init__(self, run_dir, rtol: float, atol: float):
        from vaekit.training import rundir
        from vaekit.training.runlock import refuse_in_use
        from vaekit.inference.engine_torch import TorchModel

        refuse_in_use(run_dir)  # a training is still writing it: its weights are half-trained
        stopped = rundir.stopped_before_finish(Path(run_dir), rundir.read_config(Path(run_dir)))
        if stopped:  # an export of it carried no threshold and no tables, and said "parity ok"
            raise rundir.RunError(stopped)
        self.reference = TorchModel(run_dir)
        self.net, self.cfg, self.info = self.reference.net, self.reference.config, self.reference.info
        self.rtol, self.atol = rtol, atol
        self.fingerprint = rundir.fingerprint(self.net.state_dict())
        stored = self.cfg.get("fingerprint")
        if stored and stored != self.fingerprint:
            raise rundir.RunError(
                f"the weights in {Path(run_dir) / rundir.WEIGHTS} (fingerprint {self.fingerprint}) are not the ones "
                f"config.json names ({stored}); retrain or restore the run before exporting")

    def training_images(self) -> np.ndarray:
        """int8's calibration images when none are given: 64 of the run's training images, spread
        over its folder (and 64 others, where there are, to measure the score change on). The
        model's own samples, used before, are darker and flatter than real images: calibrated on
        them, an int8 encoder clipped real pixels (one code for every image of a surface, normal
        images at 72-83 sd² where fp32 gave 0.1-4.9) and the change reported on them was 7%."""
        from vaekit.anomaly.held_out import training_roots

        data = self.cfg.get("data") or {}
        root = data.get("root")
        # a root stored relative (runs of before it was stored absolute) is tried where held_out tries it
        there = [r for r in training_roots(self.cfg, Path(self.reference.info.source)) if r.is_dir()]
        if there:
            from vaekit import images as imageio

            found = imageio.find_images(there[0])
            if found:
                take = np.unique(np.linspace(0, len(found) - 1, min(128, len(found))).round().astype(int))
                self.calibrated_on = "the run's training images"
                read = data.get("images")  # a run trained on one file stores that file's folder as its root
                if isinstance(read, int) and not isinstance(read, bool) and read + len(data.get("skipped") or []) < len(found):
                    self.calibrated_on += (f" (taken from the {len(found)} images now under {there[0]}, where the run "
                                           f"read {read}; pass --images if those are not like the ones it will score)")
                loaded = load_parity_images(self.reference, [found[i] for i in take], limit=len(take))
                if len(loaded) < 10:
                    self.calibrated_on += "; the score change measured on these same images, too few to keep some apart"
                    return loaded
                # every other one judges the score change: measured on the images that calibrated it, it read low
                self.judge_images, self.calibrated_on = loaded[1::2], self.calibrated_on + (
                    f"; the score change measured on {len(loaded[1::2])} others of them")
                return loaded[::2]
        raise BadInput(f"--quantize int8 calibrates on images like those the model will score, and the run's training "
                       f"folder {root or '(not recorded)'} is gone or holds none: pass --images DIR")

    def int8_images(self) -> tuple[np.ndarray, np.ndarray]:
        """`parity_images` of an int8 export given no images: the run's training images calibrate it,
        and parity runs on them and on the model's own samples, noise and flat images, as without int8."""
        user_images, images = self.parity_images(self.training_images())
        return user_images, np.concatenate([images, sample_inputs(self.reference)])

    def parity_images(self, images) -> tuple[np.ndarray | None, np.ndarray]:
        """(the caller's images, which also calibrate int8, or None; the images parity runs on)."""
        user_images = None
        if isinstance(images, np.ndarray):
            user_images = as_images(images, self.info.channels, self.info.image_size)
            if user_images.dtype != np.uint8 or len(user_images) == 0:
                raise BadInput(f"parity images must be a non-empty uint8 array, got {user_images.dtype} x {len(user_images)}")
        elif images is not None:
            user_images = load_parity_images(self.reference, images)
        if user_images is None:
            return None, sample_inputs(self.reference)
        # at least 5 images, so that batches of 4 and 1 exercise the dynamic batch dimension
        if len(user_images) >= 5:
            return user_images, user_images
        return user_images, np.concatenate([user_images, sample_inputs(self.reference, 5)])

    def graphs(self, int8: bool = False) -> dict:
        """{role: ModelProto}: the VAE's three graphs, and the defect reader's where the run has one."""
        protos = export_graphs(self.net, self.info.channels, self.info.image_size, self.info.latent_dim, int8=int8)
        if self.reference.has_reader and not int8:
            protos["reader"] = export_reader(self.reference.reader(), self.info.channels)
        return protos

    def write(self, protos: dict, paths: dict[str, Path], quantization: str) -> dict[str, Path]:
        """Each role's graph, with vaekit's metadata and its seal, to paths[role] (in the staging
        folder; a full disk names the file it stands for, beside the output)."""
        for role, proto in protos.items():
            set_metadata(proto, metadata_for(role, self.cfg, self.fingerprint, self.info.log_scale,
                                             "none" if role == "reader" else quantization))
            try:
                paths[role].write_bytes(sealed(proto))
            except OSError as e:
                raise cannot_write(e, paths[role].parent.parent / paths[role].name) from None
        return {role: paths[role] for role in protos}

    def int8(self, staging: Path, name: str, fp32: dict[str, Path], candidate, user_images, images):
        """(the int8 files, Quantization): quantised, sealed, and their score change measured."""
        import onnx
        from torch import nn

        from vaekit.inference.engine_onnx import OnnxModel

        qdir, forms = staging / "int8", fp32
        qdir.mkdir()
        if any(isinstance(m, nn.ConvTranspose2d) for m in self.net.modules()):
            # an arch v1 decoder's ConvTranspose has no int8 kernel in onnxruntime: quantise the
            # form that has convolutions in its place, itself held to torch first like the fp32 export
            (qdir / "fp32").mkdir()
            forms = self.write(self.graphs(int8=True), part_paths(qdir / "fp32" / name), "none")
            require_parity(check_parity(self.reference, OnnxModel(forms["scorer"]), images, self.rtol, self.atol),
                           "the int8 form of the model")
        feeds, quantized = calibration_feeds(self.reference, user_images), part_paths(qdir / name)
        for role in ROLES:
            quantize_int8(forms[role], quantized[role], feeds[role])
        quantized = self.write({role: onnx.load(str(quantized[role])) for role in ROLES}, quantized, "int8-static-qdq")
        if "reader" in fp32:  # the defect reader stays float32: its score is a probability, not a sum of thousands
            shutil.copyfile(fp32["reader"], quantized.setdefault("reader", part_paths(qdir / name)["reader"]))
        # judged on the images a user scores: theirs, or training images other than those that calibrated it
        judge = getattr(self, "judge_images", user_images)
        # the VAE's own score: a surface's default, the reader's, stays float32 and would not move
        which = "atypicality" if "reader" in fp32 else None
        fp32_scores = candidate.score(judge, score=which).score
        q_scores = OnnxModel(quantized["scorer"]).score(judge, score=which).score
        rel = np.abs(q_scores - fp32_scores) / np.maximum(np.abs(fp32_scores), 1e-12)
        source = getattr(self, "calibrated_on", "your images")
        vae_bytes = lambda files: sum(p.stat().st_size for r, p in files.items() if r in ROLES)  # noqa: E731
        return quantized, Quantization(
            f"int8 static QDQ (int8 per-channel weights, uint8 activations, calibrated on {source})"
            + ("; the defect reader stays float32, the score change is the atypicality's" if which else ""),
            float(rel.max()), float(rel.mean()), vae_bytes(fp32), vae_bytes(quantized),
            "the atypicality (the default defect score stays float32)" if which else "the default score")


def _publish(staged: dict[str, Path], out: Path, overwrite: bool) -> dict[str, Path]:
    """Move the staged files to their names: side files first, the main file last, so a reader
    never pairs a new main file with old parts unnoticed (the fingerprints would differ, and
    load says so). Without `overwrite` a file that appeared at a name while the export ran (another
    export's, a user's) is left as it is and nothing of this export stays (OutputExists)."""
    final, moved, at = part_paths(out), [], out
    try:
        for role in ("encoder", "decoder", "reader", "scorer"):
            at = final[role]
            if role not in staged:
                # a reader file from an earlier export at this name (replaced only with --overwrite,
                # which _check_out required) would not belong to this model
                if overwrite:
                    at.unlink(missing_ok=True)
                elif os.path.lexists(at):
                    raise OutputExists(f"output {at} appeared")
                del final[role]
                continue
            with open(staged[role], "rb") as f:
                os.fsync(f.fileno())
            put_in_place(staged[role], at, replace=overwrite)
            moved.append(at)
    except BaseException as e:
        for p in [] if overwrite else moved:  # this export's own, moved a moment ago: no half export stays
            p.unlink(missing_ok=True)
        if isinstance(e, OutputExists):  # put_in_place's words are a streaming job's (--resume, OUT.partial)
            raise OutputExists(f"output {at} appeared while the export ran and is left as it is; nothing of this "
                               "export was kept: move it away and export again, or pass --overwrite") from None
        raise
    return final
