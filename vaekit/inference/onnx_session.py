"""onnxruntime sessions of vaekit's exported graphs: which execution providers, which settings
(chosen by measurement), and a session built from a file's bytes that reads no external data.
onnxruntime only, imported when a session is made: vaekit.inference.engine_onnx checks what
the graph is."""

from __future__ import annotations

from vaekit.errors import BadInput


def providers(device: str = "auto") -> list[str]:
    """onnxruntime execution providers for a device: CUDA first when onnxruntime-gpu is
    installed and asked for ("auto" or "cuda"), the CPU always as the fallback."""
    import onnxruntime as ort

    have = ort.get_available_providers()
    if device in ("auto", "cuda") and "CUDAExecutionProvider" in have:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "cuda":
        raise BadInput("--device cuda needs the onnxruntime-gpu package (onnxruntime has no CUDA provider here)")
    return ["CPUExecutionProvider"]


# ops that the NCHWc layout (ORT_ENABLE_ALL) has no kernel for, so it wraps each in layout reorders:
# a graph holding one keeps ORT_ENABLE_EXTENDED (arch v1's ConvTranspose decoders; int8 QDQ graphs)
NCHWC_SLOW_OPS = (b"ConvTranspose", b"QuantizeLinear")


def session_options(role: str = "scorer", threads: int | None = None, nchwc: bool | None = None):
    """onnxruntime settings, chosen by measurement (benchmarks/inference_speed.py).

    What mattered: the graph optimisation level. ORT_ENABLE_ALL adds the NCHWc layout
    transform, whose convolution kernels ran arch v2's graphs (convolutions and nearest
    resizes only) 1.37-1.45x faster than ORT_ENABLE_EXTENDED (64 px vector and 128 px grid
    models, batch 1 and 64, one thread; docs/benchmarks.md). For arch v1's ConvTranspose
    decoders (no NCHWc kernel, so each one wrapped in layout reorders) it made the decoder
    ~1.1-1.2x and the scorer up to 1.7x slower, and for int8 graphs 0-15% slower, so a graph
    holding one of NCHWC_SLOW_OPS keeps EXTENDED (`nchwc=False`; None: by role, the encoder
    always NCHWc). A fixed thread count (`threads`, from --threads) and sequential execution
    (each graph is a single chain) do the rest.
    """
    import onnxruntime as ort

    threads = threads or 0
    so = ort.SessionOptions()
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if nchwc or role == "encoder"
                                   else ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = max(0, threads)  # 0: onnxruntime's default (one per physical core)
    so.inter_op_num_threads = 1
    # fatal only: its warnings about unused initialisers are noise to a user, and an error it logs (a foreign
    # file's external data, say) is raised as well, which vaekit turns into one line: logged, it made two
    so.log_severity_level = 4
    # worker threads that spin between ops steal the cores from whatever else runs (the same
    # collapse as torch's OpenMP spinning beside a busy process, docs/scaling.md): they sleep
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


def graph_session(data: bytes, role: str, threads: int | None = None, device: str = "cpu"):
    """An onnxruntime session of one exported graph (the file's bytes) with vaekit's settings: the
    NCHWc layout unless the graph holds one of NCHWC_SLOW_OPS (an op type is a plain string in
    the protobuf). No checks of what the graph is: `vaekit.load` makes those."""
    import tempfile

    import onnxruntime as ort

    nchwc = not any(op in data for op in NCHWC_SLOW_OPS)
    options = session_options(role, threads, nchwc)
    # A graph built from bytes reads its external data from the current folder: a forged .onnx could
    # read any file under it into its weights. vaekit never writes external data, so the folder it
    # may read from is an empty one, there only while the session is built (its weights are loaded then).
    with tempfile.TemporaryDirectory(prefix="vaekit-no-external-data-") as empty:
        options.add_session_config_entry("session.model_external_initializers_file_folder_path", empty)
        return ort.InferenceSession(data, options, providers=providers(device))
