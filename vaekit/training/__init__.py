"""Training: a folder of images in, a run directory out.

- `job`: `vaekit train` as a library call (vaekit.train re-exports its `train`): find and
  decode the images, decide the automatic settings, fit, or resume a run exactly.
- `data`, `cache`: the training images as one uint8 array, decoded once into the pixel cache;
  the splits; batches read ahead.
- `recipe`: batch size, length, learning-rate schedule and KL weight, pure functions of the config.
- `trainer`: one model and its optimiser, one epoch at a time (AMP, channels-last, DDP).
- `loop`: `fit`, the epochs with their validation, checkpoints and the best weights.
- `checkpoint`, `rundir`: the resumable state and the run directory it lives in.
- `finish`, `finish_reader`, `crossfit`: what a run records at the end (the score's
  calibration, the threshold, the codec's tables, a surface's defect reader).
- `distributed`: the device and torchrun's process group; `launch`: torchrun's environment
  (RANK, WORLD_SIZE, LOCAL_RANK), read without torch, by the streaming jobs too.
Nothing is imported here: the pixel cache and the run directory's readers need no torch.
"""
