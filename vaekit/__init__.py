"""vaekit: convolutional variational autoencoders for your own images.

Train on a folder, compress images into latent codes, score anomalies by negative ELBO,
and export to ONNX for torch-free CPU inference. Heavy modules (torch) are imported only
by the functions that need them, so `import vaekit` stays cheap.
"""

from vaekit.version import __version__  # noqa: F401


DEVICES = ("auto", "cpu", "cuda")
MAX_THREADS = 1024  # CPU threads a model may ask for (onnxruntime builds a pool of that many at once)


def load(path, device: str = "auto", threads: int | None = None):
    """Open a trained model: a run directory (torch engine) or an exported .onnx (onnxruntime).

    device: "auto" uses CUDA when it is there (torch: a CUDA build and a GPU; onnxruntime: the
    onnxruntime-gpu package and a GPU), else the CPU; "cuda" insists. threads: CPU threads for
    onnxruntime's sessions; for torch, whose thread pool is per process, it is set only when
    given. None: VAEKIT_THREADS if set (the CLI's --threads sets it), else the libraries'
    defaults and the process left as it is.
    """
    import errno
    import os
    from pathlib import Path

    from vaekit.errors import BadInput, NotFound

    if threads is None and os.environ.get("VAEKIT_THREADS"):  # the one place the variable is read
        try:
            threads = int(os.environ["VAEKIT_THREADS"])
        except ValueError:
            raise BadInput(f"VAEKIT_THREADS must be an integer, got {os.environ['VAEKIT_THREADS']!r}") from None

    if device not in DEVICES:
        raise BadInput(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or not 0 <= threads <= MAX_THREADS):
        raise BadInput(f"threads must be an integer from 0 to {MAX_THREADS}, got {threads!r}")
    if not isinstance(path, (str, os.PathLike)) or isinstance(path, bytes) or not str(path):
        raise BadInput(f"a model is a run directory or an .onnx file's path, got {path!r:.80}")
    path = Path(path)
    try:
        path.stat()
    except OSError as e:
        if e.errno == errno.ENAMETOOLONG:
            raise BadInput(f"no such model: the path is too long ({len(str(path))} characters)") from None
    except ValueError:  # a NUL in the path
        raise BadInput(f"no such model: {str(path)!r:.80} is not a path") from None
    if path.is_dir():
        from vaekit.inference.engine_torch import TorchModel
        from vaekit.training.runlock import refuse_in_use

        refuse_in_use(path)

        return TorchModel(path, device=device, threads=threads)
    if path.is_file():  # stat follows links: a FIFO or device is neither, and is never opened
        from vaekit.inference.engine_onnx import OnnxModel

        return OnnxModel(path, threads=threads, device=device)
    if path.exists():
        raise BadInput(f"{path} is neither a run directory nor a regular .onnx file")
    raise NotFound(f"no such model: {path} (give a run directory or an exported .onnx file)")
