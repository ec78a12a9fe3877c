"""int8 static quantisation (QDQ) of the exported graphs, calibrated on images."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vaekit.export.graphs import ROLES

QUANTIZE = ("int8",)


@dataclass
class Quantization:
    method: str  # what was done, in words
    score_max_rel: float  # max relative change of `score` vs the fp32 ONNX model
    score_mean_rel: float
    bytes_before: int
    bytes_after: int
    score: str = "the default score"  # which score moved, in words (a surface's default, the reader's, does not)


def quantize_int8(src: Path, dst: Path, feeds: list[dict[str, np.ndarray]]) -> None:
    """Static int8 quantisation in QDQ form, calibrated on `feeds`.

    Static, not dynamic: dynamic quantisation turns Conv into ConvInteger and re-quantises
    activations on every call, which measured no faster than fp32 here (slower at batch 64);
    static QDQ lets onnxruntime fuse QLinearConv kernels (the encoder ran 2-3x faster).
    Weights int8 per channel, activations uint8. `src` is the fp32 export of an arch v2 model
    (its decoder resizes, then convolves); for an arch v1 model, the int8 form of its graphs, whose
    decoder has convolutions where the fp32 export has ConvTranspose (no int8 kernel), so that
    only the one-hot interleaves stay fp32.
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


def calibration_feeds(reference, images: np.ndarray, n: int = 64, batch: int = 16) -> dict[str, list[dict]]:
    """Inputs each graph sees in use, from real images: the user's, or the run's training images
    (never the parity set's noise and flat images, which would stretch the int8 ranges, nor the
    model's own samples, darker and flatter than real images: vaekit.export.job.training_images)."""
    from vaekit import images as imageio

    feeds: dict[str, list[dict]] = {role: [] for role in ROLES}
    for s in range(0, min(len(images), n), batch):
        x = imageio.to_float(images[s : s + batch])
        mu, _ = reference.encode(images[s : s + batch])
        feeds["scorer"].append({"x": x, "eps": np.zeros_like(mu)})
        feeds["encoder"].append({"x": x})
        feeds["decoder"].append({"z": mu})
    return feeds
