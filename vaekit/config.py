"""Configuration dataclasses: what the model is, and how it is trained.

They are kept apart because a trained model is rebuilt from ModelConfig alone (stored in the
run directory's config.json); TrainConfig only matters while fitting.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from vaekit.errors import BadInput

LIKELIHOODS = ("bernoulli", "gaussian")
DEVICES = ("auto", "cpu", "cuda")
# Upper bounds, checked before anything is allocated: a hand-edited config.json (or a typo'd
# option) must be an error, not a model of many gigabytes. Far above any use vaekit is for.
MAX_IMAGE_SIZE = 1024
MAX_LATENT_DIM = 4096
MAX_CHANNELS = 4096


def _int_in(value, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


@dataclass(frozen=True)
class ModelConfig:
    image_size: int = 64  # images are square, image_size × image_size, 16 <= size <= MAX_IMAGE_SIZE
    channels: int = 1  # 1 (grayscale) or 3 (RGB)
    latent_dim: int = 32  # dimensions of z
    base_channels: int = 32  # feature maps of the first conv; doubles per stage
    max_channels: int = 256  # cap on feature maps, keeps deep stacks for large images affordable
    likelihood: str = "bernoulli"  # p(x|z): "bernoulli" (BCE on logits) or "gaussian" (learned scale)
    min_log_scale: float = -4.6  # floor on the Gaussian's log sigma (~0.01), stops the density blowing up

    def __post_init__(self) -> None:
        if not _int_in(self.image_size, 16, MAX_IMAGE_SIZE):
            raise BadInput(f"image size must be an integer from 16 to {MAX_IMAGE_SIZE}, got {self.image_size!r}")
        if self.channels not in (1, 3) or isinstance(self.channels, bool):
            raise BadInput(f"channels must be 1 or 3, got {self.channels!r}")
        if not _int_in(self.latent_dim, 1, MAX_LATENT_DIM):
            raise BadInput(f"latent dim must be an integer from 1 to {MAX_LATENT_DIM}, got {self.latent_dim!r}")
        if not (_int_in(self.base_channels, 1, MAX_CHANNELS) and _int_in(self.max_channels, 1, MAX_CHANNELS)) or not (
            self.base_channels <= self.max_channels
        ):
            raise BadInput(
                f"need 1 <= base_channels <= max_channels <= {MAX_CHANNELS}, got {self.base_channels!r}, {self.max_channels!r}"
            )
        if self.likelihood not in LIKELIHOODS:
            raise BadInput(f"likelihood must be one of {LIKELIHOODS}, got {self.likelihood!r}")
        if not isinstance(self.min_log_scale, (int, float)) or not math.isfinite(self.min_log_scale):
            raise BadInput(f"min_log_scale must be a finite number, got {self.min_log_scale!r}")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 0  # passes over the training split; 0 = auto (~300 optimizer steps, 20..200 epochs)
    batch_size: int = 64  # global batch: under DDP it is split across ranks
    lr: float = 1e-3  # AdamW learning rate
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    beta: float = 1.0  # weight on the KL term (1.0 is the true ELBO)
    kl_warmup: int = 0  # epochs of linear ramp of the KL weight up to beta (epoch e gets beta*(e+1)/(warmup+1))
    seed: int = 0  # seeds the split, initialisation, shuffling and noise
    val_fraction: float = 0.1  # share of images held out for validation (normal images)
    device: str = "auto"  # "auto" picks CUDA when available
    amp: bool = True  # on CUDA: bf16 autocast where supported, else fp16 with a GradScaler
    channels_last: bool = True  # on CUDA: NHWC memory format, faster convolutions
    compile: bool = False  # torch.compile the model (CUDA mostly; slow first epoch)
    threshold_quantile: float = 0.99  # anomaly threshold = this quantile of validation scores
    grad_clip: float = 0.0  # clip the global gradient norm to this (0: off, plain AdamW as in the paper)

    def __post_init__(self) -> None:
        for name in ("lr", "weight_decay", "beta", "val_fraction", "threshold_quantile", "grad_clip"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise BadInput(f"{name.replace('_', ' ')} must be a finite number, got {value!r}")
        if not isinstance(self.epochs, int) or self.epochs < 0:
            raise BadInput(f"epochs must be a positive integer (or 0 for auto), got {self.epochs!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise BadInput(f"batch size must be a positive integer, got {self.batch_size!r}")
        if not self.lr > 0:
            raise BadInput(f"learning rate must be > 0, got {self.lr!r}")
        if not self.beta >= 0:  # also refuses NaN
            raise BadInput(f"beta must be >= 0, got {self.beta!r}")
        if self.kl_warmup < 0:
            raise BadInput(f"KL warm-up must be >= 0 epochs, got {self.kl_warmup!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise BadInput(f"validation fraction must be in [0, 1), got {self.val_fraction!r}")
        if self.device not in DEVICES:
            raise BadInput(f"device must be one of {DEVICES}, got {self.device!r}")
        if not 0.0 < self.threshold_quantile < 1.0:
            raise BadInput(f"threshold quantile must be in (0, 1), got {self.threshold_quantile!r}")


def to_dict(cfg) -> dict:
    return asdict(cfg)


def from_dict(cls, data: dict):
    """Rebuild a config, ignoring unknown keys (newer files) and naming bad values."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})
