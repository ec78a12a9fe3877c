"""Streaming folder jobs: decoded batches in, per-image rows out, in bounded memory and resumable.

What every folder command (anomaly-score, encode, reconstruct, the codec) and the demo stand on:
- `job`: the frame of a journalled job (its share of the files, its journal held, its end).
- `inputs`: the image files under what the user named, this process's share of them
  (`--shard i/n` or torchrun's ranks), and fixed batches of them decoded ahead of the consumer.
- `batches`: which batches a job has, which files each covers, and the check of a journal line.
- `journals`: `OUT.partial`, the job's contract, written as it goes and checked by `--resume`.
- `shares`: the journals of a job's shares, and the one merge into OUT.
- `pipeline`: the threads around a loop, a reader running ahead and a writer running behind.
Numpy and Pillow only: the onnxruntime engine's jobs import no torch.
"""

from vaekit.stream.inputs import (BATCH_PIXELS, READ_AHEAD, Batch, Inputs, PathList, check_shard, env_shard,
                                  find_inputs, iter_batches, named, parse_shard, relative_name, shard)
from vaekit.stream.journals import JOURNAL_VERSION, PARTIAL_SUFFIX, SYNC_EVERY, Journal

__all__ = ["BATCH_PIXELS", "JOURNAL_VERSION", "PARTIAL_SUFFIX", "READ_AHEAD", "SYNC_EVERY", "Batch", "Inputs",
           "Journal", "PathList", "check_shard", "env_shard", "find_inputs", "iter_batches", "named", "parse_shard", "relative_name", "shard"]
