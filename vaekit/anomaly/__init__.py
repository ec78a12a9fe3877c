"""Anomaly detection with a trained model, one idea per file (no torch here: either engine works).

- `threshold`: the threshold learned from normal images, moved without retraining.
- `score`: the streamed scoring loop and the in-memory `score_images`.
- `outputs`: the CSV/JSON score files and heat maps, and the rules for where they may go.
- `job`: `vaekit anomaly-score` as a resumable, shardable job writing as it goes.
- `evaluation`: metrics on labelled folders, pixel AUROC from masks, ROC plots.
"""

from vaekit.anomaly.evaluation import Evaluation, evaluate, image_metrics, pixel_auroc, plot_roc
from vaekit.anomaly.job import JobReport, score_to_file
from vaekit.anomaly.outputs import (MAP_MIN_SIDE, check_outputs, csv_text, map_targets, output_format, rows_csv,
                                    write_maps, write_scores)
from vaekit.anomaly.score import (BATCH_SIZE, ROW_FIELDS, Plan, ScoredBatch, ScoreReport, ScoreRow, iter_scored,
                                  score_images, scoring_plan)
from vaekit.anomaly.quantiles import (QUANTILES, check_quantile, conformal_rank, expected_fpr, few_scores_note,
                                      needed_scores, threshold_of)
from vaekit.anomaly.new_normal import threshold_from_normal
from vaekit.anomaly.threshold import (promised_rate, resolve_threshold, section_note, set_threshold, stored_threshold,
                                      threshold_section)

__all__ = [
    "BATCH_SIZE", "MAP_MIN_SIDE", "QUANTILES", "ROW_FIELDS", "Evaluation", "JobReport", "Plan", "ScoreReport",
    "ScoreRow", "ScoredBatch", "check_outputs", "check_quantile", "conformal_rank", "csv_text", "evaluate", "expected_fpr",
    "few_scores_note", "image_metrics", "iter_scored", "map_targets", "needed_scores", "output_format", "pixel_auroc", "plot_roc",
    "promised_rate", "resolve_threshold", "rows_csv", "score_images", "score_to_file", "scoring_plan", "section_note",
    "set_threshold", "stored_threshold", "threshold_from_normal", "threshold_of", "threshold_section", "write_maps", "write_scores",
]
