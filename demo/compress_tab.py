"""The Compress tab: uploads coded as fixed-length code files (q8/f16/f32, decodable here), and
each upload as an entropy-coded .vkc at a chosen quality beside the WebP file of the same size."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import numpy as np

from vaekit.codec import QUALITIES
from vaekit.images.quality import SSIM_MISSING
from vaekit_demo import handlers
from vaekit_demo.context import DECODING, Context, skipped_note, warn_skipped
from vaekit_demo.security import html_text, md_code


def layout(ctx: Context) -> SimpleNamespace:
    with gr.Row():
        with gr.Column():
            comp_files = gr.File(label="Images", file_count="multiple", file_types=["image"], elem_id="compress-files")
            precision = gr.Radio(["q8", "f16", "f32"], value="q8", label="Code precision",
                                 info="q8: one byte per latent dimension")
            comp_btn = gr.Button("Compress", variant="primary", elem_id="compress-btn")
        with gr.Column():
            comp_summary = gr.Markdown(elem_id="compress-summary")
            code_out = gr.File(label="Code file (download)", elem_id="code-out", height=90)
    comp_gallery = gr.Gallery(label="Input | reconstruction from the code", format="png", columns=6,
                              height=300, preview=False, object_fit="contain",
                              elem_classes=["vk-pixels"], elem_id="compress-gallery")
    comp_table = gr.Dataframe(headers=["file", "PSNR (dB)", "SSIM"], label="Quality", interactive=False)
    gr.Markdown("### Entropy-coded (.vkc) beside WebP at the same size\n"
                "Each image becomes its own .vkc file, header included, as `vaekit encode --quality` writes it; "
                "WebP codes the same image at the quality whose file is closest in size.")
    with gr.Row():
        vkc_quality = gr.Slider(QUALITIES[0], QUALITIES[-1], value=6, step=1, elem_id="vkc-quality",
                                label=f"Quality ({QUALITIES[0]}: smallest files, {QUALITIES[-1]}: best)")
        vkc_btn = gr.Button("Encode .vkc", variant="primary", elem_id="vkc-btn")
    with gr.Row():
        vkc_summary = gr.Markdown(elem_id="vkc-summary")
        vkc_files = gr.File(label=".vkc files (download)", file_count="multiple", elem_id="vkc-out", height=90)
    vkc_gallery = gr.Gallery(label="Input | decoded .vkc | WebP of the same size", format="png", columns=4,
                             height=300, preview=False, object_fit="contain",
                             elem_classes=["vk-pixels"], elem_id="vkc-gallery")
    vkc_table = gr.Dataframe(headers=handlers.VKC_COLUMNS, label=".vkc and WebP", interactive=False,
                             elem_id="vkc-table")
    gr.Markdown("### Decode a code file")
    with gr.Row():
        code_in = gr.File(label="Code file", elem_id="code-in", height=90)
        decode_btn = gr.Button("Decode", elem_id="decode-btn")
    decoded = gr.Gallery(label="Decoded images", format="png", columns=8, height=260, preview=False,
                         elem_classes=["vk-pixels"], elem_id="decoded")
    return SimpleNamespace(comp_files=comp_files, precision=precision, comp_btn=comp_btn, comp_summary=comp_summary,
                           code_out=code_out, comp_gallery=comp_gallery, comp_table=comp_table, code_in=code_in,
                           decode_btn=decode_btn, decoded=decoded, vkc_quality=vkc_quality, vkc_btn=vkc_btn,
                           vkc_summary=vkc_summary, vkc_files=vkc_files, vkc_gallery=vkc_gallery, vkc_table=vkc_table)


def wire(w: SimpleNamespace, ctx: Context) -> None:
    @ctx.guard
    def compress(files, prec, request: gr.Request = None):
        with ctx.outputs(request, "compress") as out:
            r = handlers.compress(ctx.session(request).model, files, out, prec)
            code_file = ctx.served(w.code_out, r.report.path)
        e = r.report
        summary = (f"**{e.count} image(s)** → code file of **{e.file_bytes} bytes** ({e.bytes_per_image:.1f} "
                   f"bytes/image, **{e.bits_per_pixel:.3f} bpp** at {e.image_size}×{e.image_size}; "
                   f"the uploads were {e.source_bytes} bytes: {e.against_sources}). Mean PSNR {_mean_db(r.psnr)}, "
                   f"SSIM {r.ssim.mean():.3f}.") + skipped_note(e.skipped, "compressed")
        warn_skipped(e.skipped)
        table = [[n, _db(float(p)), round(float(s), 4)] for n, p, s in zip(r.names, r.psnr, r.ssim)]
        gallery = [(handlers.hwc(x), n) for x, n in zip(r.pairs, r.names)]
        return gallery, summary, code_file, table

    @ctx.guard
    def decompress(code_file, request: gr.Request = None):
        names, x = handlers.decompress(ctx.session(request).model, code_file)
        if not names:  # a valid file of no images: the gallery stayed empty without a word
            gr.Warning(html_text(f"code file {Path(code_file).name} holds no images: nothing to decode"))
        return [(handlers.hwc(img), n) for img, n in zip(x, names)]

    @ctx.guard
    def encode_vkc(files, level, request: gr.Request = None):
        with ctx.outputs(request, "vkc") as out:
            shown, skipped = handlers.encode_vkc(ctx.session(request).model, files, out, level)
            vkc = [ctx.served(w.vkc_files, v.file) for v in shown]
        warn_skipped(skipped)
        gallery = [(handlers.hwc(v.shown), f"{v.name}: .vkc {v.bytes} B | WebP {v.webp.bytes} B") for v in shown]
        return gallery, _vkc_summary(shown, int(level)) + skipped_note(skipped, "encoded"), vkc, [_vkc_row(v) for v in shown]

    w.comp_btn.click(compress, [w.comp_files, w.precision], [w.comp_gallery, w.comp_summary, w.code_out, w.comp_table],
                     api_name="compress", **DECODING)
    w.decode_btn.click(decompress, w.code_in, w.decoded, api_name="decompress", **DECODING)
    w.vkc_btn.click(encode_vkc, [w.comp_files, w.vkc_quality], [w.vkc_gallery, w.vkc_summary, w.vkc_files, w.vkc_table],
                    api_name="encode_vkc", **DECODING)


def _db(v: float) -> float | str:
    return round(v, 2) if math.isfinite(v) else "exact"


def _mean_db(psnr) -> str:
    """Mean PSNR of the images not reconstructed exactly (an exact one's is infinite: the table showed
    a blank cell, the summary "inf dB"), and how many were exact."""
    exact = int(np.sum(~np.isfinite(psnr)))
    if exact == len(psnr):
        return "exact (every image)"
    return f"{np.mean(psnr[np.isfinite(psnr)]):.2f} dB" + (f" ({exact} exact)" if exact else "")


def _shown_db(v: float) -> str:
    return f"{v:.2f} dB" if math.isfinite(v) else "exact"


def _gain(v: handlers.VkcImage) -> str:
    """The .vkc's PSNR against WebP's, with the two files' sizes beside it where they differ by
    more than a tenth: outside WebP's range its closest file is no file of the same size."""
    ratio = v.bytes / v.webp.bytes if v.webp.bytes else math.inf
    sizes = "" if abs(ratio - 1) <= 0.1 else f", the .vkc {ratio:.2f}× WebP's bytes"
    if math.isfinite(v.psnr) and math.isfinite(v.webp.psnr):
        return f"{v.psnr - v.webp.psnr:+.2f} dB for the .vkc{sizes}"
    return "both exact" if v.psnr == v.webp.psnr else (".vkc exact" if not math.isfinite(v.psnr) else "WebP exact")


def _vkc_row(v: handlers.VkcImage) -> list:
    """One row of the table, in handlers.VKC_COLUMNS order (SSIM blank without scikit-image)."""
    ssim = [round(s, 4) if s is not None else "" for s in (v.ssim, v.webp_ssim)]
    return [v.name, v.bytes, round(v.bits_per_pixel, 3), _db(v.psnr), ssim[0], v.webp.quality, v.webp.bytes,
            _db(v.webp.psnr), ssim[1]]


def _vkc_summary(shown: list, level: int) -> str:
    lines = [f"**Quality {level}**: {len(shown)} image(s), each its own .vkc beside WebP's closest file"
             + ("" if shown[0].ssim is not None else f" ({SSIM_MISSING})")]
    for v in shown[:10]:
        ssim = f", SSIM {v.ssim:.3f}" if v.ssim is not None else ""
        lines.append(f"- {md_code(v.name)}: .vkc **{v.bytes} bytes** ({v.bits_per_pixel:.2f} bits/px), PSNR "
                     f"**{_shown_db(v.psnr)}**{ssim} · WebP quality {v.webp.quality}: {v.webp.bytes} bytes, "
                     f"{_shown_db(v.webp.psnr)} ({_gain(v)})")
    return "\n".join(lines)
