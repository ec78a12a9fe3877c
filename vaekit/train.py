"""`from vaekit.train import train`, as the README documents; the job is vaekit.training.job."""

from vaekit.training.job import TrainResult, train

__all__ = ["TrainResult", "train"]
