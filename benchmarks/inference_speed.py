"""CPU inference speed: torch eager vs onnxruntime, same model, same thread count, one run.

    python benchmarks/inference_speed.py                      # a 64x64 default-size model
    python benchmarks/inference_speed.py --run runs/parts     # your own trained run

Both engines are timed through the public API (`model.encode(x)`, `model.score(x)`), so the
numbers are what a user gets, numpy conversion included. The two engines' repeats are
interleaved, so a noisy neighbour on a shared machine slows both alike. Without --run, the
model has random weights (speed does not depend on their values) and default architecture.
Prints median latency, images/s and the onnxruntime/torch speed-up per thread count, op and
batch, three ways: the ratio of the medians; "paired", the median ratio of back-to-back calls;
"fastest", the ratio of the fastest calls (what an idle machine approaches). "fp32"/"int8"
name the ONNX model timed against torch in that row.

Then the roofline: the multiply-accumulates (MACs) each op does per image, the rate each
engine reaches, onnxruntime's own fp32 GEMM peak on this machine (a 512x512 MatMul, same
threads, measured in this run), and the "ceiling": the speed-up over torch of an engine that
ran every MAC at that peak with no overhead at all. No fp32 engine can beat the ceiling on
this machine; where a target is above it, only fewer or cheaper operations (int8) reach it.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np


def random_run(out: Path, image_size: int, channels: int, latent_dim: int, base_channels: int) -> Path:
    """A run directory holding an untrained ConvVAE (enough to time it)."""
    import torch

    from vaekit.training import rundir
    from vaekit.config import ModelConfig
    from vaekit.model.vae import ConvVAE

    torch.manual_seed(0)
    # settings `vaekit train` would decide for an aligned photo-like folder (a run stores no "auto")
    cfg = ModelConfig(image_size=image_size, channels=channels, latent_dim=latent_dim, base_channels=base_channels,
                      layout="vector", likelihood="gaussian")
    net = ConvVAE(cfg).eval()
    rundir.save_tensors(out / rundir.WEIGHTS, net.state_dict())
    rundir.write_config(out, {"model": asdict(cfg), "fingerprint": rundir.fingerprint(net.state_dict()), "anomaly": {}})
    return out


def macs_per_image(net, channels: int, image_size: int, latent_dim: int) -> dict[str, int]:
    """Multiply-accumulates of one image through the encoder and the decoder (convs, linears)."""
    import torch
    from torch import nn

    counts = {"n": 0}

    def hook(mod, inp, out):
        if isinstance(mod, nn.ConvTranspose2d):  # every input pixel feeds a k x k x C_out patch
            k = mod.kernel_size[0] * mod.kernel_size[1]
            counts["n"] += inp[0].numel() * mod.out_channels // mod.groups * k
        elif isinstance(mod, nn.Conv2d):  # every output value sums a k x k x C_in / groups patch
            k = mod.kernel_size[0] * mod.kernel_size[1]
            counts["n"] += out.numel() * mod.in_channels // mod.groups * k
        elif isinstance(mod, nn.Linear):
            counts["n"] += out.numel() * mod.in_features

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    try:
        with torch.no_grad():
            net.encode(torch.zeros(1, channels, image_size, image_size))
            enc = counts["n"]
            net.decode(torch.zeros(1, latent_dim))
            dec = counts["n"] - enc
    finally:
        for h in handles:
            h.remove()
    return {"encode": enc, "decode": dec, "score": enc + dec}


def gemm_peak(threads: int, n: int = 512, repeats: int = 30) -> float:
    """onnxruntime's fp32 MatMul rate on this machine, MACs per second (the best of `repeats`)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "gemm",
                              [helper.make_tensor_value_info(k, TensorProto.FLOAT, [n, n]) for k in "ab"],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {k: rng.random((n, n), dtype=np.float32) for k in "ab"}
    best = min(time_interleaved({"gemm": lambda: sess.run(None, feeds)}, repeats, warmup=3)["gemm"])
    return n ** 3 / best


