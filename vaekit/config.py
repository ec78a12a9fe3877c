"""Configuration dataclasses: what the model is, and how it is trained.

They are kept apart because a trained model is rebuilt from ModelConfig alone (stored in the
run directory's config.json); TrainConfig only matters while fitting.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from vaekit.errors import BadInput, check_flags
from vaekit.fileio import finite_number

PIXEL_CONTEXT = 4  # causal neighbours of a logistic model's pixels (docs/codec.md#pixels-that-read-their-neighbours)
LIKELIHOODS = ("bernoulli", "gaussian", "logistic")  # logistic: discretised, 8-bit pixels (vaekit.model.objective.Logistic)
ARCHS = ("v1", "v2")
LAYOUTS = ("vector", "grid")
DEVICES = ("auto", "cpu", "cuda")
SCHEDULES = ("cosine", "constant")
AUGMENT = ("auto", "on", "off")
FLOAT32_MAX = 3.4028234663852886e38
SEED_MAX = 2**63 - 1  # torch seeds up to 2**64 - 1; the defect reader seeds its members seed + 1000 k
RESUMABLE = ("epochs", "lr", "beta")  # TrainConfig fields a --resume may change (recorded); any other must match
SESSION = ("device",)  # TrainConfig fields a --resume takes for its own session (a resumed run may move machine)
# Upper bounds, checked before anything is allocated: a hand-edited config.json (or a typo'd
# option) must be an error, not a model of many gigabytes. Far above any use vaekit is for.
MAX_IMAGE_SIZE = 1024
MAX_READ_SIZE = 3072  # a surface's files are read at their own scale up to this shorter side (12 MP photos whole)
MAX_LATENT_DIM = 4096
MAX_CHANNELS = 4096
MAX_BATCH_SIZE = 1 << 16  # images in one batch, training or scoring (the CLI takes at most 4096)
MAX_Z_DIMS = 1 << 20  # values in one latent code (a 1024 px grid model has 256 x 256 x C)
MAX_EPOCHS = 1_000_000  # epochs, KL warm-up epochs, epochs between checkpoints: a million passes of a 20-image
# folder is ~9 hours on 2 cores; `--epochs 99999999999` trained for ever at a learning rate still warming up


_ZERO = {"epochs": "0 for auto", "kl_warmup": "0: none", "checkpoint_every": "0: auto"}


def _int_in(value, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


@dataclass(frozen=True)
class ModelConfig:
    image_size: int = 0  # images are square, image_size × image_size, 16..MAX_IMAGE_SIZE; 0 = auto (see below)
    channels: int = 1  # 1 (grayscale) or 3 (RGB)
    latent_dim: int = 0  # vector layout: dimensions of z; grid layout: latent channels per cell; 0 = auto
    base_channels: int = 16  # feature maps of the first conv; doubles per stage
    max_channels: int = 128  # cap on feature maps (raised to base_channels if that is larger)
    likelihood: str = "auto"  # p(x|z): "bernoulli" (BCE on logits), "gaussian" (learned sigma per channel),
    # "logistic" (discretised, mean and scale per pixel: -ELBO is a code length), "auto" (never picks logistic)
    min_log_scale: float = -4.6  # arch v1 only: floor on the Gaussian's log sigma
    arch: str = "v2"  # "v2": residual stages, resize-then-conv decoder; "v1": vaekit 0.1's network (old runs)
    layout: str = "auto"  # "vector": one latent vector for the image; "grid": a latent cell per 4x4 pixels; "auto"
    pixel_context: int = PIXEL_CONTEXT  # logistic only: how many decoded neighbours each pixel's mean also reads
    # (4: left, up-left, up, up-right; 0: pixels independent given z, as runs before vaekit 0.3 coded them)
    read_size: int = 0  # grid only: files are read with their shorter side at read_size (> image_size) and
    # scored in image_size tiles, so a surface keeps its resolution beyond the network's size; 0 = image_size

    def __post_init__(self) -> None:
        if not (self.image_size == 0 or _int_in(self.image_size, 16, MAX_IMAGE_SIZE)):
            raise BadInput(f"image size must be an integer from 16 to {MAX_IMAGE_SIZE} (or 0 for auto), got {self.image_size!r}")
        if self.channels not in (1, 3) or isinstance(self.channels, bool):
            raise BadInput(f"channels must be 1 or 3, got {self.channels!r}")
        if not (self.latent_dim == 0 or _int_in(self.latent_dim, 1, MAX_LATENT_DIM)):
            raise BadInput(f"latent dim must be an integer from 1 to {MAX_LATENT_DIM} (or 0 for auto), got {self.latent_dim!r}")
        if not (_int_in(self.base_channels, 1, MAX_CHANNELS) and _int_in(self.max_channels, 1, MAX_CHANNELS)):
            raise BadInput(f"need 1 <= base_channels, max_channels <= {MAX_CHANNELS}, got {self.base_channels!r}, {self.max_channels!r}")
        if self.likelihood not in (*LIKELIHOODS, "auto"):
            raise BadInput(f"likelihood must be one of {LIKELIHOODS} or auto, got {self.likelihood!r}")
        if not finite_number(self.min_log_scale):
            raise BadInput(f"min_log_scale must be a finite number, got {self.min_log_scale!r:.40}")
        if self.arch not in ARCHS:
            raise BadInput(f"arch must be one of {ARCHS}, got {self.arch!r}")
        if self.layout not in (*LAYOUTS, "auto"):
            raise BadInput(f"layout must be one of {LAYOUTS} or auto, got {self.layout!r}")
        if self.pixel_context not in (0, PIXEL_CONTEXT) or isinstance(self.pixel_context, bool):
            raise BadInput(f"pixel_context must be 0 or {PIXEL_CONTEXT}, got {self.pixel_context!r}")
        if not (self.read_size == 0 or _int_in(self.read_size, max(16, self.image_size), MAX_READ_SIZE)):
            raise BadInput(f"read size must be 0 or an integer from the image size to {MAX_READ_SIZE}, got {self.read_size!r}")
        if self.read_size > self.image_size and self.layout == "vector":
            raise BadInput(f"only a surface model (the grid layout) reads its files at a larger size ({self.read_size} px) "
                           f"than its own ({self.image_size} px): give --layout grid, or an image size of at most "
                           f"{MAX_IMAGE_SIZE}")
        if self.arch == "v1" and self.layout == "grid":
            raise BadInput("the grid layout needs arch v2")
        if self.resolved and self.z_dims > MAX_Z_DIMS:
            raise BadInput(f"a latent of {self.z_dims} values is more than {MAX_Z_DIMS}; use a smaller --latent-dim")

    @property
    def reads_at(self) -> int:
        """The shorter side files are resized to: read_size, else the model's own image_size."""
        return self.read_size or self.image_size

    @property
    def context(self) -> int:
        """Causal neighbours each pixel's likelihood reads: pixel_context for a logistic model, else 0."""
        return self.pixel_context if self.likelihood == "logistic" else 0

    @property
    def resolved(self) -> bool:
        """Whether every "auto" has been decided (a model can be built)."""
        return self.image_size > 0 and self.latent_dim > 0 and self.likelihood != "auto" and self.layout != "auto"

    def with_fallbacks(self) -> "ModelConfig":
        """Every "auto" but the image size replaced by the plain choice (Bernoulli, a vector of
        16): what building a network straight from a config takes. `vaekit train` decides them
        from the images instead (vaekit.training.data.choose_model)."""
        from dataclasses import replace

        return replace(self, likelihood="bernoulli" if self.likelihood == "auto" else self.likelihood,
                       layout="vector" if self.layout == "auto" else self.layout,
                       latent_dim=self.latent_dim or (16 if self.layout != "grid" else 8))

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """(D,) for a vector, (C, G, G) for a grid of G x G cells (G = image_size / 4, rounded up)."""
        if self.layout == "grid":
            g = math.ceil(math.ceil(self.image_size / 2) / 2)
            return (self.latent_dim, g, g)
        return (self.latent_dim,)

    @property
    def z_dims(self) -> int:
        return math.prod(self.latent_shape)


