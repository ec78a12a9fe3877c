"""The anomaly scores, in numpy: what both engines' outputs become (no torch here).

An engine hands back, per image, the reconstruction NLL map and the posterior (mu, logvar).
From those this module builds the parts of the -ELBO and the scores:

- `pixel_floor`: the NLL a perfect reconstruction would still cost; R = recon - floor is the
  reconstruction term with the image's own complexity taken out ("excess" = R + KL).
- `kl_map`: the KL of each latent cell spread over the pixels it decodes (flat for a vector z).
- `Calibration`: the default score, "atypicality". Tests of the image are compared with the
  same tests on normal images the model was not trained on (z-scores). An aligned object: its
  reconstruction's error too high, over the image and in its worst 5 x 5 window, its code too
  far from the nearest training code (vaekit.inference.codebank), its own pixel entropy too LOW (Nalisnick et al. 2019: an image
  simpler than any normal one, such as a "1" under a model of "8"s). A surface: R too high,
  the KL too high, or the whole -ELBO too low (a smudge that wipes out a texture's detail). With a latent grid the same tests run per neighbourhood, both ways, so
  local defects count. An aligned object's score adds up each test's squared distance from 2 sd
  below its normal mean, Σ max(z + 2, 0)², the image-too-simple test's from its mean at least
  ("floored": a normal image scores ~16 with four tests, a test 3 sd out adds 25); a surface's adds up the squares of the z-scores that point the anomalous way,
  Σ max(z, 0)² ("sumsq": its eleven tests would each add ~5 from the shift).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from vaekit.errors import DamagedFile
from vaekit.inference import codebank

SOFT_SD = 0.1  # per-position sd is softened by this share of the mean sd: no division by ~0
FLOOR_SHARE = 0.5  # a test's sd is at least this share of its spread over the reference (training) images
CODE_SD_FLOOR = 1e-4  # the code test's sd is at least this share of d, the prior's mean squared distance from 0
# sd floors in each test's own units for images that do not vary: 0.1 nat (error_local: over its window),
NATS_SD_FLOOR, LOCAL_SD_FLOOR = 0.1, 1e-3  # 0.1 the code distance, 1e-3 sd a local test (docs/thresholds.md)
GLOBAL_TESTS = ("recon_high", "kl_high", "elbo_low")  # the global tests of a calibration that names none
# A vector latent's heat map: the R map averaged over 5x5 pixels. On the shapes sample data the
# pixel AUROC of the raw map is 0.967, averaged over 3 px 0.989, over 5 px 0.994 (docs/detection.md).
MAP_WINDOW = 5
# "shifted": each test counts from this many sd below its normal mean, so an image clearly typical on
# one test no longer scores like one at its mean, while a test far on the normal side cannot cancel
# another's alarm (docs/detection.md: 15 of 15 choose-half classes of three digit sets went up)
COMBINE_SHIFT = 2.0
# "floored": as "shifted", but a test whose anomalous side depends on the class never counts less
# than at its normal mean: the image-too-simple test points the wrong way for the simplest class (a
# "1"'s set), where shifted it added ~4 sd² to normal images only (docs/detection.md, Combining the tests)
FLOORED_TESTS = ("entropy_low",)


def pixel_floor(x: np.ndarray, likelihood: str, log_scale: Sequence[float] | None = None) -> np.ndarray:
    """-log p(x | x_hat = x) per pixel, summed over channels: (N, C, H, W) in [0, 1] -> (N, H, W).

    The reconstruction NLL can never go below this, however good the model. For the Bernoulli
    likelihood on grey levels it is the binary entropy H(x) of every pixel, so it grows with
    the amount of grey (edges, anti-aliasing, texture) in the image: the raw -ELBO then ranks
    images partly by how much grey they hold, which is the complexity bias that makes it a
    weak detector (Serra et al. 2020). Subtracting it leaves sum KL(Bern(x) || Bern(x_hat)),
    which is zero for a perfect reconstruction whatever the image. For the Gaussian (one sigma
    per channel) it is the same constant for every image: log sigma + log(2 pi) / 2 per value.
    """
    from vaekit.model.likelihood_np import floor

    return floor(likelihood, x, log_scale)


def kl_map(mu: np.ndarray, logvar: np.ndarray, latent_shape: Sequence[int], size: int) -> np.ndarray:
    """Closed-form KL per latent value, summed per cell and spread evenly over the pixels the cell
    decodes: (N, D) -> (N, size, size). A vector latent has one cell: the whole image."""
    kl = 0.5 * (mu.astype(np.float64) ** 2 + np.exp(logvar.astype(np.float64)) - 1.0 - logvar)
    n = len(kl)
    if len(latent_shape) == 1:
        return np.broadcast_to((kl.sum(1) / size**2)[:, None, None], (n, size, size)).copy()
    c, g, _ = latent_shape
    cells = kl.reshape(n, c, g, g).sum(1)  # (N, g, g)
    idx = np.minimum(np.arange(size) * g // size, g - 1)  # nearest cell of each pixel
    per_cell = np.bincount(idx, minlength=g).astype(np.float64)  # pixels per cell along one axis
    return cells[:, idx][:, :, idx] / (per_cell[idx][:, None] * per_cell[idx][None, :])


def window_mean(m: np.ndarray, w: int) -> np.ndarray:
    """Mean over the w x w window around each pixel, edges replicated: (N, H, W) -> (N, H, W)."""
    p = w // 2
    padded = np.pad(np.asarray(m, dtype=np.float64), ((0, 0), (p, w - 1 - p), (p, w - 1 - p)), mode="edge")
    c = padded.cumsum(1).cumsum(2)
    c = np.pad(c, ((0, 0), (1, 0), (1, 0)))
    h, wd = m.shape[1:]
    s = c[:, w:w + h, w:w + wd] - c[:, :h, w:w + wd] - c[:, w:w + h, :wd] + c[:, :h, :wd]
    return s / (w * w)


# A second error test reads the worst 5 x 5 window: a scratch on a part, or a stroke a digit lacks,
# is a few windows' error, and summed over the image it drowned in the spread of every other
# pixel's (docs/detection.md, "The error test, local": the sample shapes 0.916 -> 1.000)
LOCAL_WINDOW = 5

ERROR_EPS = 1e-4  # reconstructions are clipped to [eps, 1 - eps] for the error map: one pixel adds <= ~9 nats


def error_map(x: np.ndarray, x_hat: np.ndarray) -> np.ndarray:
    """How far the reconstruction is from the image, per pixel: sum over channels of
    KL(Bern(x) || Bern(x_hat)), x and x_hat (N, C, H, W) in [0, 1] -> (N, H, W), nats.

    For a Bernoulli model this is its own R (recon - floor); for any other likelihood it is the
    same divergence of the reconstruction, which weighs an error by how certain the pixel is:
    0.1 off a pixel at 0.02 counts ~20x more than 0.1 off a mid grey. An object's silhouette on
    a dark background then outweighs the texture inside it, where a Gaussian's squared error
    weighs both alike (docs/detection.md measures both)."""
    x = np.asarray(x, dtype=np.float64)
    q = np.clip(np.asarray(x_hat, dtype=np.float64), ERROR_EPS, 1 - ERROR_EPS)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = (np.where(x > 0, x * np.log(np.maximum(x, 1e-300) / q), 0.0)
              + np.where(x < 1, (1 - x) * np.log(np.maximum(1 - x, 1e-300) / (1 - q)), 0.0))
    return kl.sum(1)


@dataclass
class Parts:
    """The -ELBO of a batch in parts, nats (z = mu or averaged over draws), and what the
    atypicality's tests read beside it."""

    recon: np.ndarray  # (N,) reconstruction NLL
    kl: np.ndarray  # (N,) KL(q(z|x) || p(z))
    floor: np.ndarray  # (N,) NLL of a perfect reconstruction
    r_map: np.ndarray | None = None  # (N, H, W) recon NLL - floor per pixel (channels summed)
    k_map: np.ndarray | None = None  # (N, H, W) KL per pixel (see kl_map)
    e_map: np.ndarray | None = None  # (N, H, W) error_map of the reconstruction at z = mu
    latent: np.ndarray | None = None  # (N,) |mu|^2: how far the code lies from the prior's centre (vaekit 0.3.dev runs)
    entropy: np.ndarray | None = None  # (N,) the image's own complexity: sum of the binary entropy of its values
    mu: np.ndarray | None = None  # (N, D) the posterior mean: the code the "code too far" test places

    @property
    def neg_elbo(self) -> np.ndarray:
        return self.recon + self.kl

    def __len__(self) -> int:
        return len(self.recon)

    def take(self, idx) -> "Parts":
        """The parts of the images `idx` (an index array or a boolean mask)."""
        pick = lambda a: None if a is None else a[idx]  # noqa: E731
        return Parts(self.recon[idx], self.kl[idx], self.floor[idx], pick(self.r_map), pick(self.k_map),
                     pick(self.e_map), pick(self.latent), pick(self.entropy), pick(self.mu))


