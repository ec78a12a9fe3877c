"""Latent code files: many images compressed to their posterior means, in one safetensors file.

- `format`: the file format (safetensors + JSON header + checksum), numpy only, no torch.
- `writer`: the same format written from codes that come in chunks (large folders).
- `sizes`: a source image's size, kept in the file and restored around the model's square.
- `jobs`: `vaekit encode` (streamed, resumable) and `vaekit decode`.
- `walk`: interpolations, grids and 2-D maps of the latent space.
"""

from vaekit.codes.format import (FORMAT, MAX_ORIG_PIXELS, PRECISIONS, VERSION, CodeFile, CodeFileError,
                                 FingerprintMismatch, QuantizeError, check_name, from_bytes, load, quantize, save,
                                 to_bytes)
from vaekit.codes.jobs import (DecodeReport, EncodeReport, check_model, decode_file, encode_folder, encode_images,
                               original_size, png_names, restore_size)
from vaekit.codes.walk import (MAX_GRID_IMAGES, MAX_GRID_PIXELS, LatentMap, check_grid, check_grid_output, interpolate,
                               latent_map, project, write_grid)

__all__ = [
    "FORMAT", "MAX_GRID_IMAGES", "MAX_GRID_PIXELS", "MAX_ORIG_PIXELS", "PRECISIONS", "VERSION", "CodeFile", "CodeFileError", "DecodeReport", "EncodeReport",
    "FingerprintMismatch", "LatentMap", "QuantizeError", "check_grid", "check_grid_output", "check_model", "check_name", "decode_file", "encode_folder",
    "encode_images", "from_bytes", "interpolate", "latent_map", "load", "original_size", "png_names", "project",
    "quantize", "restore_size", "save", "to_bytes", "write_grid",
]
