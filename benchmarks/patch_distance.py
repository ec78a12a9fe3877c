"""A PatchCore-style nearest-patch distance on the VAE's own features, alone and fused with the reader.

    python benchmarks/patch_distance.py [--choose brick,gravel] [--confirm grass,ihc,moon,retina]
                                        [--work DIR] [--threads 1] [--bank 16384] [--json out.json]

Data and runs: benchmarks/reader_textures.py's (benchmarks/texture_data.py's crops: 1000 training
crops of 64 px, 120 normal and 120 defective test crops with masks, six defect kinds; moon and
retina join the confirm half), each texture trained by `vaekit train` at default settings (the
surface VAE and its three readers); with --work the data, runs and each texture's results
(WORK/patch_distance/NAME-bankB.json; --fresh measures again) are kept and reused.

Per texture, from the run's own splits of its training crops (vaekit.training.splits.plan_splits,
re-drawn from the run's stored settings): the memory bank is built from the crops the VAE and the
reader trained on; the calibration crops (trained on by neither) are the held-out normal images
that put every score on its own scale. Nearest-patch distance (Roth et al. 2022, "Towards total
recall", without pretrained weights: the features are the trained VAE's own), per latent cell
(one per 4 x 4 px):

  mu        the posterior mean mu at the cell
  mu_avg3   mu averaged over the cell's 3 x 3 neighbourhood (PatchCore's local aggregation)
  mu_cat3   mu of the 3 x 3 neighbourhood concatenated (9 x the channels)
  h_avg3    the encoder's last hidden activation (before the 1 x 1 conv to mu, logvar), 3 x 3 averaged

Each cell's score is the Euclidean distance from its feature to the nearest of `--bank` cells
drawn at random from the training crops' cells (seed 0); the pixel map is that distance upsampled
bilinearly to pixels and averaged over 5 x 5 px (as the reader's map is); the image score is the
largest cell distance ("max") or the largest 3 x 3 mean of cell distances ("mean3").

Fusion with the reader (the default `defect` score): each score, and each map, put on the scale of
its own calibration crops' image scores, (s - median) / (q0.9 - median), then either the larger of
the two ("max") or their sum ("sum"). No test label is used by any scale.

Every choice (feature, image score, fusion rule) is made on the choose half; the confirm half is
reported for the chosen ones as for the rest.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reader_textures as rt  # noqa: E402  (also patches texture_data.load_photo for moon and retina)
import texture_data  # noqa: E402

FEATURES = ("mu", "mu_avg3", "mu_cat3", "h_avg3")
POOLS = ("max", "mean3")
FUSIONS = ("max", "sum")
SMOOTH = 5  # px, the map's mean filter (the reader's map_smooth)


def run_splits(run: Path, root: Path) -> tuple[np.ndarray, np.ndarray]:
    """(training, calibration) indices into the sorted training files, as `vaekit train` drew them."""
    from vaekit.images.find import find_images
    from vaekit.training.splits import plan_splits

    t = json.loads((run / "config.json").read_text())["train"]
    n = len(find_images(root))
    s = plan_splits(n, t["val_fraction"], t["calibration_fraction"], t["seed"], t["folds"], t["threshold_quantile"],
                    one_fold=True)
    if s.crossfit:
        raise SystemExit(f"{run}: a cross-fitted run; this benchmark wants held-out splits")
    return s.train, (s.cal if len(s.cal) else s.val)


def vae_features(net, x: np.ndarray, batch: int = 128) -> dict[str, np.ndarray]:
    """Each FEATURES grid of uint8 images (N, C, H, W): name -> (N, D, H/4, W/4) float32."""
    import torch
    import torch.nn.functional as F

    enc = net.encoder
    out: dict[str, list] = {k: [] for k in FEATURES}
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            h = enc.convs(torch.from_numpy(x[i:i + batch].astype(np.float32) / 255))
            mu = enc.to_stats(h).chunk(2, dim=1)[0]
            avg = lambda t: F.avg_pool2d(t, 3, 1, 1, count_include_pad=False)  # noqa: E731
            out["mu"].append(mu)
            out["mu_avg3"].append(avg(mu))
            b, c, gh, gw = mu.shape
            cat = F.unfold(F.pad(mu, (1, 1, 1, 1), mode="replicate"), 3).view(b, c * 9, gh, gw)
            out["mu_cat3"].append(cat)
            out["h_avg3"].append(avg(h))
    return {k: torch.cat(v).numpy() for k, v in out.items()}


def nearest(bank: np.ndarray, q: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Distance from each row of q (M, D) to its nearest row of bank (B, D): (M,)."""
    import torch

    b = torch.from_numpy(bank)
    out = [torch.cdist(torch.from_numpy(q[i:i + chunk]), b).min(1).values for i in range(0, len(q), chunk)]
    return torch.cat(out).numpy()


