"""Hard-negative mining for the defect reader, against its default training: an experiment.

    python benchmarks/reader_hard.py --seed 0 --sets brick,gravel,brick-large,gravel-large --out hard0.json

A reader's false alarms on normal surface (gravel's dark gaps, grass blades) cost image AUROC
more than missed defects do. Variant "hard" (online hard-example mining, Shrivastava et al.
2016): from half-way through each member's training, every 75 steps, 512 random crops of the
training images are read by the net being trained and the 64 it scores highest (the normal
crops it finds most defect-like) kept; half of every later batch is drawn from them (with or
without a synthetic defect, as any crop). Everything else is vaekit's `_train_one` as it is.
"base" is `train_reader(crops, None, ReaderConfig(), seed)` unchanged.

A set NAME reads benchmarks/textures.py's crops (WORK/data/NAME, WORK/data_alt/NAME from
`textures.py --generator alt`): image and pixel AUROC on both generators and image AUROC per alt
kind. NAME-large builds benchmarks/reader_large.py's few large images (40 of 256 px; 30 normal
+ 30 with a defect of at most 1%). One thread; results are written after every reader, and a
reader already in --out is not trained again. docs/detection.md has what it measured.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reader_large  # noqa: E402
from reader_alt import test_set  # noqa: E402
from reader_textures import auroc, read_folder  # noqa: E402

HARD_FROM, POOL, KEEP, REFRESH, HARD_SHARE = 0.5, 512, 64, 75, 0.5


def pool_scores(net, x: np.ndarray) -> np.ndarray:
    """The net's image scores of uint8 crops x, read in eval mode, then back to training."""
    import torch

    from vaekit.reader.score import image_scores

    net.eval()
    with torch.inference_mode():
        logits = torch.cat([net(torch.from_numpy(x[i:i + 64].astype(np.float32) / 255)
                                .contiguous(memory_format=torch.channels_last)) for i in range(0, len(x), 64)])
    net.train()
    return image_scores(logits.numpy(), 3)


def train_one_hard(crops, features, cfg, seed: int, progress, should_stop):
    """vaekit.reader.train._train_one with hard-negative mining (the module docstring)."""
    import torch

    from vaekit.reader import train as T
    from vaekit.reader.net import ReaderNet

    rng, hard_rng = np.random.default_rng(seed), np.random.default_rng([seed, 99])
    torch.manual_seed(seed)
    size = min(cfg.crop, *crops.shape[2:])
    net = ReaderNet(crops.shape[1], cfg)
    T._normalise(net, crops, None, size, rng)
    net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    n_bad, warm, start = max(1, round(cfg.batch * (1 - cfg.clean_fraction))), max(1, cfg.steps // 20), int(HARD_FROM * cfg.steps)
    hard = None
    net.train()
    for step in range(cfg.steps):
        for g in opt.param_groups:
            g["lr"] = cfg.lr * min(1.0, (step + 1) / warm) * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
        if step >= start and (step - start) % REFRESH == 0:
            pool = T._crops(crops, hard_rng.integers(0, len(crops), POOL), size, hard_rng)
            hard = pool[np.argsort(pool_scores(net, pool))[-KEEP:]]
        x = T._crops(crops, rng.integers(0, len(crops), cfg.batch), size, rng)
        if hard is not None:
            k = round(cfg.batch * HARD_SHARE)
            x[:k] = hard[hard_rng.integers(0, len(hard), k)]
            x = x[hard_rng.permutation(len(x))]
        bad, masks = T.make_defects(x[:n_bad], rng, shapes=cfg.shapes)
        x = np.concatenate([bad, x[n_bad:]])
        target = torch.from_numpy(np.concatenate([masks, np.zeros((len(x) - n_bad, size, size), np.float32)]))
        loss = T.focal_loss(net(T._inputs(x, None).contiguous(memory_format=torch.channels_last)), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return net.to(memory_format=torch.contiguous_format).eval()


def train_and_read(arm: str, train_x: np.ndarray, x: np.ndarray, seed: int):
    """(image scores, maps, training seconds) of a reader of `arm` trained on train_x, reading x."""
    from vaekit.reader import train as T
    from vaekit.reader.net import ReaderConfig

    saved = T._train_one
    if arm == "hard":
        T._train_one = train_one_hard
    try:
        t0 = time.perf_counter()
        state = T.train_reader(train_x, None, ReaderConfig(), seed)
        seconds = time.perf_counter() - t0
    finally:
        T._train_one = saved
    scores, maps = T.read(T.load_reader(state), x)
    return scores, maps, seconds


def one_set(name: str, arm: str, seed: int, work: Path) -> dict:
    if name.endswith("-large"):
        d = reader_large.build(name[:-len("-large")])
        s, m, sec = train_and_read(arm, d["train"], d["test"], seed)
        return {"large": [auroc(d["labels"], s), auroc(d["masks"].ravel(), m.ravel())], "sec": sec}
    from PIL import Image

    c = 3 if Image.open(next((work / "data" / name / "train").glob("*.png"))).mode == "RGB" else 1
    _, train_x = read_folder(work / "data" / name / "train", c)
    gens = {g: test_set(work / folder / name, c) for g, folder in (("bench", "data"), ("alt", "data_alt"))}
    s, m, sec = train_and_read(arm, train_x, np.concatenate([gens["bench"][0], gens["alt"][0]]), seed)
    out, n = {"sec": sec}, len(gens["bench"][0])
    for g, part in (("bench", slice(0, n)), ("alt", slice(n, None))):
        _, kinds, gt = gens[g]
        y = kinds != "normal"
        out[g] = [auroc(y, s[part]), auroc(gt, m[part].ravel())]
        out[g + "_kinds"] = {k: auroc(y[(kinds == k) | ~y], s[part][(kinds == k) | ~y]) for k in sorted(set(kinds[y]))}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=Path("bench_textures"), help="a benchmarks/textures.py work folder")
    ap.add_argument("--sets", default="brick,gravel,brick-large,gravel-large")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("reader_hard.json"))
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    res = json.loads(args.out.read_text()) if args.out.exists() else {}
    for name in args.sets.split(","):
        for arm in ("base", "hard"):
            key = f"{name}/{arm}/{args.seed}"
            if key not in res:
                res[key] = one_set(name, arm, args.seed, args.work)
                args.out.write_text(json.dumps(res, indent=1))
            print(key, {k: v for k, v in res[key].items() if "kinds" not in k}, flush=True)


if __name__ == "__main__":
    main()
