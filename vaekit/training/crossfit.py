"""Cross-fitting: out-of-sample -ELBO parts of every training image, for few images.

A threshold (or a score's statistics) fitted on images the model trained on is biased: those
images score lower than new normal ones, so more new normal images than promised end up above
it (28.8% instead of 1% with 20 images, in vaekit 0.2). Holding images out costs what few
images cannot spare. Instead, with K folds (vaekit.training.splits.Splits), one extra model per fold is
trained on the other folds by the run's own recipe (vaekit.training.trainer.Trainer) and scores its fold's
images: every image gets parts from a model that never saw it, as new images will from the
run's model. The run's own model trains on every fold but the first, so it is the first fold's model.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from vaekit.config import ModelConfig, TrainConfig
from vaekit.training.data import Dataset, gather
from vaekit.training.splits import Splits
from vaekit.training.whole import iter_whole_tiles
from vaekit.training.distributed import Dist
from vaekit.inference.atypicality import Parts
from vaekit.progress import Progress



def crossfit_scores(data: Dataset, splits: Splits, model_cfg: ModelConfig, train_cfg: TrainConfig,
                    device: torch.device, summarise: Callable[[object, np.ndarray], Callable[[Parts], object]],
                    progress: Progress | None = None,
                    should_stop: Callable[[], bool] | None = None, run_engine=None) -> list[tuple[np.ndarray, object, list[int]]] | None:
    """(held-out image indices, summarise(fold engine, its training indices)(their parts), the rows
    of each image) of each fold model: a row per image, or for a surface model a row per tile of
    its whole file (vaekit.images.tiles). The parts are computed a
    pixel-bounded chunk at a time and summarised at once (no maps are kept); None when
    `should_stop()` ended it. The fold models follow the run's resolved recipe (the same batch
    size, epochs and seed), so a resumed run fits the same ones. The run's own model trained on
    every fold but the first (vaekit.training.splits.plan_splits), so it is the first fold's model:
    `run_engine` scores that fold, and the others train."""
    from vaekit.inference.engine_torch import TorchModel
    from vaekit.training.finish import CHUNK_PIXELS, Scored, parts_of
    from vaekit.training.trainer import Trainer

    out = []
    step = max(1, CHUNK_PIXELS // model_cfg.image_size**2)
    every = np.sort(np.concatenate(splits.folds))
    reused = [run_engine is not None and np.array_equal(np.setdiff1d(every, held), splits.train)
              for held in splits.folds]  # the run's own model is the first fold's: scored, not trained
    trained = 0
    for i, held in enumerate(splits.folds):
        rest = np.setdiff1d(every, held)
        if reused[i]:
            engine = run_engine
        else:
            # the run's own seed (initial weights, shuffles, noise): a fold model then differs from
            # the run's model by the images it leaves out, not by chance
            trainer = Trainer(model_cfg, train_cfg, device, Dist())
            for epoch in range(train_cfg.epochs):
                if trainer.epoch(data.images, rest, epoch, should_stop=should_stop, wide=data.wide) is None:
                    return None
            engine = TorchModel.from_net(trainer.model, device)
        summary = summarise(engine, rest)
        if model_cfg.layout == "grid":  # a surface model scores each file whole: a row per tile
            chunks, counts = [], []
            for tiles, n in iter_whole_tiles(data, held, CHUNK_PIXELS, model_cfg.image_size):
                chunks += [summary(parts) for parts in parts_of(engine, tiles)]
                counts += n
        else:
            counts = [1] * len(held)
            chunks = [summary(engine.elbo_parts(gather(data.images, held[j : j + step])))
                      for j in range(0, len(held), step)]
        out.append((held, Scored.cat(chunks), counts))
        if progress and not reused[i]:  # the fold models trained, as the plan counts them (not the run's own)
            trained += 1
            progress(trained, len(reused) - sum(reused), phase="crossfit")
    return out
