"""The graphs: one dynamo trace of the whole ConvVAE, split into scorer, encoder and decoder; and,
for a surface model, its defect reader, traced on its own with any height and width."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings

OPSET = 20  # the default of torch 2.13's exporter: no version conversion; needs onnxruntime >= 1.18
ROLES = ("scorer", "encoder", "decoder")
IO = {
    "scorer": {"inputs": {"x": "(B,C,H,W) float32 in [0,1]", "eps": "(B,D) float32; zeros for the default score (z = mu)"},
               "outputs": {"recon": "(B,) -log p(x|z), nats", "kl": "(B,) KL(q(z|x)||p(z)), nats",
                           "pixel_map": "(B,H,W) per-pixel -log p(x|z) summed over channels, nats",
                           "mu": "(B,D)", "logvar": "(B,D)", "x_hat": "(B,C,H,W) E[x|z] in [0,1] (vaekit >= 0.3)"},
               "scores": "computed in numpy by vaekit.inference.engine.Model.score: neg_elbo = sum(pixel_map) + kl, "
                         "excess = neg_elbo - the image's own floor (vaekit.inference.engine.pixel_floor)"},
    "encoder": {"inputs": {"x": "(B,C,H,W) float32 in [0,1]"}, "outputs": {"mu": "(B,D)", "logvar": "(B,D)"}},
    "decoder": {"inputs": {"z": "(B,D) float32"},
                "outputs": {"image": "(B,C,H,W) E[x|z] in [0,1]", "params": "(B,C,H,W) Bernoulli logits or Gaussian means"}},
    "reader": {"inputs": {"x": "(B,C,H,W) float32 in [0,1], any H and W"},
               "outputs": {"logits": "(B,H,W) defect logit per pixel"},
               "scores": "computed in numpy by vaekit.reader.score: images larger than 256 px read in overlapping "
                         "tiles (read_tiled), then the smoothed probability map and its largest mean (maps_and_scores)"},
}


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
            recon, kl, pmap, mu, logvar, x_hat = self.net.score_parts(x, eps)
            # the decoder, on its own codes
            params = self.net.decode(z)  # (B_z, C, H, W)
            return recon, kl, pmap, mu, logvar, x_hat, self.net.mean_image(params), params

    return Inference(net).eval()


def _quietly(export):
    """Run an export call with the exporter's progress prints, logs and warnings silenced: none of
    that is the user's business."""
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            return export()
    finally:
        quiet.setLevel(level)


def export_reader(reader, c: int):
    """The defect reader (vaekit.reader.net.ReaderNet) -> an onnx ModelProto with dynamic batch,
    height and width (the net pads to its own multiple inside the graph)."""
    import onnx
    import torch

    batch, h, w = torch.export.Dim("batch"), torch.export.Dim("height", min=1), torch.export.Dim("width", min=1)
    program = _quietly(lambda: torch.onnx.export(
        reader.eval(), (torch.rand(2, c, 40, 48),), dynamo=True, external_data=False, verbose=False,
        opset_version=OPSET, input_names=["x"], output_names=["logits"],
        dynamic_shapes={"x": {0: batch, 2: h, 3: w}}))
    proto = program.model_proto
    onnx.checker.check_model(proto)
    return proto


def export_graphs(net, c: int, s: int, d: int, int8: bool = False) -> dict:
    """torch -> {role: onnx ModelProto}, each with a dynamic batch and its weights inside;
    int8=True traces the form meant for quantisation (vaekit/export/rewrite.py, arch v1 runs)."""
    import onnx.utils
    import torch

    from vaekit.export.rewrite import for_onnx

    inputs = ["x", "eps", "z"]
    outputs = ["recon", "kl", "pixel_map", "mu", "logvar", "x_hat", "image", "params"]
    batch, batch_z = torch.export.Dim("batch"), torch.export.Dim("batch_z")
    args = (torch.rand(2, c, s, s), torch.zeros(2, d), torch.zeros(3, d))  # not 1: that would be specialised
    program = _quietly(lambda: torch.onnx.export(
        _wrapper(for_onnx(net, int8=int8)), args, dynamo=True, external_data=False, verbose=False, opset_version=OPSET,
        input_names=inputs, output_names=outputs,
        dynamic_shapes={"x": {0: batch}, "eps": {0: batch}, "z": {0: batch_z}},
    ))
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