# The atypicality's global tests: each a statistic of the image that is large when it is atypical
TESTS = {
    "recon_high": lambda p: p.recon - p.floor,  # the decoder cannot rebuild it (R, nats)
    "kl_high": lambda p: p.kl,  # it needs an unusual latent code (nats)
    "elbo_low": lambda p: -p.neg_elbo,  # simpler than any normal image, by the model's own -ELBO
    "error_high": lambda p: p.e_map.reshape(len(p.e_map), -1).sum(1),  # error_map summed: cannot rebuild it
    # the error_map's largest mean over LOCAL_WINDOW x LOCAL_WINDOW pixels: cannot rebuild some part of it
    "error_local": lambda p: window_mean(p.e_map, LOCAL_WINDOW).reshape(len(p.e_map), -1).max(1),
    "latent_high": lambda p: p.latent,  # its code lies farther from the prior's centre than normal codes
    "entropy_low": lambda p: -p.entropy,  # simpler than normal, by the image's own pixels (no model involved)
    "code_far": None,  # its code lies farther from the nearest training code than normal codes (Calibration.codes)
}
OBJECT_TESTS = ("error_high", "code_far", "entropy_low", "error_local")  # an aligned object's (docs/detection.md)


PROFILE_MARGIN = 16  # local statistics depend on the distance to the nearest edges, up to this many pixels


