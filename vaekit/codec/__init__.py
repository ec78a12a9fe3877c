"""A real codec: entropy-coded latents (lossy) and bits-back archives (lossless), in .vkc files.

Read in this order, one idea per file:
- `tables`: integer probability tables and the one way they reach constriction's ANS coder.
- `prior`: the lossy codec's learned prior, a factorized density per latent channel, per quality.
- `lossy`: quantised posterior means coded with those tables.
- `fitted`: a pixel model fitted to an archive's images, for a Gaussian or Bernoulli model;
  `learned`: a small network that does the same job, `learned_fit` which of the two an archive keeps.
- `bitsback`: lossless BB-ANS over the discretised logistic likelihood, or that fitted model.
- `net`: the network calls both make, one image at a time, on either engine.
- `header`, `container`: the .vkc file (a compact header, chunks, checksum).
- `store`: the tables as a run keeps them (fitted, stored, earlier sets kept for old files).
- `jobs`: folders in, .vkc out, and back (what the CLI calls); `lossless`: its bits-back half.
- `compare`: what it is measured against: one image as one Pillow file, WebP at a given size.
Numpy, constriction and Pillow only: the onnxruntime path never imports torch (a torch model's
archive trains its learned pixel model with torch). docs/codec.md.
"""

from vaekit.codec.bitsback import Desynchronised
from vaekit.codec.compare import PillowFile, pillow_file, webp_at_size
from vaekit.codec.container import ArchiveError, ArchiveModelMismatch
from vaekit.codec.header import Header
from vaekit.codec.jobs import DecodeResult, EncodeResult, check_encode, decode, encode, read_info
from vaekit.codec.prior import QUALITIES, Prior
from vaekit.codec.store import check_fit_target, fit_prior, save_prior, staged_for_fit, stored_prior

__all__ = ["QUALITIES", "ArchiveError", "ArchiveModelMismatch", "DecodeResult", "Desynchronised", "EncodeResult",
           "Header", "PillowFile", "Prior", "check_encode", "check_fit_target", "decode", "encode", "fit_prior", "pillow_file", "read_info",
           "save_prior", "staged_for_fit", "stored_prior", "webp_at_size"]
