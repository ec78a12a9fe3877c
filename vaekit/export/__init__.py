"""Export a trained run to ONNX for torch-free CPU inference, and prove it matches torch.

`export(run_dir, "parts.onnx")` writes three (a surface model: four) self-contained ONNX models (weights inside,
no `.onnx.data` side file), each with a dynamic batch dimension:

    parts.onnx          scorer   x (B,C,H,W) in [0,1], eps (B,D) -> recon (B,), kl (B,),
                                 pixel_map (B,H,W), mu (B,D), logvar (B,D)
    parts.encoder.onnx  encoder  x (B,C,H,W) in [0,1] -> mu (B,D), logvar (B,D)
    parts.decoder.onnx  decoder  z (B,D) -> image (B,C,H,W) in [0,1], params (B,C,H,W)
    parts.reader.onnx   reader   x (B,C,H,W) in [0,1], any H, W -> logits (B,H,W)
                                 (a surface model's defect reader, traced on its own)

Three files, not one: ONNX holds one graph per model, and onnxruntime runs every node of a
graph whatever outputs are asked for (checked with its profiler), so one combined graph
would make `encode` pay for a decoder pass (or, fed empty batches, cost ~30% at batch 1).
`parts.onnx` is the file to name (`vaekit.load`, the CLI); the other two are found next to
it, and a machine that only scores needs only it. Every file carries the same vaekit
metadata (metadata_props), so a mixed-up set is caught at load. The scores themselves
(neg_elbo, excess, ...) are computed from the scorer's outputs by the shared numpy code in
vaekit.inference.engine, exactly as for the torch engine.

The exporter's pitfalls, each handled on purpose: torch >= 2.9 exports with dynamo (needs
onnxscript); external_data=False keeps the weights inside the file; a dynamic batch needs
dynamic_shapes with torch.export.Dim (sample batch 2 and 3, so the exporter cannot
specialise 1); the wrapper is put in eval(); one trace of one module covers all three graphs
(dynamo tracing is the slow part), split with onnx.utils.Extractor; layers that
onnxruntime runs slowly are traced in an equivalent faster form (vaekit/export/rewrite.py),
which the parity check then holds to torch like everything else; opset 20 is pinned (the
default of torch 2.13's exporter, so no version conversion; the files need onnxruntime >=
1.18 for their IR version 10); the exporter's chatter (stdout, logging, warnings) is silenced
because a library never prints.

Before anything is written where the user asked, both engines run on sample images and
every output is compared; above tolerance the export fails and leaves nothing behind.

The package, one idea per file: graphs (the trace), rewrite (faster equivalent layers),
metadata (what each file carries, and its seal), parity, quantize, and job (the whole export).
"""

from vaekit.export.graphs import IO, OPSET, ROLES  # noqa: F401
from vaekit.export.job import ExportReport, export  # noqa: F401
from vaekit.export.parity import ExportError, Parity, check_parity, sample_inputs  # noqa: F401
from vaekit.export.quantize import QUANTIZE, Quantization  # noqa: F401
