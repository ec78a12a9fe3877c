"""What every exported file carries: vaekit metadata (model, preprocessing, threshold, score
calibration) and a checksum that seals it, so a file changed after export is refused."""

from __future__ import annotations

import json

import numpy as np

from vaekit.inference.engine_onnx import CHECKSUM_KEY, CHECKSUM_PLACEHOLDER, FORMAT
from vaekit.export.graphs import IO
from vaekit.export.parity import ExportError
from vaekit.version import __version__

MAX_STORED_SCORES = 2000  # validation scores kept in the metadata (for histograms)
PREPROCESSING = {
    "resize": "shorter side to image_size (bicubic), centre crop (vaekit.images.load_image)",
    "scale": "uint8 pixels / 255 -> float32 in [0, 1]",
    "layout": "NCHW",
}


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


def metadata_for(role: str, cfg: dict, fingerprint: str, log_scale: list[float] | None, quantization: str) -> dict[str, str]:
    """The vaekit.* metadata of one exported graph: model, preprocessing, anomaly section, codec tables."""
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
        # the lossy codec's integer tables (vaekit.codec.prior), stored with the run: a .vkc decodes
        # to the same latent symbols from the export as from the run directory
        "vaekit.codec": json.dumps(cfg.get("codec"), separators=(",", ":")),
        # a surface model's defect reader settings (the score's smoothing windows), or null
        "vaekit.reader": json.dumps(cfg.get("reader")),
        # the reader its threshold was set with: two runs can share the VAE's weights (and fingerprint) and
        # differ only in their readers, so NAME.reader.onnx of the one beside NAME.onnx of the other is refused
        "vaekit.reader_fingerprint": json.dumps(cfg.get("reader_fingerprint")),
    }


def set_metadata(proto, meta: dict[str, str]) -> None:
    """Replace the graph's vaekit.* metadata with `meta` (other keys are kept)."""
    import onnx

    keep = {p.key: p.value for p in proto.metadata_props if not p.key.startswith("vaekit.")}
    onnx.helper.set_model_props(proto, {**keep, **meta})
    proto.doc_string = (f"vaekit {meta['vaekit.role']} for a {meta['vaekit.channels']}x{meta['vaekit.image_size']}"
                        f"x{meta['vaekit.image_size']} VAE (fingerprint {meta['vaekit.fingerprint']}); see metadata_props")


def sealed(proto) -> bytes:
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