def surface_sizes(side: int) -> dict[str, int]:
    """ModelConfig sizes for a surface read at `side` px: the model's own size (at most
    MAX_IMAGE_SIZE: the tiles it reads) and, beyond that, the read size its files keep."""
    return {"image_size": min(side, MAX_IMAGE_SIZE), "read_size": side if side > MAX_IMAGE_SIZE else 0}


def from_stored_model(data: dict) -> ModelConfig:
    """A run's stored model section: runs written by vaekit 0.1 carry no `arch` (theirs is v1)."""
    if not isinstance(data, dict):
        raise BadInput(f"expected an object, got {type(data).__name__}")
    data = {"arch": "v1", "layout": "vector", "pixel_context": 0, **data}
    cfg = from_dict(ModelConfig, data)
    if not cfg.resolved:
        raise BadInput("the stored model has undecided (auto) settings")
    return cfg


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 0  # passes over the training split; 0 = auto (a fixed compute budget, see train.resolve_epochs)
    batch_size: int = 0  # global batch (under DDP split across ranks); 0 = auto: 64 up to 32x32 pixels, else 32
    lr: float = 2e-3  # AdamW peak learning rate
    schedule: str = "cosine"  # "cosine": linear warm-up over 3% of the steps, then cosine decay to 0; "constant"
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    beta: float = 1.0  # weight on the KL term (1.0 is the true ELBO)
    kl_warmup: int = 0  # epochs of linear ramp of the KL weight up to beta (epoch e gets beta*(e+1)/(warmup+1))
    seed: int = 0  # seeds the split, initialisation, shuffling and noise
    val_fraction: float = 0.1  # share of images held out to pick the best epoch and calibrate the score
    calibration_fraction: float = 0.1  # share held out, apart from those, to set the anomaly threshold
    device: str = "auto"  # "auto" picks CUDA when available
    amp: bool = True  # on CUDA: bf16 autocast where supported, else fp16 with a GradScaler
    channels_last: bool = True  # NHWC memory format while training: faster convolutions (CUDA and CPU)
    compile: bool = False  # torch.compile the model (CUDA mostly; slow first epoch)
    threshold_quantile: float = 0.99  # anomaly threshold: this quantile of held-out normal scores (docs/thresholds.md)
    grad_clip: float = 0.0  # clip the global gradient norm to this (0: off; then spike_clip applies)
    # clip a gradient whose norm exceeds this many times the running RMS norm that AdamW keeps (its
    # second moment): a rare spike cannot throw the model off (docs/model.md); 0: off
    spike_clip: float = 4.0
    crop: int = 0  # a grid (surface) model trains on random crops of this many pixels; 0 = auto (64 when larger)
    checkpoint_every: int = 0  # epochs between checkpoints (the first and last always); 0 = auto (~50 steps apart)
    reader: bool = True  # a surface (grid) model also trains a defect reader (vaekit.reader), its default score
    # cross-fitting (vaekit.training.splits.plan_splits): -1 auto (5 folds below 200 images; a surface
    # model with its reader holds out one fold instead), 0 off, K >= 2 folds
    folds: int = -1
    # small random warps of the training images (vaekit.training.augment): "auto" (aligned objects,
    # fewer than 50 training images), "on", "off"
    augment: str = "auto"

    def __post_init__(self) -> None:
        for name in ("lr", "weight_decay", "beta", "val_fraction", "calibration_fraction", "threshold_quantile",
                     "grad_clip", "spike_clip"):
            value = getattr(self, name)
            if not finite_number(value):
                raise BadInput(f"{name.replace('_', ' ')} must be a finite number, got {value!r:.40}")
        if self.grad_clip < 0 or self.spike_clip < 0:
            raise BadInput(f"grad clip and spike clip must be >= 0 (0: off), got {self.grad_clip!r} and {self.spike_clip!r}")
        for name in ("epochs", "kl_warmup", "checkpoint_every"):
            value = getattr(self, name)
            if not _int_in(value, 0, MAX_EPOCHS):
                what = {"kl_warmup": "KL warm-up epochs"}.get(name, name)
                raise BadInput(f"{what} must be an integer from 0 to {MAX_EPOCHS:,} ({_ZERO[name]}), got {value!r:.40}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or not 0 <= self.batch_size <= MAX_BATCH_SIZE:
            raise BadInput(f"batch size must be an integer from 1 to {MAX_BATCH_SIZE} (or 0 for auto), got {self.batch_size!r:.40}")
        if self.schedule not in SCHEDULES:
            raise BadInput(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if not 0 < self.lr <= FLOAT32_MAX:  # the optimiser steps in float32: a larger one overflows it
            raise BadInput(f"learning rate must be > 0 and at most {FLOAT32_MAX:.4g}, got {self.lr!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= SEED_MAX:
            raise BadInput(f"seed must be an integer >= 0 and at most 2**63 - 1 ({SEED_MAX}), got {self.seed!r}")
        if not self.beta >= 0:  # also refuses NaN
            raise BadInput(f"beta must be >= 0, got {self.beta!r}")
        if not 0.0 <= self.val_fraction < 1.0 or not 0.0 <= self.calibration_fraction < 1.0 or (
                self.val_fraction + self.calibration_fraction >= 1.0):
            raise BadInput(f"validation and calibration fractions must be in [0, 1) and leave images to train on, "
                           f"got {self.val_fraction!r} and {self.calibration_fraction!r}")
        if isinstance(self.crop, bool) or not isinstance(self.crop, int) or not 0 <= self.crop <= MAX_IMAGE_SIZE \
                or 0 < self.crop < 16:
            raise BadInput(f"crop must be 0 (auto) or 16 to {MAX_IMAGE_SIZE} pixels, got {self.crop!r}")
        check_flags(amp=self.amp, channels_last=self.channels_last, compile=self.compile, reader=self.reader)
        if isinstance(self.folds, bool) or not isinstance(self.folds, int) or self.folds < -1 or self.folds == 1 \
                or self.folds > 100:
            raise BadInput(f"folds must be -1 (auto), 0 (off) or 2 to 100, got {self.folds!r}")
        if self.augment not in AUGMENT:
            raise BadInput(f"augment must be one of {AUGMENT}, got {self.augment!r}")
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