def edge_class(n: int, m: int = PROFILE_MARGIN) -> np.ndarray:
    """The class of each of n rows (or columns) in a (2m+1)-entry profile: the distance to the
    top edge (0..m-1) near the top, 2m minus the distance to the bottom edge near the bottom,
    and m everywhere in between. Local statistics then depend on where a pixel sits relative to
    the edges (a model reconstructs borders worse) and not on the image size, so a surface
    model's statistics hold for a crop and for a whole image at its native resolution."""
    i = np.arange(n)
    top, bottom = i, n - 1 - i
    out = np.full(n, m)
    near_top = (top < m) & (top <= bottom)
    near_bottom = (bottom < m) & ~near_top
    out[near_top], out[near_bottom] = top[near_top], 2 * m - bottom[near_bottom]
    return out


class Calibration:
    """The "atypicality" score: statistics of normal images, and the tests they standardise.

    Global tests (`TESTS`, the names stored in "global"): for an aligned object the error of its
    reconstruction too high (summed over the image, and in its worst window since 2026-12-06),
    its code too far from the nearest training code (`codes`), the image simpler than normal
    (`OBJECT_TESTS`); for a surface, and in runs of vaekit 0.2, R too high, the KL too
    high, the -ELBO too low (`GLOBAL_TESTS`). `local` (a latent grid) adds, for each window width in `windows` (pixels), the
    window means of the R and KL maps too high or too low anywhere (their largest z over the
    image), z-scored by statistics that depend on the distance to the edges only (`edge_class`).
    `combine`: "max" takes the largest standardised test (vaekit 0.2); "sumsq" adds up the
    squares of those above 0 (every part that is atypical in its own direction counts);
    "shifted" adds up max(z + COMBINE_SHIFT, 0)² (an aligned object's in vaekit 0.3's first
    runs); "floored" the same with the tests of `FLOORED_TESTS` counted from their normal mean at
    least (an aligned object's now).

    Fitting has two levels, on different images: the local maps' statistics on a `reference`
    (training images, many pixels), then each test's mean and sd on images the model never
    trained on. Runs of vaekit 0.2 stored per-position map statistics ("maps"); they still load.
    """

    def __init__(self, stats: dict):
        self.stats = stats
        self.local = bool(stats.get("local"))

    @classmethod
    def fit(cls, parts: Parts, local: bool, windows: Sequence[int] = (), combine: str = "max",
            reference: Parts | None = None, tests: Sequence[str] = GLOBAL_TESTS) -> "Calibration":
        """Fitted in memory: the local statistics on `reference` (default: `parts`), the tests
        on `parts`. (Streamed: `empty`, `add_reference`, `fit_tests`.)"""
        cal = cls.empty(local, windows, combine, tests)
        reference = parts if reference is None else reference
        cal.add_reference(reference)
        return cal.fit_tests(cal.tests(parts), cal.tests(reference))

    @classmethod
    def empty(cls, local: bool, windows: Sequence[int] = (), combine: str = "max",
              tests: Sequence[str] = GLOBAL_TESTS) -> "Calibration":
        windows = [int(w) for w in windows] if local else []
        return cls({"version": 2, "local": local, "windows": windows, "combine": combine, "margin": PROFILE_MARGIN,
                    "global": list(tests), "profile": {}})

    @property
    def global_tests(self) -> list[str]:
        return list(self.stats.get("global", GLOBAL_TESTS))

    @property
    def codes(self) -> np.ndarray:
        """The training codes the code test measures from (vaekit.inference.codebank)."""
        if getattr(self, "_codes", None) is None:
            self._codes = codebank.decode(self.stats["codes"])
        return self._codes

    def with_codes(self, codes: np.ndarray) -> "Calibration":
        """The same statistics measuring the code test from `codes` (N, D): a fold model's own."""
        return Calibration({**self.stats, "codes": codebank.encode(codes)})

    def add_reference(self, parts: Parts) -> None:
        """Add a batch of reference images to the local statistics (sums per edge class)."""
        m = self.stats["margin"]
        for w in self.stats["windows"]:
            for key in ("r_map", "k_map"):
                lm = window_mean(getattr(parts, key), w)
                h, wd = lm.shape[1:]
                cell = edge_class(h, m)[:, None] * (2 * m + 1) + edge_class(wd, m)[None, :]
                flat = np.broadcast_to(cell, lm.shape).ravel()
                acc = self.stats["profile"].setdefault(f"{key}/{w}", {"n": [0.0] * (2 * m + 1) ** 2})
                n = np.bincount(flat, minlength=(2 * m + 1) ** 2)
                s1 = np.bincount(flat, lm.ravel(), minlength=(2 * m + 1) ** 2)
                s2 = np.bincount(flat, (lm**2).ravel(), minlength=(2 * m + 1) ** 2)
                for name, v in (("n", n), ("s1", s1), ("s2", s2)):
                    acc[name] = (np.asarray(acc.get(name, 0.0)) + v).tolist()

    def fit_tests(self, tests: np.ndarray, reference_tests: np.ndarray | None = None) -> "Calibration":
        """Each test's mean and sd over `tests` (N, T) of images the model never trained on. The
        sd is floored at half the test's spread over `reference_tests` (training images): a few
        held-out images can agree to the last digit, and a spread of ~0 would turn noise into
        astronomically large scores (vaekit 0.2 floored it at 1% of the mean, which depends on
        where the mean sits, not on the scale)."""
        self._finish_profile()
        floor = np.zeros(tests.shape[1])
        if reference_tests is not None and len(reference_tests) > 1:
            floor = FLOOR_SHARE * reference_tests.std(0)
        if "code_far" in self.global_tests:  # near-duplicate images: a spread of float rounding, not information
            i = self.global_tests.index("code_far")
            floor[i] = max(floor[i], CODE_SD_FLOOR * self.codes.shape[1])
        sd = np.maximum(np.maximum(tests.std(0), floor), self._unit_floor(tests.shape[1]))
        self.stats["tests"] = {"mean": tests.mean(0).tolist(), "sd": sd.tolist()}
        return self

    def _unit_floor(self, n: int) -> np.ndarray:
        g = [NATS_SD_FLOOR / (LOCAL_WINDOW**2 if t == "error_local" else 1) for t in self.global_tests]
        return np.array(g + [LOCAL_SD_FLOOR] * (n - len(g)))

    def _finish_profile(self) -> None:
        """Sums per edge class -> mean and sd (softened by SOFT_SD of the mean sd: no division by ~0)."""
        for entry in self.stats["profile"].values():
            if "s1" not in entry:
                continue
            n = np.maximum(np.asarray(entry.pop("n")), 1.0)
            mean = np.asarray(entry.pop("s1")) / n
            sd = np.sqrt(np.maximum(np.asarray(entry.pop("s2")) / n - mean**2, 0.0))
            entry["mean"], entry["sd"] = mean.tolist(), np.sqrt(sd**2 + (SOFT_SD * sd.mean()) ** 2 + 1e-12).tolist()

    def _local_z(self, parts: Parts) -> list[np.ndarray]:
        out = []
        for w in self.stats["windows"]:
            for key in ("r_map", "k_map"):
                lm = window_mean(getattr(parts, key), w)
                mean, sd = self._local_stats(f"{key}/{w}", lm.shape[1:])
                z = (lm - mean) / sd
                out += [z, -z]  # too high, too low
        return out

    def _local_stats(self, name: str, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        if "maps" in self.stats:  # vaekit 0.2: per position, at the model's size
            s = self.stats["maps"][name]
            return np.asarray(s["mean"]), np.asarray(s["sd"])
        self._finish_profile()
        m = self.stats["margin"]
        s = self.stats["profile"][name]
        rows, cols = edge_class(shape[0], m), edge_class(shape[1], m)
        pick = lambda v: np.asarray(v).reshape(2 * m + 1, 2 * m + 1)[rows][:, cols]  # noqa: E731
        return pick(s["mean"]), pick(s["sd"])

    def tests(self, parts: Parts) -> np.ndarray:
        """The raw test statistics (N, T): GLOBAL_TESTS, then per window and map the largest z
        too high and too low."""
        cols = [codebank.nearest(self.codes, parts.mu) if name == "code_far" else TESTS[name](parts)
                for name in self.global_tests]
        if self.local:
            cols += [z.reshape(len(z), -1).max(1) for z in self._local_z(parts)]
        return np.stack(cols, 1)

    def score(self, parts: Parts, maps: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """(scores (N,), map (N, H, W) or None): the standardised tests combined, and per pixel
        the largest standardised local test (a grid), or the R map averaged over MAP_WINDOW
        pixels, in nats (a vector latent)."""
        t = self.stats["tests"]
        mean, sd = np.asarray(t["mean"]), np.asarray(t["sd"])
        amap = None
        g = len(self.global_tests)
        if maps and self.local:
            amap = np.stack([(m - mean[g + j]) / sd[g + j] for j, m in enumerate(self._local_z(parts))]).max(0)
        elif maps:  # one latent for the whole image: where it reconstructs worst, nats per pixel
            error = {"error_high", "error_local"} & set(self.global_tests)
            amap = window_mean(parts.e_map if error else parts.r_map, MAP_WINDOW)
        return self.score_tests(self.tests(parts)), amap

    def score_tests(self, tests: np.ndarray) -> np.ndarray:
        """The score of raw tests (N, T) (`tests`), standardised and combined."""
        t = self.stats["tests"]
        z = (tests - np.asarray(t["mean"])) / np.asarray(t["sd"])
        combine = self.stats.get("combine")
        if combine == "sumsq":
            return (np.clip(z, 0.0, None) ** 2).sum(1)
        if combine == "shifted":
            return (np.clip(z + COMBINE_SHIFT, 0.0, None) ** 2).sum(1)
        if combine == "floored":
            names = self.global_tests + [""] * (z.shape[1] - len(self.global_tests))
            low = np.array([COMBINE_SHIFT if n in FLOORED_TESTS else 0.0 for n in names])
            return (np.maximum(z + COMBINE_SHIFT, low) ** 2).sum(1)
        return z.max(1)

    @classmethod
    def from_stored(cls, stats, size: int, source, latent_dim: int | None = None) -> "Calibration":
        """Check a stored section (config.json or ONNX metadata) before use: DamagedFile if wrong."""
        from vaekit.inference.stored import damage

        what = damage(stats, size, TESTS, GLOBAL_TESTS, latent_dim)
        if what is not None:
            raise DamagedFile(f"{source}: the stored score calibration is damaged ({what}); retrain the model")
        return cls(stats)
