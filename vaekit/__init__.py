"""vaekit: convolutional variational autoencoders for your own images.

Train on a folder, compress images into latent codes, score anomalies by negative ELBO,
and export to ONNX for torch-free CPU inference. Heavy modules (torch) are imported only
by the functions that need them, so `import vaekit` stays cheap.
"""

__version__ = "0.1.0"


def load(path):
    """Open a trained model: a run directory (torch engine) or an exported .onnx (onnxruntime)."""
    from vaekit.engine import load as _load

    return _load(path)
