"""What the codec commands print about a file: its quality, residual, pixel model and size."""

from __future__ import annotations

from vaekit.codes.jobs import against_sources


def psnr_text(psnr: float | None, exact: int, measured: int, size: int, channels: int) -> str:
    """What the lossy file gives back, as the decoder will (±1 level on the other engine)."""
    if psnr is None:
        return f"all {measured} images measured decode exactly at the model's {size}×{size}×{channels}"
    return (f"PSNR {psnr:.2f} dB, the mean over {measured - exact} of {measured} images as they decode at the model's "
            f"{size}×{size}×{channels}" + (f" ({exact} decode exactly)" if exact else ""))


RESIDUAL_TEXT = {None: "latents only", "pixels": "latents + residual per pixel",
                 "dct 8x8": "latents + residual in 8x8 DCT blocks", "dct 4x4": "latents + residual in 4x4 DCT blocks"}


def pixel_model_text(likelihood: str, kind: str, engine: str = "torch") -> str:
    """What codes a lossless archive's pixels, and the smaller archive a user can have."""
    if kind == "model":
        return "the model's own (discretised logistic): the archive costs about its -ELBO"
    kind, green = kind.removesuffix(" + subtract-green"), kind.endswith(" + subtract-green")
    how = "; colour coded as G, R - G, B - G, which measured smaller" if green else ""
    if kind == "learned":
        return (f"a small network fitted to these images (a {likelihood} model has no 8-bit levels), "
                f"chosen because it measured smaller than the context model{how} (docs/codec.md)")
    if engine == "onnxruntime":  # the exported model never trains the network (it would need torch)
        return (f"a context model fitted to these images (a {likelihood} model has no 8-bit levels){how}; the "
                "run directory instead of its export may fit a small network, smaller on 256 images or more, and "
                "a model trained with --likelihood logistic codes 9-10% smaller (docs/codec.md)")
    return (f"a context model fitted to these images (a {likelihood} model has no 8-bit levels){how}; a model "
            "trained with --likelihood logistic codes 9-10% smaller (docs/codec.md)")


def vs_sources(source_bytes: int, file_bytes: int, resized: bool = False, size: int = 0) -> str:
    """The sources' size and how much smaller (or larger) the written file is (`against_sources`).
    `resized`: some sources are not the model's `size`, so the file holds other pixels than they do,
    and the line says so (a folder of 1024 px photos coded at 64 px read "800× smaller")."""
    text = f"{source_bytes:,} bytes, {against_sources(source_bytes, file_bytes)}"
    return text + (f" (the file holds the images at the model's {size}×{size} px, not at the sources' sizes)" if resized else "")


def int8_note(model, coding: str) -> str | None:
    """What an int8 export's `coding` ("encodes", "decodes") does to lossy pixels, or None for a
    float model: its networks are quantised, so its latents and reconstructions are not the float
    model's within ±1 (up to 121 grey levels off on a 32 px RGB model, 27.4 -> 20.0 dB PSNR, measured
    2026-12-07; docs/codec.md), and the decode exited 0 saying nothing."""
    if model.config.get("quantization", "none") == "none":
        return None
    return (f"{model.info.source} is an int8 export: it {coding} lossy images with quantised networks, whose pixels "
            "may differ from the float model's by tens of grey levels (121 measured; docs/codec.md); use the run "
            "directory or a float export where the pixels matter")
