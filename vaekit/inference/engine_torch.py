"""The torch engine: a trained run directory behind vaekit's Model interface."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vaekit.training import rundir
from vaekit.training.distributed import pick_device
from vaekit.inference.engine import Model, ModelInfo, threshold_fields


class TorchModel(Model):
    """A run directory on torch, on the CPU or a CUDA device. Scoring stays in float32 on the
    GPU too (no autocast): a score must not depend on the machine beyond float rounding."""

    def __init__(self, run_dir: str | Path, device: str = "cpu", threads: int | None = None):
        if threads:  # only when asked: torch's thread pool belongs to the whole process
            torch.set_num_threads(threads)
        self.device = pick_device(device)
        self.batch_size = 256 if self.device.type == "cuda" else self.batch_size
        self.net, cfg = rundir.load_model(Path(run_dir), self.device)
        m = self.net.cfg
        self.config = cfg
        log_scale = self.net.scale()
        actual = rundir.fingerprint(self.net.state_dict())
        if cfg.get("fingerprint") not in (None, actual):
            raise rundir.RunError(f"{run_dir}: the weights changed since its threshold was stored (an interrupted "
                                  f"--resume?); finish the run with `vaekit train ... --resume`")
        self.info = ModelInfo(
            image_size=m.image_size, channels=m.channels, latent_dim=m.z_dims, likelihood=m.likelihood,
            latent_shape=m.latent_shape, read_size=m.reads_at,
            fingerprint=actual,
            engine="torch", source=Path(run_dir),
            log_scale=None if log_scale is None else [float(v) for v in log_scale.detach().cpu()],
            **threshold_fields(cfg.get("anomaly"), Path(run_dir) / rundir.CONFIG),
        )
        self.info.reader, self.info.reader_fingerprint = cfg.get("reader"), cfg.get("reader_fingerprint")
        self._reader = self._reader_state = None
        if self.info.reader is not None:
            self._check_reader(Path(run_dir) / rundir.READER)

    def _check_reader(self, path: Path) -> None:
        """The run's reader file is there and is the reader its threshold was set with: another
        run's reader.safetensors copied in would score with a threshold that is not its own."""
        if not path.is_file():
            raise rundir.RunError(f"{path} is missing (the run's defect reader); retrain the model")
        if self.info.reader_fingerprint is not None:
            self._reader_state, _ = rundir.load_tensors(path, "defect reader")
            if rundir.fingerprint(self._reader_state) != self.info.reader_fingerprint:
                raise rundir.RunError(f"{path} is not the defect reader this run was calibrated with (its weights "
                                      "differ); restore the run's own, or retrain the model")

    @property
    def has_reader(self) -> bool:
        return getattr(self.info, "reader", None) is not None

    def _read(self, x):
        """The defect reader's scores and maps of uint8 images, read on the CPU in tiles."""
        from vaekit.reader.score import READ_TILE
        from vaekit.reader.train import for_reading, read

        if getattr(self, "_reading", None) is None:  # the reader never changes once loaded: copied once
            self._reading = for_reading(self.reader())
        return read(self._reading, x, tile=READ_TILE)

    def reader(self):
        """The run's defect reader (vaekit.reader.net.ReaderNet, eval mode), loaded once and checked."""
        from vaekit.reader.net import ReaderConfig
        from vaekit.reader.train import load_reader

        if self._reader is None:
            try:
                cfg = ReaderConfig(**{**self.info.reader, "shapes": tuple(self.info.reader.get("shapes", ()))})
            except (TypeError, ValueError) as e:
                raise rundir.RunError(f"{self.info.source / rundir.CONFIG}: the stored reader settings are damaged "
                                      f"({e}); retrain the model") from None
            state = self._reader_state
            if state is None:
                state, _ = rundir.load_tensors(self.info.source / rundir.READER, "defect reader")
            try:
                self._reader = load_reader(state, cfg)
            except (RuntimeError, KeyError) as e:
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise rundir.RunError(f"{self.info.source / rundir.READER} does not fit this run: {first}") from None
        return self._reader

    @classmethod
    def from_net(cls, net, device: torch.device, source: str | Path = "<in memory>") -> "TorchModel":
        """A network in memory behind the same interface, with no threshold or calibration:
        what cross-fitting scores its fold models with (vaekit.training.crossfit)."""
        self = cls.__new__(cls)
        # trained in NHWC (vaekit.training.trainer); scored in the layout a loaded model has, so its
        # scores are the ones the same weights give from disk
        net = net.to(memory_format=torch.contiguous_format)
        self.device, self.net, self.config = torch.device(device), net.eval(), {}
        self.batch_size = 256 if self.device.type == "cuda" else Model.batch_size
        m, log_scale = net.cfg, net.scale()
        self.info = ModelInfo(
            image_size=m.image_size, channels=m.channels, latent_dim=m.z_dims, likelihood=m.likelihood,
            latent_shape=m.latent_shape, read_size=m.reads_at, fingerprint=rundir.fingerprint(net.state_dict()), engine="torch",
            source=Path(source), log_scale=None if log_scale is None else [float(v) for v in log_scale.detach().cpu()])
        return self

    def _t(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(self.device)

    @torch.inference_mode()
    def _encode(self, x):
        mu, logvar = self.net.encode(self._t(x))
        return mu.cpu().numpy(), logvar.cpu().numpy()

    @torch.inference_mode()
    def _decode(self, z):
        return self.net.mean_image(self.net.decode(self._t(z))).cpu().numpy()

    def _scoring_net(self):
        """The network that scores. On the CPU, a channels-last copy of it: oneDNN's NHWC
        convolutions score 1.3-1.5x faster at 28 to 1024 px (docs/benchmarks.md), the same numbers up
        to float rounding. Encoding and decoding keep the network's own layout, so code files and
        lossless archives stay bit for bit what they were."""
        if self.device.type != "cpu":
            return self.net
        if getattr(self, "_scorer", None) is None or self._scorer[0] is not self.net:
            self._scorer = (self.net, channels_last_copy(self.net))
        return self._scorer[1]

    @torch.inference_mode()
    def _score_core(self, x, eps):
        recon, kl, pmap, mu, logvar, x_hat = self._scoring_net().score_parts(self._t(x), self._t(eps))
        return (recon.double().cpu().numpy(), kl.double().cpu().numpy(), pmap.cpu().numpy(), mu.cpu().numpy(),
                logvar.cpu().numpy(), x_hat.cpu().numpy())


def channels_last_copy(net: torch.nn.Module) -> torch.nn.Module:
    """What copy.deepcopy(net).to(memory_format=torch.channels_last) gives for scoring, at a fifth of
    its cost (~1 ms, not ~5 ms, for a small model: a model is loaded for every command): each module
    copied with its own parameter and buffer tensors, the 4-D ones channels-last, the same values;
    the modules' other attributes (config, sizes, hooks) copied one level deep, as nothing changes
    them in scoring. A tensor the network holds twice is copied once."""
    copies: dict[int, torch.Tensor] = {}

    def tensor(t: torch.Tensor, parameter: bool) -> torch.Tensor:
        if id(t) not in copies:
            new = t.detach().clone(memory_format=torch.channels_last if t.dim() == 4 else torch.preserve_format)
            copies[id(t)] = torch.nn.Parameter(new, t.requires_grad) if parameter else new
        return copies[id(t)]

    def module(m: torch.nn.Module) -> torch.nn.Module:
        new = m.__class__.__new__(m.__class__)
        new.__dict__.update({k: v.copy() if isinstance(v, (dict, list, set)) else v for k, v in m.__dict__.items()})
        new._parameters = {k: None if p is None else tensor(p, True) for k, p in m._parameters.items()}
        new._buffers = {k: None if b is None else tensor(b, False) for k, b in m._buffers.items()}
        new._modules = {k: None if c is None else module(c) for k, c in m._modules.items()}
        return new

    return module(net)
