"""Image I/O for vaekit: find image files, decode them to uint8 arrays, resize, render.

Numpy and Pillow only, never torch. One file per step, read in this order:
`find` (which files), `read` (one file -> uint8 (C, size, size), the preprocessing both
engines share), `load` (many files, in worker processes), `render` (PNGs, grids, heat maps).
"""

from vaekit.images.find import IMAGE_SUFFIXES, LinkOutside, NoImagesError, find_images, none_usable, scan_roots
from vaekit.images.load import LoadReport, iter_load, load_images
from vaekit.images.header import exif_orientation, shown_size
from vaekit.images.read import (FORMATS, MAX_RESIZE_PIXELS, ImageReadError, decode, file_shown_size, gray_mode,
                                load_image, not_exact, open_image, resize, resize_pixels, resolve_channels, to_float, to_uint8)
from vaekit.images.render import heatmap_overlay, make_grid, save_png

__all__ = [
    "FORMATS", "IMAGE_SUFFIXES", "MAX_RESIZE_PIXELS", "ImageReadError", "LinkOutside", "LoadReport", "NoImagesError", "decode",
    "exif_orientation", "file_shown_size", "find_images", "gray_mode", "heatmap_overlay", "iter_load", "load_image", "load_images",
    "make_grid", "none_usable", "not_exact", "open_image", "resize", "resize_pixels", "resolve_channels", "save_png",
    "scan_roots", "shown_size", "to_float", "to_uint8",
]
