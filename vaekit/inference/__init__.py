"""Inference: a trained model behind one interface, whichever engine runs it.

- `engine`: the interface, `Model` (what `vaekit.load` returns) and its `Scores`; everything
  users call is written there once, in numpy, over four primitives each engine provides.
- `estimate`: the -ELBO estimators (z = mu, K posterior draws, IWAE) over those primitives.
- `engine_torch`, `engine_onnx`: the two engines (a run directory; an exported .onnx, no torch).
- `info`: what a model is (ModelInfo) and what its stored anomaly section says.
- `atypicality`: the -ELBO's parts and maps, and the atypicality score calibrated on normal images.
- `reconstruct`: `vaekit reconstruct`, streamed and resumable.
Nothing is imported here, so the onnxruntime path never imports torch.
"""
