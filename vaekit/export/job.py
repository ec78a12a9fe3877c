"""`vaekit export`: trace, check parity, optionally quantise, seal, and write the three files atomically."""

from __future__ import annotations

import glob
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from vaekit.engine_onnx import part_paths
from vaekit.errors import BadInput
from vaekit.export.graphs import OPSET, ROLES, _export_graphs
from vaekit.export.metadata import _metadata, _sealed, _set_metadata
from vaekit.export.parity import Parity, _load_parity_images, _require, check_parity, sample_inputs
from vaekit.export.quantize import QUANTIZE, Quantization, _calibration_feeds, _quantize_int8
from vaekit.fileio import refuse_existing
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


def _check_out(out: Path, overwrite: bool = False) -> Path:
    out = Path(out)
    if not out.name.endswith(".onnx") or out.name == ".onnx":
        raise BadInput(f"output must be a file name ending in .onnx, got {str(out)!r}")
    for p in part_paths(out).values():
        if p.is_dir():
            raise BadInput(f"output {p} is a folder; give a file name ending in .onnx")
    for p in part_paths(out).values():  # the two side files too: the user named only the main one
        refuse_existing(p, overwrite)
    return out


_STAGING = ".{name}.vaekit-export-{pid}.tmp"  # the staging folder, next to the output; pid as "PID-TOKEN"


def _remove_stale_staging(out: Path) -> None:
    """Delete staging folders of exports that were killed (SIGKILL leaves them): those whose
    process is gone. A live export's folder is left alone."""
    prefix, suffix = _STAGING.format(name=out.name, pid="|").split("|")
    for d in out.parent.glob(f"{glob.escape(prefix)}*{suffix}"):
        pid = d.name[len(prefix) : -len(suffix)].split("-")[0]
        if not pid.isdigit() or not d.is_dir() or d.is_symlink():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # still running
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except OSError:  # another user's live process
            continue


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

    Existing files at any of the three names are replaced only with `overwrite`.
    images: what to run the parity check on: uint8 (N, C, H, W) at the model's size, or
    image files / folders (the first 64 images, preprocessed as the model does); default
    `sample_inputs`. quantize="int8": write statically quantised (QDQ) models instead of
    fp32, calibrated on `images` if given, else on the model's own samples; fp32 parity is
    still checked against torch first, and the score change the quantisation causes is
    reported (not judged: that is the user's call, and the stored threshold stays fp32's).
    Raises ExportError when the ONNX engine does not match torch within rtol/atol.
    """
    from vaekit import run as rundir
    from vaekit.engine_onnx import OnnxModel
    from vaekit.engine_torch import TorchModel

    t0 = time.perf_counter()
    out = _check_out(out, overwrite)
    if quantize is not None and quantize not in QUANTIZE:
        raise BadInput(f"quantize must be one of {QUANTIZE} or None, got {quantize!r}")
    if not (rtol >= 0 and atol >= 0):
        raise BadInput(f"tolerances must be >= 0, got rtol={rtol}, atol={atol}")

    def step(done: int, what: str) -> None:
        if progress:
            progress(done, 5, phase=what)

    reference = TorchModel(run_dir)
    net, cfg = reference.net, reference.config
    fingerprint = rundir.fingerprint(net.state_dict())
    if cfg.get("fingerprint") and cfg["fingerprint"] != fingerprint:
        raise rundir.RunError(
            f"the weights in {Path(run_dir) / rundir.WEIGHTS} (fingerprint {fingerprint}) are not the ones "
            f"config.json names ({cfg['fingerprint']}); retrain or restore the run before exporting"
        )
    user_images = None  # the caller's images, if any: they also calibrate int8
    if isinstance(images, np.ndarray):
        user_images = reference._check(images)
        if user_images.dtype != np.uint8 or len(user_images) == 0:
            raise BadInput(f"parity images must be a non-empty uint8 array, got {user_images.dtype} x {len(user_images)}")
    elif images is not None:
        user_images = _load_parity_images(reference, images)
    # at least 5 images, so that batches of 4 and 1 exercise the dynamic batch dimension
    images = sample_inputs(reference) if user_images is None else \
        (user_images if len(user_images) >= 5 else np.concatenate([user_images, sample_inputs(reference, 5)]))

    info = reference.info
    step(0, "export")
    protos = _export_graphs(net, info.channels, info.image_size, info.latent_dim)
    step(1, "export")

    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(out)
    staging = out.parent / _STAGING.format(name=out.name, pid=f"{os.getpid()}-{os.urandom(4).hex()}")
    staging.mkdir()
    try:
        staged = part_paths(staging / out.name)
        for role in ROLES:
            _set_metadata(protos[role], _metadata(role, cfg, fingerprint, info.log_scale, "none"))
            staged[role].write_bytes(_sealed(protos[role]))
        step(2, "parity")
        candidate = OnnxModel(staged["scorer"])
        parity = _require(check_parity(reference, candidate, images, rtol, atol), "ONNX model")
        step(3, "parity")

        quant = None
        if quantize == "int8":
            before = sum(p.stat().st_size for p in staged.values())
            qdir = staging / "int8"
            qdir.mkdir()
            quantized = part_paths(qdir / out.name)
            import onnx

            # quantised from the form whose decoder has no ConvTranspose (onnxruntime has no int8
            # kernel for it), itself held to torch first like the fp32 export
            (qdir / "fp32").mkdir()
            forms = part_paths(qdir / "fp32" / out.name)
            for role, proto in _export_graphs(net, info.channels, info.image_size, info.latent_dim, int8=True).items():
                _set_metadata(proto, _metadata(role, cfg, fingerprint, info.log_scale, "none"))
                forms[role].write_bytes(_sealed(proto))
            _require(check_parity(reference, OnnxModel(forms["scorer"]), images, rtol, atol), "the int8 form of the model")
            feeds = _calibration_feeds(reference, user_images)
            for role in ROLES:
                _quantize_int8(forms[role], quantized[role], feeds[role])
                proto = onnx.load(str(quantized[role]))
                _set_metadata(proto, _metadata(role, cfg, fingerprint, info.log_scale, "int8-static-qdq"))
                quantized[role].write_bytes(_sealed(proto))
            # judged on the images a user scores: theirs, else the calibration-like prior samples
            judge = user_images if user_images is not None else np.rint(reference.sample(32, seed=2) * 255).astype(np.uint8)
            fp32_scores = candidate.score(judge).score
            q_scores = OnnxModel(quantized["scorer"]).score(judge).score
            rel = np.abs(q_scores - fp32_scores) / np.maximum(np.abs(fp32_scores), 1e-12)
            source = "your images" if user_images is not None else "the model's own samples"
            quant = Quantization(f"int8 static QDQ (int8 per-channel weights, uint8 activations, calibrated on {source})",
                                 float(rel.max()), float(rel.mean()), before,
                                 sum(p.stat().st_size for p in quantized.values()))
            staged = quantized
        step(4, "write")

        # side files first, the main file last: a reader never pairs a new main file with
        # old parts unnoticed (the fingerprints would differ, and load says so)
        final = part_paths(out)
        for role in ("encoder", "decoder", "scorer"):
            with open(staged[role], "rb") as f:
                os.fsync(f.fileno())
            os.replace(staged[role], final[role])
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    step(5, "write")
    return ExportReport(files=final, fingerprint=fingerprint, parity=parity, samples=len(images),
                        quantization=quant, seconds=time.perf_counter() - t0,
                        bytes={r: p.stat().st_size for r, p in final.items()})