def time_interleaved(fns: dict, repeats: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per call for each function, one call of each in turn, `repeats` rounds."""
    for _ in range(warmup):
        for f in fns.values():
            f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return times


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, help="trained run directory (default: a random-weight model)")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--latent-dim", type=int, default=32)
    ap.add_argument("--base-channels", type=int, default=32)
    ap.add_argument("--threads", type=int, nargs="+", default=[1], help="thread counts to compare at, e.g. 1 2")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--ops", nargs="+", default=["encode", "score"], choices=["encode", "score", "decode"])
    ap.add_argument("--quantize", choices=["int8"], help="also time an int8 export")
    ap.add_argument("--repeats", type=int, default=0, help="timed calls per case (default: 200 at batch 1, 20 above)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="vaekit-inference-speed-") as tmp:
        run_benchmark(args, Path(tmp))


def run_benchmark(args, tmp: Path) -> None:
    import onnxruntime as ort
    import torch

    from vaekit.inference.engine_onnx import OnnxModel, graph_session, part_paths
    from vaekit.inference.engine_torch import TorchModel
    from vaekit.export import export

    torch.set_num_threads(max(args.threads))
    run = args.run or random_run(tmp / "run", args.image_size, args.channels, args.latent_dim, args.base_channels)
    files = {"fp32": export(run, tmp / "model.onnx").files["scorer"]}
    if args.quantize:
        files["int8"] = export(run, tmp / "model-int8.onnx", quantize=args.quantize).files["scorer"]

    ref = TorchModel(run)
    info = ref.info
    print(f"model: {info.channels}x{info.image_size}x{info.image_size}, latent {info.latent_dim}, "
          f"{sum(p.numel() for p in ref.net.parameters()) / 1e6:.2f} M parameters, likelihood {info.likelihood}")
    print(f"torch {torch.__version__}, onnxruntime {ort.__version__}, python {platform.python_version()}, "
          f"{platform.machine()} with {os.cpu_count()} CPUs ({platform.processor() or platform.platform()})")
    header = (f"{'threads':>7} {'op':>6} {'batch':>5} {'engine':>9} {'torch ms':>9} {'ort ms':>8} {'torch img/s':>11} "
              f"{'ort img/s':>9} {'speed-up':>8} {'paired':>7} {'fastest':>7}")
    print(header)
    print("-" * len(header))
    rng = np.random.default_rng(0)
    roof = []  # (threads, op, batch, torch s, ort s, graph s) of the fp32 rows, fastest calls
    roles = {"score": "scorer", "encode": "encoder", "decode": "decoder"}
    for threads in args.threads:
        torch.set_num_threads(threads)
        models = {name: OnnxModel(path, threads=threads) for name, path in files.items()}
        graphs = {op: graph_session(part_paths(files["fp32"])[role].read_bytes(), role, threads)
                  for op, role in roles.items()}
        for op in args.ops:
            for batch in args.batches:
                x = rng.integers(0, 256, (batch, info.channels, info.image_size, info.image_size), dtype=np.uint8)
                z = rng.standard_normal((batch, info.latent_dim), dtype=np.float32)
                call = {"encode": lambda m: (lambda: m.encode(x)), "score": lambda m: (lambda: m.score(x)),
                        "decode": lambda m: (lambda: m.decode(z))}[op]
                fns = {"torch": call(ref), **{name: call(m) for name, m in models.items()}}
                # the fp32 graph alone, on the float inputs the engine would hand it
                feeds = {"score": {"x": x.astype(np.float32) / 255, "eps": np.zeros_like(z)},
                         "encode": {"x": x.astype(np.float32) / 255}, "decode": {"z": z}}[op]
                fns["graph"] = lambda g=graphs[op], f=feeds: g.run(None, f)
                repeats = args.repeats or (200 if batch == 1 else 20)
                times = time_interleaved(fns, repeats, warmup=max(3, repeats // 10))
                med = {k: statistics.median(v) for k, v in times.items()}
                for name in models:
                    # paired: the median of torch/ort over the rounds, each pair timed back to back,
                    # so a burst of load from another process touches both sides of a ratio alike
                    paired = statistics.median(a / b for a, b in zip(times["torch"], times[name]))
                    fastest = min(times["torch"]) / min(times[name])
                    print(f"{threads:>7} {op:>6} {batch:>5} {name:>9} {med['torch'] * 1e3:9.3f} {med[name] * 1e3:8.3f} "
                          f"{batch / med['torch']:11.0f} {batch / med[name]:9.0f} {med['torch'] / med[name]:7.2f}x "
                          f"{paired:6.2f}x {fastest:6.2f}x")
                sys.stdout.flush()
                roof.append((threads, op, batch, min(times["torch"]), min(times["fp32"]), min(times["graph"])))
    print_roofline(roof, macs_per_image(ref.net, info.channels, info.image_size, info.latent_dim))


def print_roofline(rows, macs: dict[str, int]) -> None:
    print()
    print("roofline: " + ", ".join(f"{op} {macs[op] / 1e6:.1f} M MAC/image" for op in ("encode", "decode", "score")))
    peaks = {t: gemm_peak(t) for t in sorted({r[0] for r in rows})}
    for t, peak in peaks.items():
        print(f"onnxruntime fp32 GEMM peak, {t} thread{'s' if t > 1 else ''}: {peak / 1e9:.1f} GMAC/s (512x512 MatMul, fastest of 30)")
    header = (f"{'threads':>7} {'op':>6} {'batch':>5} {'torch GMAC/s':>12} {'ort GMAC/s':>10} {'ort % peak':>10} "
              f"{'graph GMAC/s':>12} {'graph % peak':>12} {'speed-up':>8} {'ceiling':>7}")
    print(header)
    print("-" * len(header))
    for threads, op, batch, t_torch, t_ort, t_graph in rows:
        work = macs[op] * batch
        at_peak = work / peaks[threads]
        print(f"{threads:>7} {op:>6} {batch:>5} {work / t_torch / 1e9:12.1f} {work / t_ort / 1e9:10.1f} "
              f"{100 * at_peak / t_ort:9.0f}% {work / t_graph / 1e9:12.1f} {100 * at_peak / t_graph:11.0f}% "
              f"{t_torch / t_ort:7.2f}x {t_torch / at_peak:6.2f}x")
    print("(fastest calls; ort: through vaekit's API, numpy work included; graph: the fp32 ONNX graph alone;\n"
          " ceiling = torch's time / the time of every MAC at the GEMM peak)")


if __name__ == "__main__":
    main()