def cells(f: np.ndarray) -> np.ndarray:
    """(N, D, h, w) -> (N * h * w, D)."""
    return np.ascontiguousarray(f.transpose(0, 2, 3, 1).reshape(-1, f.shape[1]))


def distance_scores(dist: np.ndarray, size: tuple[int, int]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Cell distances (N, h, w) -> ({pool: image scores (N,)}, pixel maps (N, H, W))."""
    import torch
    import torch.nn.functional as F

    from vaekit.reader.score import box_mean

    up = F.interpolate(torch.from_numpy(dist)[:, None], size=size, mode="bilinear", align_corners=False)[:, 0].numpy()
    scores = {"max": dist.reshape(len(dist), -1).max(1),
              "mean3": box_mean(dist, 3).reshape(len(dist), -1).max(1)}
    return scores, box_mean(up, SMOOTH).astype(np.float32)


def scaler(normal: np.ndarray):
    """(s - median) / (q0.9 - median) of held-out normal image scores."""
    med, q = np.median(normal), np.quantile(normal, 0.9)
    return lambda s: (s - med) / max(q - med, 1e-12)


def run_texture(name: str, work: Path, threads: int, bank_size: int) -> dict:
    import torch

    import vaekit as vk

    torch.set_num_threads(threads)
    root = work / "data" / name
    if not (root / "test" / "masks").is_dir():
        texture_data.build(name, work / "data")
    run = work / "runs" / name
    rt.train_vae(root / "train", run, threads)
    engine = vk.load(run, device="cpu")
    ch = engine.net.cfg.channels
    test = root / "test"
    _, train_x = rt.read_folder(root / "train", ch)
    _, normal = rt.read_folder(test / "normal", ch)
    bad_names, bad = rt.read_folder(test / "anomalous", ch)
    _, masks = rt.read_folder(test / "masks", 1)
    x = np.concatenate([normal, bad])
    kinds = np.array(["normal"] * len(normal) + [n.split("_")[0] for n in bad_names])
    gt = np.concatenate([np.zeros((len(normal), *masks.shape[2:]), bool), masks[:, 0] > 127]).ravel()
    tr_idx, cal_idx = run_splits(run, root / "train")

    out: dict = {"n_bank_crops": int(len(tr_idx)), "n_cal": int(len(cal_idx))}
    t0 = time.perf_counter()
    r_scores, r_maps = engine._read(x)  # the `defect` score and map, as anomaly-score gives them
    r_cal, _ = engine._read(train_x[cal_idx])
    out["reader_seconds"] = time.perf_counter() - t0
    stored = np.sort(np.asarray(engine.info.val_scores, dtype=np.float64))
    if len(stored) == len(cal_idx):  # the run's own held-out reader scores: the splits were re-drawn right
        out["cal_matches_run"] = bool(np.allclose(np.sort(r_cal), stored, atol=1e-4))
    out["reader"] = {**rt.by_kind(kinds, r_scores), "pixel": rt.auroc(gt, r_maps.ravel())}
    sr = scaler(r_cal)

    t0 = time.perf_counter()
    f_train = vae_features(engine.net, train_x[tr_idx])
    f_cal = vae_features(engine.net, train_x[cal_idx])
    f_test = vae_features(engine.net, x)
    rng = np.random.default_rng(0)
    size = x.shape[2:]
    for feat in FEATURES:
        pool_cells = cells(f_train[feat])
        bank = pool_cells[rng.choice(len(pool_cells), min(bank_size, len(pool_cells)), replace=False)]
        g = f_test[feat].shape[2:]
        d_test = nearest(bank, cells(f_test[feat])).reshape(len(x), *g)
        d_cal = nearest(bank, cells(f_cal[feat])).reshape(len(cal_idx), *g)
        s_test, m_test = distance_scores(d_test, size)
        s_cal, _ = distance_scores(d_cal, size)
        pix = rt.auroc(gt, m_test.ravel())
        for pool in POOLS:
            key = f"pd:{feat}:{pool}"
            out[key] = {**rt.by_kind(kinds, s_test[pool]), "pixel": pix}
            sp = scaler(s_cal[pool])
            for fusion in FUSIONS:
                comb = np.maximum if fusion == "max" else np.add
                fused = comb(sr(r_scores), sp(s_test[pool]))
                fmap = comb(sr(r_maps), sp(m_test))
                out[f"fused:{feat}:{pool}:{fusion}"] = {**rt.by_kind(kinds, fused), "pixel": rt.auroc(gt, fmap.ravel())}
    out["pd_seconds"] = time.perf_counter() - t0
    out["dims"] = {k: int(v.shape[1]) for k, v in f_test.items()}
    return out


def mean_over(results: dict, names: list[str], method: str, key: str) -> float:
    return float(np.mean([results[n][method][key] for n in names]))


def print_tables(results: dict, halves: dict[str, list[str]], chosen: list[str]) -> None:
    methods = ["reader"] + [k for k in next(iter(results.values())) if k.startswith(("pd:", "fused:"))]
    for half, names in halves.items():
        names = [n for n in names if n in results]
        if not names:
            continue
        print(f"\n{half} half ({', '.join(names)}): image / pixel AUROC")
        print(f"{'method':<26}" + "".join(f"{n:>15}" for n in names + ["mean"]))
        for m in methods:
            cells_ = "".join(f"{results[n][m]['image']:>8.4f} /{results[n][m]['pixel']:.3f}" for n in names)
            print(f"{m + (' *' if m in chosen else ''):<26}{cells_}{mean_over(results, names, m, 'image'):>8.4f} /"
                  f"{mean_over(results, names, m, 'pixel'):.3f}")
        kinds = [k for k in results[names[0]]["reader"] if k not in ("image", "pixel")]
        print(f"image AUROC by defect kind, mean over {', '.join(names)}")
        print(f"{'method':<26}" + "".join(f"{k:>9}" for k in kinds))
        for m in ["reader"] + chosen:
            print(f"{m:<26}" + "".join(f"{mean_over(results, names, m, k):>9.4f}" for k in kinds))


def choose(results: dict, names: list[str]) -> list[str]:
    """The best nearest-patch method and the best fused method by mean image AUROC on `names`."""
    keys = next(iter(results.values())).keys()
    best = lambda prefix: max((k for k in keys if k.startswith(prefix)),  # noqa: E731
                              key=lambda k: mean_over(results, names, k, "image"))
    return [best("pd:"), best("fused:")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--choose", default="brick,gravel")
    ap.add_argument("--confirm", default="grass,ihc,moon,retina")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--bank", type=int, default=16384, help="memory bank size, cells drawn at random")
    ap.add_argument("--work", type=Path, default=None, help="keep data and VAE runs here, and reuse them")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--fresh", action="store_true", help="measure again even where WORK/patch_distance holds a result")
    args = ap.parse_args()
    tmp = None if args.work else tempfile.TemporaryDirectory(prefix="vaekit-patchdist-")
    work = args.work or Path(tmp.name)
    halves = {"choose": [n for n in args.choose.split(",") if n], "confirm": [n for n in args.confirm.split(",") if n]}
    results = {}
    for name in halves["choose"] + halves["confirm"]:
        kept = work / "patch_distance" / f"{name}-bank{args.bank}.json"
        if kept.exists() and not args.fresh:
            results[name] = r = json.loads(kept.read_text())
        else:
            results[name] = r = run_texture(name, work, args.threads, args.bank)
            kept.parent.mkdir(parents=True, exist_ok=True)
            kept.write_text(json.dumps(r, indent=2))
        pds = "  ".join(f"{f} {r[f'pd:{f}:max']['image']:.4f}" for f in FEATURES)
        print(f"{name}: reader {r['reader']['image']:.4f}/{r['reader']['pixel']:.4f}  nearest-patch (image) {pds} "
              f"({r['pd_seconds']:.0f} s)", flush=True)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
    chosen = choose(results, [n for n in halves["choose"] if n in results]) if any(n in results for n in halves["choose"]) else []
    print(f"\nchosen on the choose half: {', '.join(chosen)}")
    print_tables(results, halves, chosen)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
