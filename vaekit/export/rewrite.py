"""Exact rewrites that make the exported graphs faster on onnxruntime (used by vaekit.export).

The torch model is never changed: export works on a copy whose layers compute the same
function in a form onnxruntime runs faster, and the parity check then holds the ONNX
graphs to the torch engine as always. Timed A/B (old and new graphs from one run, calls
interleaved, one thread); benchmarks/inference_speed.py shows the end result.

The one rewrite so far: the decoder's last layer, a 3x3 "same" convolution from 32 feature
maps to the 1 or 3 image channels at full resolution. With so few output channels it is a
matrix-vector product over an im2col buffer nine times the size of its input, and
onnxruntime ran it at ~4 GMAC/s, a tenth of this CPU's fp32 GEMM rate: 0.27 of the scorer's
1.96 ms at batch 1 for 3% of its arithmetic. As a 1x1 convolution to the 9 x C "tap" maps
(one per kernel position and output channel) followed by nine shifted adds, the same
arithmetic took 0.13-0.15 ms (and 9 instead of 19 ms at batch 64). In the whole graph the
scorer got 6% faster at batch 1 and 10% at batch 64, the decoder 14% and 12%.

For int8 exports of arch v1 models only (vaekit 0.1's network; the default v2 decoder resizes,
then convolves, and has no ConvTranspose), every stride-2 ConvTranspose (+ its LeakyReLU) becomes four "phase"
convolutions, one per output pixel parity, with exactly the taps that reach that parity, then
an interleave (`PhaseConvTranspose`). onnxruntime has no int8 ConvTranspose kernel
(microsoft/onnxruntime#8988), so quantisation left the decoder in fp32; as convolutions it is
quantised too. Measured on trained models: the int8 scorer 1.25x faster at batch 1 and 1.14x
at batch 64 (64 px RGB shapes), 1.19x / 1.11x (32 px digits), with a smaller score change
against fp32 (mean 7.9% instead of 8.8%, 2.2% instead of 3.8%). In fp32 the same rewrite
made the graphs 4-24% slower, so fp32 keeps ConvTranspose.

Tried and dropped, because the graphs ran slower: ConvTranspose as a sub-pixel 2x2
convolution + DepthToSpace (which moves data at ~2 GB/s here; the one-hot grouped
ConvTranspose used for the interleave below is 4x faster), and the NCHWc layout
(ORT_ENABLE_ALL) for arch v1's scorer, a wash, since there is no ConvTranspose kernel in that
layout and reorders wrap every one. Arch v2's graphs have none and take it (1.4x faster:
vaekit.inference.engine_onnx.graph_session).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


class TapSumConv(nn.Module):
    """A stride-1 'same' k x k Conv2d as a 1x1 conv to k*k*C_out tap maps, then shift-and-add.

    Tap map t[(ky, kx), c] = sum over input channels of w[c, :, ky, kx] * x, and
    conv(x)[c, y, x] = b[c] + sum over (ky, kx) of t[(ky, kx), c] at (y + ky - p, x + kx - p),
    zero outside the image: the same sums as the convolution, in a different order.
    """

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        k = conv.kernel_size[0]
        if (conv.kernel_size != (k, k) or k % 2 == 0 or conv.stride != (1, 1) or conv.dilation != (1, 1)
                or conv.groups != 1 or conv.padding != (k // 2, k // 2) or conv.padding_mode != "zeros"):
            raise ValueError(f"TapSumConv rewrites odd square stride-1 'same' convolutions only, not {conv}")
        w = conv.weight.detach()  # (C_out, C_in, k, k)
        c_out, c_in = w.shape[:2]
        self.k, self.c_out = k, c_out
        # tap-major channels: channel i * C_out + c is kernel position i = ky * k + kx of output channel c
        self.register_buffer("taps", w.permute(2, 3, 0, 1).reshape(k * k * c_out, c_in, 1, 1).clone())
        bias = conv.bias.detach().clone() if conv.bias is not None else w.new_zeros(c_out)
        self.register_buffer("bias", bias.view(1, c_out, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        p, c = self.k // 2, self.c_out
        t = F.pad(F.conv2d(x, self.taps), (p, p, p, p))  # (B, k*k*C_out, H + 2p, W + 2p)
        out = self.bias
        for i in range(self.k * self.k):
            ky, kx = divmod(i, self.k)
            out = out + t[:, i * c:(i + 1) * c, ky:ky + h, kx:kx + w]
        return out


# ConvTranspose2d(k=3, s=2, p=1) in one dimension: output 2m takes input m through kernel tap 1;
# output 2m+1 takes input m through tap 2 and input m+1 through tap 0.
_PHASE_TAPS = {0: (1,), 1: (2, 0)}  # output parity -> kernel taps for input offsets 0, 1


class PhaseConvTranspose(nn.Module):
    """ConvTranspose2d(k=3, s=2, p=1, output_padding 0 or 1) + LeakyReLU as four convolutions.

    Output pixel (2i + a, 2j + b) only ever sees the kernel taps of its parity (a, b): 1, 2, 2
    and 4 of the 9, from inputs (i, j), (i, j + 1), (i + 1, j), (i + 1, j + 1). So each parity is
    a small convolution of the input (1x1, 1x2, 2x1, 2x2 kernels; zero past the last row and
    column) with the activation applied, and a one-hot grouped ConvTranspose (kernel 2, stride
    2: each value to its place in a 2x2 block, no arithmetic) interleaves the four. The same
    products and sums as the transposed convolution, none on structural zeros.
    """

    def __init__(self, deconv: nn.ConvTranspose2d, slope: float):
        super().__init__()
        if (deconv.kernel_size != (3, 3) or deconv.stride != (2, 2) or deconv.padding != (1, 1)
                or deconv.dilation != (1, 1) or deconv.groups != 1 or deconv.output_padding[0] != deconv.output_padding[1]):
            raise ValueError(f"PhaseConvTranspose rewrites 3x3 stride-2 padding-1 transposed convolutions only, not {deconv}")
        w = deconv.weight.detach()  # (C_in, C_out, 3, 3)
        c_out = w.shape[1]
        for a, rows in _PHASE_TAPS.items():
            for b, cols in _PHASE_TAPS.items():
                k = torch.stack([torch.stack([w[:, :, ky, kx].T for kx in cols], -1) for ky in rows], -2)
                self.register_buffer(f"k{a}{b}", k.contiguous())  # (C_out, C_in, len(rows), len(cols))
        bias = deconv.bias.detach().clone() if deconv.bias is not None else w.new_zeros(c_out)
        self.register_buffer("bias", bias)
        place = w.new_zeros(4 * c_out, 1, 2, 2)  # channel 4c + 2a + b -> pixel (a, b) of channel c's block
        for p in range(4):
            place[p::4, 0, p // 2, p % 2] = 1.0
        self.register_buffer("place", place)
        self.c_out, self.slope, self.crop = c_out, slope, deconv.output_padding[0] == 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        phases = [F.leaky_relu(F.conv2d(F.pad(x, (0, b, 0, a)) if a or b else x, getattr(self, f"k{a}{b}"), self.bias),
                               self.slope) for a in (0, 1) for b in (0, 1)]  # 4 x (B, C_out, H, W)
        y = torch.stack(phases, 2).reshape(n, 4 * self.c_out, h, w)
        y = F.conv_transpose2d(y, self.place, stride=2, groups=self.c_out)  # (B, C_out, 2H, 2W)
        return y[:, :, :-1, :-1] if self.crop else y  # output_padding 0: 2H - 1


def for_onnx(net: nn.Module, int8: bool = False) -> nn.Module:
    """A copy of a ConvVAE with its layers in their onnxruntime-friendly forms, in eval mode;
    int8=True also replaces an arch v1 decoder's ConvTranspose layers (the form to quantise)."""
    net = copy.deepcopy(net).eval()
    layers = list(net.decoder.convs)
    if isinstance(layers[-1], nn.Conv2d) and layers[-1].out_channels <= 4:
        layers[-1] = TapSumConv(layers[-1])
    if int8:
        out, i = [], 0
        while i < len(layers):
            if (isinstance(layers[i], nn.ConvTranspose2d) and i + 1 < len(layers)
                    and isinstance(layers[i + 1], nn.LeakyReLU)):
                out.append(PhaseConvTranspose(layers[i], layers[i + 1].negative_slope))
                i += 2
            else:
                out.append(layers[i])
                i += 1
        layers = out
    net.decoder.convs = nn.Sequential(*layers)
    return net
