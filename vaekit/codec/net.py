"""The network calls the codecs make, one image at a time, on either engine.

Bits-back coding needs the decoder's likelihood parameters (not just the mean image) and must
make every call exactly as the decoder of the archive will: one image per call, so that no
batch size or batch neighbour changes a single float. Both engines already compute the
parameters (the torch net's `decode`, the exported decoder graph's `params` output); this
adapter reaches them. Imports no torch unless the model is a torch one.

Torch's CPU floats also depend on its intra-op thread count (1 vs 2 threads changed the tables of
every image of a 200-image archive), so lossless coding runs its torch calls on CANONICAL_THREADS
whatever --threads says (`Net.pinned`), and an archive records the count it was written with.
onnxruntime's outputs did not change with its thread count (1, 2, default; measured, docs/codec.md).
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np

from vaekit import images as imageio
from vaekit.codec.fitted import means
from vaekit.errors import BadInput

CANONICAL_THREADS = 1  # torch intra-op threads of every lossless encode (and decode of a file that records it)


class Net:
    """`posterior(x)` and `likelihood(z)` of one image on a vaekit Model (either engine)."""

    def __init__(self, model):
        self.model = model
        info = model.info
        self.engine = info.engine
        self.shape = (info.channels, info.image_size, info.image_size)
        self.latent_dim = info.latent_dim
        self.pixels = None  # a fitted pixel model (vaekit.codec.fitted) where the likelihood has no 8-bit levels
        if self.engine == "torch":
            self._params = self._torch_params
        elif self.engine == "onnxruntime":
            self._params = self._onnx_params
        else:
            raise BadInput(f"the codec runs on the torch or onnxruntime engine, not {self.engine!r}")

    def describe(self) -> dict:
        """What computed the tables: recorded in a lossless archive, shown when a decode refuses."""
        import platform

        from vaekit.version import __version__

        d = {"engine": self.engine, "machine": platform.machine(), "vaekit": __version__}
        if self.engine == "torch":
            import torch

            d.update(torch=torch.__version__, threads=torch.get_num_threads(), device=str(self.model.device))
        else:
            import onnxruntime

            d.update(onnxruntime=onnxruntime.__version__, threads=self.model.threads or 0,
                     quantization=self.model.config.get("quantization", "none"))
        return d

    @contextmanager
    def pinned(self, threads: int = CANONICAL_THREADS):
        """Run the torch engine's calls on `threads` intra-op threads, restoring the count after
        (torch's thread pool belongs to the whole process); nothing changes on onnxruntime."""
        if self.engine != "torch":
            yield
            return
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    def posterior(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 image (C, H, W) -> the posterior's mu and logvar (D,), float64."""
        mu, logvar = self.model._encode(imageio.to_float(x[None]))
        return np.asarray(mu, np.float64)[0], np.asarray(logvar, np.float64)[0]

    def likelihood(self, z: np.ndarray) -> np.ndarray:
        """Latent (D,) -> the decoder's parameters of p(x|z) (P, C, H, W), float32."""
        return np.asarray(self._params(np.ascontiguousarray(z, np.float32)[None]), np.float32)[0]

    def sampled_mean_image(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """uint8 image (C, H, W) -> the decoder's mean at a draw z ~ q(z|x), float64 (C, H, W): what
        bits-back codes the pixels with (at its own draw), so what a pixel model is fitted to."""
        mu, logvar = self.posterior(x)
        return means(self.model.info.likelihood, self.likelihood(mu + np.exp(0.5 * logvar) * rng.standard_normal(mu.shape)))

    def _torch_params(self, z: np.ndarray) -> np.ndarray:
        import torch

        net = self.model.net
        with torch.inference_mode():
            return net.decode(torch.from_numpy(z).to(self.model.device)).cpu().numpy()

    def _onnx_params(self, z: np.ndarray) -> np.ndarray:
        return self.model._session("decoder").run(["params"], {"z": z})[0]
