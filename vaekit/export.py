"""Export a trained run to ONNX for torch-free CPU inference, and prove it matches torch.

`export(run_dir, "parts.onnx")` writes three self-contained ONNX models (weights inside,
no `.onnx.data` side file), each with a dynamic batch dimension:

    parts.onnx          scorer   x (B,C,H,W) in [0,1], eps (B,D) -> recon (B,), kl (B,),
                                 pixel_map (B,H,W), mu (B,D), logvar (B,D)
    parts.encoder.onnx  encoder  x (B,C,H,W) in [0,1] -> mu (B,D), logvar (B,D)
    parts.decoder.onnx  decoder  z (B,D) -> image (B,C,H,W) in [0,1], params (B,C,H,W)

Three files, not one: ONNX holds one graph per model, and onnxruntime runs every node of a
graph whatever outputs are asked for (checked with its profiler), so one combined graph
would make `encode` pay for a decoder pass (or, fed empty batches, cost ~30% at batch 1).
`parts.onnx` is the file to name (`vaekit.load`, the CLI); the other two are found next to
it, and a machine that only scores needs only it. Every file carries the same vaekit
metadata (metadata_props), so a mixed-up set is caught at load. The scores themselves
(neg_elbo, excess, ...) are computed from the scorer's outputs by the shared numpy code in
vaekit.engine, exactly as for the torch engine.

The exporter's pitfalls, each handled on purpose: torch >= 2.9 exports with dynamo (needs
onnxscript); external_data=False keeps the weights inside the file; a dynamic batch needs
dynamic_shapes with torch.export.Dim (sample batch 2 and 3, so the exporter cannot
specialise 1); the wrapper is put in eval(); one trace of one module covers all three graphs
(dynamo tracing is the slow part), split with onnx.utils.Extractor; layers that
onnxruntime runs slowly are traced in an equivalent faster form (vaekit/export_rewrite.py),
which the parity check then holds to torch like everything else; opset 20 is pinned (the
default of torch 2.13's exporter, so no version conversion; the files need onnxruntime >=
1.18 for their IR version 10); the exporter's chatter (stdout, logging, warnings) is silenced
because a library never prints.

Before anything is written where the user asked, both engines run on sample images and
every output is compared; above tolerance the export fails and leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import glob
import io
import json
import logging
import math
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from vaekit.version import __version__
from vaekit.errors import BadInput
from vaekit.fileio import refuse_existing
from vaekit.engine_onnx import CHECKSUM_KEY, CHECKSUM_PLACEHOLDER, FORMAT, part_paths

Progress = Callable[..., None]
OPSET = 20
ROLES = ("scorer", "encoder", "decoder")
QUANTIZE = ("int8",)
MAX_STORED_SCORES = 2000  # validation scores kept in the metadata (for histograms)
PREPROCESSING = {
    "resize": "shorter side to image_size (bicubic), centre crop (vaekit.images.load_image)",
    "scale": "uint8 pixels / 255 -> float32 in [0, 1]",
    "layout": "NCHW",
}
IO = {
    "scorer": {"inputs": {"x": "(B,C,H,W) float32 in [0,1]", "eps": "(B,D) float32; zeros for the default score (z = mu)"},
               "outputs": {"recon": "(B,) -log p(x|z), nats", "kl": "(B,) KL(q(z|x)||p(z)), nats",
                           "pixel_map": "(B,H,W) per-pixel -log p(x|z) summed over channels, nats",
                           "mu": "(B,D)", "logvar": "(B,D)"},
               "scores": "computed in numpy by vaekit.engine.Model.score: neg_elbo = sum(pixel_map) + kl, "
                         "excess = neg_elbo - the image's own floor (vaekit.engine.pixel_floor)"},
    "encoder": {"inputs": {"x": "(B,C,H,W) float32 in [0,1]"}, "outputs": {"mu": "(B,D)", "logvar": "(B,D)"}},
    "decoder": {"inputs": {"z": "(B,D) float32"},
                "outputs": {"image": "(B,C,H,W) E[x|z] in [0,1]", "params": "(B,C,H,W) Bernoulli logits or Gaussian means"}},
}


class ExportError(RuntimeError):
    """The exported model does not reproduce the torch engine (nothing was written)."""


@dataclass
class Parity:
    name: str  # what was compared, e.g. "score: neg_elbo"
    max_abs: float  # max |onnx - torch|
    max_rel: float  # max |onnx - torch| / |torch| over values with |torch| > atol
    tolerance: str  # the criterion, for the report
    ok: bool


@dataclass
class Quantization:
    method: str  # what was done, in words
    score_max_rel: float  # max relative change of the default score vs the fp32 ONNX model
    score_mean_rel: float
    bytes_before: int
    bytes_after: int


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


# --- the graphs: one trace of whatever ConvVAE is, split three ways --------------------------------

def _wrapper(net):
    """All three computations as one module, so one (slow) dynamo trace yields them all
    and the three files cannot hold different weights."""
    from torch import nn

    class Inference(nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x, eps, z):
            # the scorer: the very method the torch engine calls (ConvVAE.score_parts)
            recon, kl, pmap, mu, logvar = self.net.score_parts(x, eps)
            # the decoder, on its own codes
            params = self.net.decode(z)  # (B_z, C, H, W)
            return recon, kl, pmap, mu, logvar, self.net.mean_image(params), params

    return Inference(net).eval()


def _export_graphs(net, c: int, s: int, d: int, int8: bool = False) -> dict:
    """torch -> {role: onnx ModelProto}, each with a dynamic batch and its weights inside;
    int8=True traces the form meant for quantisation (vaekit/export_rewrite.py)."""
    import onnx.utils
    import torch

    from vaekit.export_rewrite import for_onnx

    inputs = ["x", "eps", "z"]
    outputs = ["recon", "kl", "pixel_map", "mu", "logvar", "image", "params"]
    batch, batch_z = torch.export.Dim("batch"), torch.export.Dim("batch_z")
    args = (torch.rand(2, c, s, s), torch.zeros(2, d), torch.zeros(3, d))  # not 1: that would be specialised
    # The exporter prints progress, logs that torchvision is absent and warns about its own
    # internals; none of that is the user's business.
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                _wrapper(for_onnx(net, int8=int8)), args, dynamo=True, external_data=False, verbose=False, opset_version=OPSET,
                input_names=inputs, output_names=outputs,
                dynamic_shapes={"x": {0: batch}, "eps": {0: batch}, "z": {0: batch_z}},
            )
    finally:
        quiet.setLevel(level)
    whole = program.model_proto
    split = onnx.utils.Extractor(whole)
    protos = {role: split.extract_model(list(IO[role]["inputs"]), list(IO[role]["outputs"])) for role in ROLES}
    for proto in protos.values():
        for v in [*proto.graph.input, *proto.graph.output]:
            for dim in v.type.tensor_type.shape.dim:
                if dim.dim_param == "batch_z":
                    dim.dim_param = "batch"
        proto.ir_version, proto.producer_name, proto.producer_version = whole.ir_version, whole.producer_name, whole.producer_version
        onnx.checker.check_model(proto)
    return protos


def _cap_scores(section):
    """The anomaly section with every stored list of validation scores cut to MAX_STORED_SCORES
    evenly spaced quantiles: the histogram keeps its shape, the metadata stays small."""
    if isinstance(section, dict):
        return {k: (_quantile_list(v) if k == "scores" and isinstance(v, list) else _cap_scores(v)) for k, v in section.items()}
    return section


def _quantile_list(values: list) -> list[float]:
    if len(values) <= MAX_STORED_SCORES:
        return [float(v) for v in values]
    return [float(v) for v in np.quantile(np.asarray(values, np.float64), np.linspace(0, 1, MAX_STORED_SCORES))]


def _metadata(role: str, cfg: dict, fingerprint: str, log_scale: list[float] | None, quantization: str) -> dict[str, str]:
    from vaekit.config import from_stored_model

    m, a = cfg["model"], _cap_scores(dict(cfg.get("anomaly") or {}))
    m = {**m, "arch": from_stored_model(m).arch, "layout": from_stored_model(m).layout}  # explicit, for old runs
    pre = {**PREPROCESSING, "image_size": m["image_size"], "channels": m["channels"]}
    return {
        "vaekit.format": FORMAT,
        "vaekit.role": role,
        "vaekit.version": __version__,
        "vaekit.fingerprint": fingerprint,
        "vaekit.image_size": str(m["image_size"]),
        "vaekit.channels": str(m["channels"]),
        "vaekit.latent_dim": str(from_stored_model(m).z_dims),  # the flat z every graph takes
        "vaekit.likelihood": m["likelihood"],
        "vaekit.log_scale": json.dumps(log_scale),  # gaussian sigma per channel (the excess score needs it)
        "vaekit.preprocessing": json.dumps(pre),
        "vaekit.score": str(a.get("score", "")),
        "vaekit.threshold": json.dumps(a.get("threshold")),
        "vaekit.anomaly": json.dumps(a),  # the run's whole anomaly section: thresholds, quantiles, scores
        "vaekit.model": json.dumps(m),
        "vaekit.quantization": quantization,
        "vaekit.io": json.dumps(IO[role]),
    }


def _set_metadata(proto, meta: dict[str, str]) -> None:
    import onnx

    keep = {p.key: p.value for p in proto.metadata_props if not p.key.startswith("vaekit.")}
    onnx.helper.set_model_props(proto, {**keep, **meta})
    proto.doc_string = (f"vaekit {meta['vaekit.role']} for a {meta['vaekit.channels']}x{meta['vaekit.image_size']}"
                        f"x{meta['vaekit.image_size']} VAE (fingerprint {meta['vaekit.fingerprint']}); see metadata_props")


def _sealed(proto) -> bytes:
    """Serialise with a sha256 of the file itself in metadata "vaekit.sha256".

    The digest is computed with a fixed placeholder in its place, then written over the
    placeholder (same length, so the protobuf stays valid); the engine reverses this on open,
    so a changed weight in an otherwise valid file is refused without importing onnx there.
    """
    import hashlib

    import onnx

    props = {p.key: p.value for p in proto.metadata_props}
    props[CHECKSUM_KEY] = CHECKSUM_PLACEHOLDER
    onnx.helper.set_model_props(proto, props)
    data = proto.SerializeToString()
    if data.count(CHECKSUM_PLACEHOLDER.encode()) != 1:
        raise ExportError("could not seal the ONNX file with its checksum (placeholder not unique)")
    digest = hashlib.sha256(data).hexdigest()
    return data.replace(CHECKSUM_PLACEHOLDER.encode(), digest.encode())


# --- parity ------------------------------------------------------------------------------------

def sample_inputs(model, n: int = 13, seed: int = 0) -> np.ndarray:
    """uint8 images to compare engines on: the model's own prior samples, noise and flat images.

    Prior samples look like the training data; noise and flat images push the scores far
    from it, where an error in the likelihood maths would show most.
    """
    rng = np.random.default_rng(seed)
    c, s = model.info.channels, model.info.image_size
    k = max(1, n - 4)
    typical = np.rint(model.sample(k, seed=seed) * 255).astype(np.uint8)
    noise = rng.integers(0, 256, (2, c, s, s), dtype=np.uint8)
    flat = np.stack([np.zeros((c, s, s), np.uint8), np.full((c, s, s), 255, np.uint8)])
    return np.concatenate([typical, noise, flat])[:n]


def _compare(name: str, got, want, rtol: float, atol: float) -> Parity:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        return Parity(name, math.inf, math.inf, f"shape {want.shape}", False)
    diff = np.abs(got - want)
    if diff.size == 0:
        return Parity(name, 0.0, 0.0, f"|onnx - torch| <= {atol:g} + {rtol:g} * |torch|", True)
    tolerance = f"|onnx - torch| <= {atol:g} + {rtol:g} * |torch|"
    scale = np.abs(want)
    ok = bool(np.all(diff <= atol + rtol * scale))  # NaN fails too
    big = np.abs(want) > max(atol, 1e-12)  # relative error means little for values near zero
    max_rel = float((diff[big] / np.abs(want[big])).max()) if big.any() else 0.0
    return Parity(name, float(diff.max()), max_rel, tolerance, ok)


def check_parity(reference, candidate, images: np.ndarray, rtol: float = 1e-4, atol: float = 1e-4) -> list[Parity]:
    """Run both engines through the public API on `images` and compare every output.

    Scores (hundreds to thousands of nats) are judged relatively, per the rtol; the
    small quantities (codes, pixels) mostly by atol.
    """
    old = reference.batch_size, candidate.batch_size
    # batches of 4 and a partial last one (1 with the default 13 images): the dynamic batch at work
    reference.batch_size = candidate.batch_size = max(1, min(4, len(images) - 1))
    try:
        rows = []
        mu_t, lv_t = reference.encode(images)
        mu_o, lv_o = candidate.encode(images)
        rows += [_compare("encode: mu", mu_o, mu_t, rtol, atol), _compare("encode: logvar", lv_o, lv_t, rtol, atol)]
        z = np.concatenate([mu_t, np.random.default_rng(1).standard_normal(mu_t.shape, dtype=np.float32)])
        rows.append(_compare("decode: image", candidate.decode(z), reference.decode(z), rtol, atol))
        for samples in (0, 2):
            st, so = reference.score(images, samples=samples), candidate.score(images, samples=samples)
            tag = "score" if samples == 0 else f"score (samples={samples})"
            rows += [_compare(f"{tag}: {st.name} (default score)", so.score, st.score, rtol, atol),
                     _compare(f"{tag}: neg_elbo", so.neg_elbo, st.neg_elbo, rtol, atol),
                     _compare(f"{tag}: recon", so.recon, st.recon, rtol, atol),
                     _compare(f"{tag}: kl", so.kl, st.kl, rtol, atol),
                     _compare(f"{tag}: pixel_map", so.pixel_map, st.pixel_map, rtol, atol)]
    finally:
        reference.batch_size, candidate.batch_size = old
    return rows


# --- quantisation ------------------------------------------------------------------------------

def _quantize_int8(src: Path, dst: Path, feeds: list[dict[str, np.ndarray]]) -> None:
    """Static int8 quantisation in QDQ form, calibrated on `feeds`.

    Static, not dynamic: dynamic quantisation turns Conv into ConvInteger and re-quantises
    activations on every call, which measured no faster than fp32 here (slower at batch 64);
    static QDQ lets onnxruntime fuse QLinearConv kernels (the encoder ran 2-3x faster).
    Weights int8 per channel, activations uint8. `src` is the int8 form of the graphs, whose
    decoder has convolutions where the fp32 export has ConvTranspose (no int8 kernel), and only
    the one-hot interleaves stay fp32.
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter(feeds)

        def get_next(self):
            return next(self.feeds, None)

    pre = dst.with_name(dst.name + ".pre.onnx")
    quiet = logging.getLogger()
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the quantiser logs advice at WARNING through the root logger
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            quant_pre_process(str(src), str(pre))  # shape inference + graph clean-up, as the quantiser advises
            quantize_static(str(pre), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    finally:
        quiet.setLevel(level)
        pre.unlink(missing_ok=True)


def _calibration_feeds(reference, images: np.ndarray | None, n: int = 64, batch: int = 16) -> dict[str, list[dict]]:
    """Inputs each graph sees in use: the user's images, else the model's own prior samples
    (never the parity set's noise and flat images, which would stretch the int8 ranges)."""
    if images is None:
        images = np.rint(reference.sample(n, seed=1) * 255).astype(np.uint8)
    from vaekit import images as imageio

    feeds: dict[str, list[dict]] = {role: [] for role in ROLES}
    for s in range(0, min(len(images), n), batch):
        x = imageio.to_float(images[s : s + batch])
        mu, _ = reference._encode(x)
        feeds["scorer"].append({"x": x, "eps": np.zeros_like(mu)})
        feeds["encoder"].append({"x": x})
        feeds["decoder"].append({"z": mu})
    return feeds


# --- the whole job -------------------------------------------------------------------------------

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
        raise ValueError(f"quantize must be one of {QUANTIZE} or None, got {quantize!r}")
    if not (rtol >= 0 and atol >= 0):
        raise ValueError(f"tolerances must be >= 0, got rtol={rtol}, atol={atol}")

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
            raise ValueError(f"parity images must be a non-empty uint8 array, got {user_images.dtype} x {len(user_images)}")
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


def _require(parity: list[Parity], what: str) -> list[Parity]:
    bad = [p for p in parity if not p.ok]
    if bad:
        lines = "; ".join(f"{p.name} max abs diff {p.max_abs:.3g}, rel {p.max_rel:.3g}" for p in bad)
        raise ExportError(f"{what} does not match torch, nothing written: {lines} (need {bad[0].tolerance})")
    return parity


def _load_parity_images(model, inputs, limit: int = 64) -> np.ndarray:
    """Up to `limit` images from files or folders, preprocessed as the model does."""
    from vaekit import images as imageio

    paths = imageio.find_images(inputs)[:limit]
    if not paths:
        raise imageio.NoImagesError(f"no image files found in {inputs}")
    report = imageio.load_images(paths, model.info.image_size, model.info.channels)
    if len(report.images) == 0:
        raise imageio.NoImagesError(f"no readable image among {len(paths)} files in {inputs}")
    return report.images
