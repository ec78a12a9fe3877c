"""Small sample data sets for trying vaekit without bringing your own images.

Two generators write the same folder layout (train/, test/normal/, test/anomalous/):
`write_digits` uses scikit-learn's bundled 8x8 digits (one digit is "normal", the rest are
anomalies); `write_shapes` draws synthetic metal washers on fabric, some with a defect,
and a ground-truth mask for each defect. Both are deterministic for a given seed.
No torch here: this runs on the CPU-only install. One file per data set (`digits`, `shapes`),
what they share in `common`.
"""

from vaekit.sample_data.common import SampleDataReport
from vaekit.sample_data.digits import write_digits
from vaekit.sample_data.shapes import write_shapes

__all__ = ["SampleDataReport", "write_digits", "write_shapes"]
