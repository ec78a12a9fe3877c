"""The one interface of vaekit's two engines: what `vaekit.load(path)` returns.

A run directory opens with the torch engine (vaekit/inference/engine_torch.py); an exported `.onnx`
file with the onnxruntime engine (vaekit/inference/engine_onnx.py), which never imports torch. The
factory, `vaekit.load`, lives outside this file, so the interface never imports its
implementations. Both engines only provide four primitives on float32
arrays (`_encode`, `_decode`, `_score_core`, and their metadata); everything users call
(encode, decode, reconstruct, score, iwae) is written once, here and in estimate.py, in numpy, so the two
engines cannot drift apart.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from vaekit import images as imageio
from vaekit.errors import BadInput, check_callbacks
from vaekit.images.arrays import as_images, as_latents, check_batch_size, check_int, user_batches, user_images
from vaekit.inference.info import DEFAULT_SCORE, SCORES, ModelInfo, Scores, score_unit, threshold_fields  # noqa: F401  (public here too)
from vaekit.inference.estimate import Estimate, code_length, estimate, object_parts
from vaekit.inference.tiled import file_batch, iter_scores as tiled_scores, score_files, tiled
from vaekit.inference.atypicality import Calibration, Parts, kl_map, pixel_floor  # noqa: F401  (pixel_floor: public here too)
from vaekit.inference import frame
from vaekit.progress import Progress

FORWARD_SIDE = 64  # one network pass: <= batch_size x FORWARD_SIDE**2 pixels (docs/scaling.md, large images)
MAX_SAMPLES = 4096  # posterior draws per image: each batch holds samples x its pixels at once


class Model:
    """What `vaekit.load` returns. Inputs are uint8 (N, C, H, W) at the model's size, or paths."""

    info: ModelInfo
    batch_size: int = 64

    # --- the engine's primitives (float32 arrays in, float32 arrays out) -----------------------
    def _encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _decode(self, z: np.ndarray) -> np.ndarray:
        """z (B, D) -> mean image (B, C, H, W) in [0, 1]."""
        raise NotImplementedError

    def _score_core(self, x: np.ndarray, eps: np.ndarray) -> tuple[np.ndarray, ...]:
        """x (B,C,H,W) in [0,1], eps (B, D) -> recon (B,), kl (B,), pixel_map (B,H,W), mu, logvar,
        and x_hat (B,C,H,W), the reconstruction (None from an export of vaekit < 0.3)."""
        raise NotImplementedError

    # --- preprocessing ---------------------------------------------------------------------
    def load_images(self, inputs: str | Path | Sequence[str | Path], progress: Progress | None = None) -> imageio.LoadReport:
        """Find and decode images at the model's size and channels, all at once; `iter_batches`
        streams instead. A surface model (a latent grid) scores files whole, in tiles: these
        arrays are each file's centre square resized to one tile, so score the files themselves."""
        from vaekit.stream import find_inputs

        paths = find_inputs(inputs).paths
        return imageio.load_images(paths, self.info.image_size, self.info.channels, progress=progress)

    def iter_batches(self, inputs: str | Path | Sequence[str | Path], batch_size: int | None = None,
                     workers: int = 0):
        """Decoded batches (vaekit.stream.Batch; one over BATCH_PIXELS in parts) of the images under
        `inputs`, in file order, with the model's preprocessing; memory is a few parts, whatever the count."""
        from vaekit.stream import find_inputs, iter_batches

        batch_size = check_batch_size(batch_size, self.batch_size)
        paths = find_inputs(inputs).paths
        return iter_batches(paths, self.info.image_size, self.info.channels, batch_size, workers)

    def _images(self, x) -> tuple[np.ndarray, list[Path] | None, list[tuple[Path, str]]]:
        """Array data checked (vaekit.images.arrays), or files/folders decoded: (images, paths, skipped)."""
        return self._loaded(*user_images(x, self.info.channels, self.info.image_size))

    def _loaded(self, paths, arr) -> tuple[np.ndarray, list[Path] | None, list[tuple[Path, str]]]:
        if arr is not None:
            return arr, None, []
        report = self.load_images(paths)
        if not report.paths:
            raise imageio.none_usable(f"in {', '.join(map(str, paths))}", report.skipped)
        return report.images, report.paths, report.skipped

    def _check(self, x) -> np.ndarray:
        """Array data as uint8 (N, C, H, W) at the model's size; BadInput naming what is wrong."""
        return as_images(x, self.info.channels, self.info.image_size)

    def _batches(self, n: int):
        """Slices of at most batch_size images and batch_size x FORWARD_SIDE**2 pixels."""
        per = max(1, min(self.batch_size, self.batch_size * FORWARD_SIDE**2 // self.info.image_size**2))
        for s in range(0, n, per):
            yield slice(s, min(n, s + per))

    # --- what users call -------------------------------------------------------------------
    def encode(self, x) -> tuple[np.ndarray, np.ndarray]:
        """uint8 images (or files/folders) -> posterior mean and log-variance, (N, D) float32
        each. Deterministic."""
        x = self._images(x)[0]
        mus, logvars = [], []
        for sl in self._batches(len(x)):
            mu, logvar = self._encode(imageio.to_float(x[sl]))
            mus.append(mu)
            logvars.append(logvar)
        d = self.info.latent_dim
        return (np.concatenate(mus) if mus else np.zeros((0, d), np.float32),
                np.concatenate(logvars) if logvars else np.zeros((0, d), np.float32))

    def decode(self, z: np.ndarray) -> np.ndarray:
        """Latent codes (N, D) -> mean images (N, C, H, W) float32 in [0, 1]."""
        z = as_latents(z, self.info.latent_dim)
        out = [self._decode(z[sl]) for sl in self._batches(len(z))]
        s, c = self.info.image_size, self.info.channels
        return np.concatenate(out) if out else np.zeros((0, c, s, s), np.float32)

    def reconstruct(self, x) -> np.ndarray:
        """Decode the posterior mean of uint8 images (or files/folders): (N, C, H, W) float32
        in [0, 1]. Deterministic."""
        return self.decode(self.encode(x)[0])

    def sample(self, n: int, temperature: float = 1.0, seed: int = 0) -> np.ndarray:
        """Draw n images from the prior N(0, temperature^2 I)."""
        n = check_int(n, "n", 1)
        seed = check_int(seed, "seed", 0)
        most = max(1, imageio.MAX_RESIZE_PIXELS // (self.info.image_size ** 2))  # the n images are held at once
        if n > most:
            raise BadInput(f"n {n} is too many images of {self.info.image_size} px to draw at once: at most {most} "
                           f"({imageio.MAX_RESIZE_PIXELS:,} pixels in all)")
        if isinstance(temperature, (bool, np.bool_)) or not isinstance(temperature, (int, float, np.integer, np.floating)) \
                or not 0 <= temperature <= 1e6:
            raise BadInput(f"temperature must be a number from 0 to 1e6, got {temperature!r}")
        z = np.random.default_rng(seed).standard_normal((n, self.info.latent_dim), dtype=np.float32) * temperature
        return self.decode(z)

    def iter_scores(self, inputs: str | Path | Sequence[str | Path], batch_size: int | None = None,
                    samples: int = 0, score: str | None = None, iwae: bool = False, maps: bool = False,
                    workers: int = 0):
        """Scores of the images under `inputs`, one `Scores` per batch or part of one (with its `paths`
        and the files it `skipped`), decoded and scored in turn: for folders too large for memory.
        An array is scored in slices of `batch_size` images; a generator of images is read
        `batch_size` at a time, each batch checked on its own (`user_batches`)."""
        batch_size = check_batch_size(batch_size, file_batch(self, self.batch_size) if tiled(self) else self.batch_size)
        paths, batches = user_batches(inputs, self.info.channels, self.info.image_size, batch_size)
        if batches is not None:  # array data, a generator of images read a batch at a time
            for images in batches:
                yield self.score(images, samples=samples, score=score, iwae=iwae, maps=maps)
            return
        if tiled(self):
            for part in tiled_scores(self, paths, batch_size, workers, samples=samples, score=score, iwae=iwae, maps=maps):
                yield self._labelled(part, score, samples, iwae)
            return
        for batch in self.iter_batches(paths, batch_size, workers):
            if len(batch.paths):
                out = self.score(batch.images, samples=samples, score=score, iwae=iwae, maps=maps)
            else:
                out = self._labelled(self.empty_scores(score, samples, iwae), score, samples, iwae)
            out.paths, out.skipped = batch.paths, batch.skipped
            yield out

    def empty_scores(self, score: str | None, samples: int = 0, iwae: bool = False) -> Scores:
        """The Scores of a batch whose every file was skipped, named as the request's other batches are."""
        e = np.zeros(0)
        return Scores(e, e, e, e, None, e, excess=e, floor=e, name=self.effective_score(score, samples, iwae)[0],
                      estimator="iwae" if iwae else ("samples" if samples else "mean"))

    def score(self, x, samples: int = 0, score: str | None = None, iwae: bool = False,
              progress: Progress | None = None, maps: bool = True) -> Scores:
        """Per-image anomaly scores (higher = more anomalous) and, with maps=True, per-pixel maps, nats.

        x: uint8 images (N, C, H, W) at the model's size, or an image file, a folder, or a list
        of them (decoded with the model's preprocessing; `paths` and `skipped` of the result say
        which files the rows are; a surface model reads each file whole, in tiles, and its
        pixel_map is a list where shapes differ: vaekit.inference.tiled). For folders too large
        for memory use `iter_scores`.

        score: None (default) is the model's own default score (ModelInfo.score): "defect" for a
        surface model with a defect reader (the reader's largest smoothed defect probability,
        vaekit.reader), else "atypicality", which combines standardised tests of the -ELBO's
        parts against normal images (vaekit/inference/atypicality.py, Calibration); a model
        trained before it existed has no calibration and scores "excess" instead (Scores.name
        says which).
        "excess" is the -ELBO minus the image's floor (`pixel_floor`): the nats by which the model falls
        short of a perfect reconstruction plus the KL. "neg_elbo" is the plain -ELBO; "recon", "kl" its terms.
        Estimators, all deterministic: the same image gets the same score in every run, and in
        any batch (up to float32 rounding, ~1e-7 relative, where kernels sum in another order):
        samples=0 (default) evaluates at the posterior mean z = mu; samples=K averages K
        posterior draws whose noise is seeded by the image's own pixels; iwae=True (needs K >= 1)
        uses the importance-weighted bound of `iwae` for -log p(x) (neg_elbo and excess only).
        pixel_map: for "atypicality" the per-pixel test (see Calibration.score); for "excess" the
        reconstruction NLL above each pixel's floor, so a perfectly reconstructed pixel is 0;
        otherwise the per-pixel reconstruction NLL.
        """
        asked, score = score, self._requested(score, samples, iwae, maps, progress)
        paths, arr = user_images(x, self.info.channels, self.info.image_size)  # read once: x may be a generator
        if arr is None and tiled(self):  # whole files, tiled
            got = score_files(self, paths, samples=samples, score=score, iwae=iwae, maps=maps, progress=progress)
            return self._labelled(got, asked, samples, iwae)
        return self._labelled(self._scored(paths, arr, samples, score, iwae, maps, progress), asked, samples, iwae)

    def _labelled(self, s: Scores, asked: str | None, samples: int, iwae: bool) -> Scores:
        """`s` with the stored threshold that applies to it, and its note (a score other than the one asked for:
        `samples=8` scores the excess, nats, where `model.info.threshold` is an atypicality's, sd²)."""
        s.threshold, notes = self.info.threshold_for(s.name, s.estimator), [self.effective_score(asked, samples, iwae)[1]]
        int8 = (getattr(self, "config", None) or {}).get("quantization", "none") != "none"
        if int8 and s.threshold is not None and s.name != "defect":
            notes.append("the threshold was set on the float32 model, and int8 moves this score: check the rate on "
                         "normal images (vaekit evaluate)")  # the reader stays float32
        s.note = "; ".join(n for n in notes if n) or None
        return s

    def _scored(self, paths, arr, samples: int, score: str, iwae: bool, maps: bool, progress) -> Scores:
        """Model.score of images at the model's size (the score already checked)."""
        x, paths, skipped = self._loaded(paths, arr)
        n, s = len(x), self.info.image_size
        recon, kl, nll, floor, chosen, coded = (np.zeros(n) for _ in range(6))
        pmap = np.zeros((n, s, s), np.float32) if maps else None
        for sl in self._batches(n):
            xf = imageio.to_float(x[sl])
            est = estimate(self._score_core, x[sl], xf, self.info.latent_dim, samples, iwae,
                           code_length(self.info.likelihood, self.info.log_scale))
            recon[sl], kl[sl], nll[sl], coded[sl] = est.recon, est.kl, est.nll, est.code
            fmap = self._floor_map(xf, score)
            floor[sl] = fmap.reshape(len(xf), -1).sum(1) if fmap is not None else np.nan
            batch_score, batch_map = self._batch_score(xf, est, fmap, score, maps)
            if batch_score is not None:
                chosen[sl] = batch_score
            if batch_map is not None:
                pmap[sl] = batch_map
            if progress:
                progress(sl.stop, n)
        excess = nll - floor
        if score == "defect":  # the reader concatenates its batches: an empty one has none to read
            chosen, defect_map = frame.checked(self.calibration(), x, *self._read(x)) if n else (chosen, pmap)
            if maps:
                pmap = defect_map.astype(np.float32)
        elif score != "atypicality":
            chosen = {"excess": excess, "neg_elbo": nll, "recon": recon, "kl": kl}[score]
        estimator = "iwae" if iwae else ("samples" if samples else "mean")
        return Scores(chosen, nll, recon, kl, pmap, coded / (self.info.dims * math.log(2)), excess=excess, floor=floor,
                      name=score, estimator=estimator, paths=paths, skipped=skipped)

    def _requested(self, score: str | None, samples: int, iwae: bool, maps: bool = False, progress=None) -> str:
        """The score a request computes (effective_score), once its settings are checked."""
        check_callbacks(progress=progress)
        if not isinstance(samples, (int, np.integer)) or isinstance(samples, bool) or not 0 <= samples <= MAX_SAMPLES:
            raise BadInput(f"samples must be an integer from 0 to {MAX_SAMPLES}, got {samples!r}")
        for name, flag in (("iwae", iwae), ("maps", maps)):  # maps="no" is truthy: it computed the maps
            if not isinstance(flag, (bool, np.bool_)):
                raise BadInput(f"{name} must be True or False, got {flag!r:.40}")
        score = self.effective_score(score, samples, iwae)[0]
        if iwae and (samples < 1 or score not in ("neg_elbo", "excess")):
            raise BadInput(f"the IWAE estimate needs samples >= 1, got {samples}" if samples < 1 else "the IWAE estimate "
                           f"bounds -log p(x) as a whole; use score neg_elbo or excess, not {score!r}")
        return score

    def _floor_map(self, xf: np.ndarray, score: str) -> np.ndarray | None:
        """Each pixel's floor (B, H, W), or None for a gaussian model that does not carry its sigma
        when the score does not need it (only the excess and the atypicality do)."""
        if score in ("excess", "atypicality") or not (self.info.likelihood == "gaussian" and self.info.log_scale is None):
            return pixel_floor(xf, self.info.likelihood, self.info.log_scale)
        return None

    def _batch_score(self, xf: np.ndarray, est: Estimate, fmap: np.ndarray | None, score: str,
                     maps: bool) -> tuple[np.ndarray | None, np.ndarray | None]:
        """One batch's (atypicality score or None, pixel map or None). The other scores are
        columns of the estimate; the defect score and its maps come from the reader afterwards."""
        if score == "atypicality":  # at z = mu only (effective_score): one draw, its mu and logvar
            shape = self.info.latent_shape or (self.info.latent_dim,)
            parts = Parts(est.recon, est.kl, fmap.reshape(len(xf), -1).sum(1), r_map=est.r_map - fmap,
                          k_map=kl_map(est.mu, est.logvar, shape, self.info.image_size),
                          **object_parts(xf, est.x_hat, est.mu))
            chosen, amap = self.calibration().score(parts, maps=maps)
            return chosen, amap if maps else None
        if not maps or score == "defect":
            return None, None
        return None, est.r_map - fmap if score == "excess" else est.r_map

    def _read(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The defect reader's (image scores (N,), maps (N, H, W)) of uint8 images (engines that have one)."""
        raise NotImplementedError

    @property
    def has_reader(self) -> bool:
        return False

    def effective_score(self, score: str | None, samples: int = 0, iwae: bool = False) -> tuple[str, str | None]:
        """The score a request computes, and why when it is not the one asked for.

        The atypicality is calibrated on the -ELBO's parts at the posterior mean (z = mu): with
        posterior draws (`samples`) or the IWAE bound (which is of -log p(x) as a whole, not of
        its parts) it would be measured against statistics of another estimator, so those score
        `excess` (nats) instead, and say so. Models trained before the atypicality existed
        have no calibration and score `excess` too."""
        if score is None:
            score = self.info.score if self.info.score in SCORES else DEFAULT_SCORE
        if score not in SCORES:
            raise BadInput(f"score must be one of {SCORES}, got {score!r}")
        if score == "defect" and not self.has_reader:
            why = ("this engine cannot run the defect reader (an ONNX export without its NAME.reader.onnx)" if
                   self.info.score == "defect" else "the model has no defect reader (surface models of vaekit >= 0.3 have one)")
            fallback, note = self.effective_score("atypicality", samples, iwae)
            return fallback, f"{why}: the score is {fallback}" + (f"; {note}" if note else "")
        if score == "defect" and iwae:
            return "excess", "--iwae bounds -log p(x) as a whole, so the score is excess (nats), not the defect score"
        if score != "atypicality":
            return score, None
        if iwae:
            return "excess", "--iwae bounds -log p(x) as a whole, so the score is excess (nats), not the atypicality"
        if samples:
            return "excess", ("the atypicality is calibrated at the posterior mean; with posterior draws the score "
                              "is excess (nats)")
        if self.calibration() is None:
            return "excess", "the model has no score calibration (trained by vaekit 0.1): the score is excess (nats)"
        return score, None

    def elbo_parts(self, x: np.ndarray) -> Parts:
        """The -ELBO in parts at z = mu, with its R and KL maps (what Calibration is fitted on)."""
        x = self._check(x)
        if not len(x):
            raise BadInput("no images given: the -ELBO parts need at least one image")
        s, shape = self.info.image_size, self.info.latent_shape or (self.info.latent_dim,)
        out = []
        for sl in self._batches(len(x)):
            xf = imageio.to_float(x[sl])
            recon, kl, m, mu, logvar, x_hat = self._score_core(xf, np.zeros((len(xf), self.info.latent_dim), np.float32))
            fmap = pixel_floor(xf, self.info.likelihood, self.info.log_scale)
            out.append(Parts(m.astype(np.float64).reshape(len(m), -1).sum(1), kl, fmap.reshape(len(m), -1).sum(1),
                             r_map=m - fmap, k_map=kl_map(mu, logvar, shape, s), **object_parts(xf, x_hat, mu)))
        cat = lambda k: None if getattr(out[0], k) is None else np.concatenate([getattr(p, k) for p in out])  # noqa: E731
        return Parts(*(cat(k) for k in ("recon", "kl", "floor", "r_map", "k_map", "e_map", "latent", "entropy", "mu")))

    def calibration(self) -> Calibration | None:
        """The atypicality score's statistics of normal images, checked (None: the model has none)."""
        if self.info.calibration is None:
            return None
        if getattr(self, "_calibration", None) is None:
            self._calibration = Calibration.from_stored(self.info.calibration, self.info.image_size, self.info.source,
                                                        self.info.latent_dim)
        return self._calibration

    def iwae(self, x: np.ndarray, samples: int = 64) -> np.ndarray:
        """-log p(x) estimated by the importance-weighted bound with K samples, nats (N,).

        log p(x) >= log 1/K sum_k p(x|z_k) p(z_k) / q(z_k|x) (Burda et al. 2016): a tighter
        bound than the ELBO (the K=1 case), tightening as K grows, so the estimate never exceeds
        the K-sample -ELBO in expectation. Noise seeded per image, so deterministic."""
        if not isinstance(samples, (int, np.integer)) or samples < 1:
            raise BadInput(f"samples must be an integer >= 1, got {samples!r}")
        return self.score(x, samples=samples, score="neg_elbo", iwae=True, maps=False).neg_elbo

