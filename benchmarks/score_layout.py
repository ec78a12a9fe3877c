"""Torch engine scoring on the CPU: the network as loaded (contiguous) against the channels-last
copy the engine scores with, same model, same images, one run.

    python benchmarks/score_layout.py --run runs/m [--run runs/other ...] [--batch 1 --batch 64] [--threads 1]

Times `model.elbo_parts(x)` (what anomaly-score and the calibration at the end of training call)
on random uint8 images of the model's size; a surface model's images are `--side` px (default:
its training size) when given. The two layouts alternate, so a noisy neighbour slows both alike.
Prints the median of `--repeats` calls per layout, the ratio, and the largest difference of the
recon and KL nats between the layouts (float rounding only).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch


def bench(run: str, batch: int, side: int | None, repeats: int) -> dict:
    import vaekit

    model = vaekit.load(run)
    s = side or model.info.image_size
    x = np.random.default_rng(0).integers(0, 256, (batch, model.info.channels, s, s), dtype=np.uint8)
    model._scoring_net()  # the engine's own choice, made once: a channels-last copy on the CPU
    arms = {"contiguous": (model.net, model.net), "channels-last": model._scorer}
    times, parts = {k: [] for k in arms}, {}
    for _ in range(repeats):
        for name, scorer in arms.items():
            model._scorer = scorer
            t = time.perf_counter()
            parts[name] = model.elbo_parts(x)
            times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    diff = max(float(np.max(np.abs(parts["contiguous"].recon - parts["channels-last"].recon))),
               float(np.max(np.abs(parts["contiguous"].kl - parts["channels-last"].kl))))
    return {"run": run, "side": s, "batch": batch, **med, "ratio": med["contiguous"] / med["channels-last"],
            "max_nats_diff": diff}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", action="append", required=True)
    ap.add_argument("--batch", type=int, action="append")
    ap.add_argument("--side", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"threads {args.threads}, median of {args.repeats} calls")
    for run in args.run:
        for batch in args.batch or [1, 64]:
            r = bench(run, batch, args.side, args.repeats)
            print(f"{r['run']}  {r['side']} px  batch {r['batch']:3d}: contiguous {r['contiguous'] * 1e3:8.1f} ms, "
                  f"channels-last {r['channels-last'] * 1e3:8.1f} ms, {r['ratio']:.2f}x; "
                  f"largest recon/KL difference {r['max_nats_diff']:.2g} nats")


if __name__ == "__main__":
    main()
