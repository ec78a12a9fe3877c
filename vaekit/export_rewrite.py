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

Tried and dropped, because the graphs ran slower: each stride-2 ConvTranspose as a sub-pixel
2x2 convolution + DepthToSpace, or as four phase convolutions + an interleave (DepthToSpace
moves data at ~2 GB/s here; a one-hot grouped ConvTranspose interleaves 4x faster, yet the
decoder was still 4-24% slower, for the last stage or all four); and the NCHWc layout
(ORT_ENABLE_ALL) for the scorer, a wash, since there is no ConvTranspose kernel in that
layout and reorders wrap every one.
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


def for_onnx(net: nn.Module) -> nn.Module:
    """A copy of a ConvVAE with its layers in their onnxruntime-friendly forms, in eval mode."""
    net = copy.deepcopy(net).eval()
    convs = net.decoder.convs
    last = convs[-1]
    if isinstance(last, nn.Conv2d) and last.out_channels <= 4:
        convs[-1] = TapSumConv(last)
    return net
