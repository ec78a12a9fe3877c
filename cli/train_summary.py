"""What `vaekit train` prints when a run is done: the files it skipped and its summary table."""

from __future__ import annotations

from vaekit_cli.output import console, err_console, number, promise_rows, shown


def name_skipped(skipped) -> None:
    """One line per file training skipped, with the reason (stderr)."""
    for path, reason in skipped:
        err_console.print(f"[yellow]skipped[/yellow] {shown(path)}: {shown(reason)}", highlight=False, soft_wrap=True)


def loss_unit(cfg: dict) -> str:
    """What the training loss is per: an image, or for a surface model that trains on crops (a
    512 px surface's loss was per 64 px crop, printed as per image) the crop."""
    from vaekit.training.trainer import CROP, loss_unit as unit

    m = cfg.get("model") or {}
    size = m.get("image_size") or 0
    crop = min((cfg.get("train") or {}).get("crop") or CROP, size)
    grid_crops = m.get("layout") == "grid" and crop < max(size, m.get("read_size") or 0)
    return unit(crop if grid_crops else None)


def print_summary(result, data, skipped_named: bool = False) -> None:
    from rich.table import Table

    if not skipped_named:  # named at the plan already (a run resumed, or reporting before plans: here)
        name_skipped(data.skipped)
    t = Table(title=f"trained {shown(result.run_dir)}", show_header=False)
    t.add_row("images", f"{len(data.paths)} used, {len(data.skipped)} skipped" + (" (pixel cache hit)" if data.cache_hit else ""))
    t.add_row("device", result.device)
    from vaekit.training import rundir

    cfg = rundir.read_config(result.run_dir)
    # no validation split (cross-fitted, one held-out fold, --val-fraction 0): the loss is the training
    # images', and no epoch was chosen on held-out images ("best" would mean the last)
    held_out = (cfg.get("data") or {}).get("val_images", 1)
    t.add_row("epochs", f"{result.epochs_done}" + (f" (best: epoch {result.best_epoch})" if held_out else ""))
    m = cfg.get("model") or {}
    t.add_row("best val -ELBO (z = μ)" if held_out else "-ELBO, training images (1 draw)", f"{result.best_val:.2f} {loss_unit(cfg)}")
    read = f" (tiles of images read at {m['read_size']} px)" if (m.get("read_size") or 0) > (m.get("image_size") or 0) else ""
    t.add_row("model", shown(f"{m.get('image_size')} px{read}, {m.get('layout', 'vector')} latent ({m.get('latent_dim')}), "
                             f"{m.get('likelihood')}"))
    if result.threshold is not None:
        from vaekit.inference.engine import score_unit

        a = cfg.get("anomaly") or {}
        q, n, source = a.get("threshold_quantile"), a.get("n", 0), a.get("source", "calibration")
        from vaekit.anomaly.quantiles import quantile_text
        from vaekit_cli.threshold_cmd import which_score

        where = f" (quantile {quantile_text(q)} of {n} {shown(source)} score{'s' if n != 1 else ''})" if q is not None else ""
        t.add_row("anomaly threshold", f"{shown(a.get('score'))} {number(result.threshold)} {score_unit(a.get('score', ''))}{where}")
        which = which_score(a, f"`vaekit threshold {shown(result.run_dir)} --normal MORE_GOOD/` sets it from more images")
        if which.startswith("beyond"):  # a threshold above every score it came from is worth seeing beside the largest
            t.add_row("which is", which)
        promise_rows(t, a)
    t.add_row("time", f"{result.seconds:.1f} s ({result.epoch_seconds:.1f} s of them epochs)")
    console.print(t)
