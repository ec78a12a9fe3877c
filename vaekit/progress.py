"""The progress callback every long vaekit call takes: `progress(done, total, **metrics)`.

`done` and `total` count the call's units (images, epochs, steps); keywords carry what a front
end may show (phase="score", loss=...). The CLI feeds it into a rich progress bar, the demo into
gr.Progress; the library never prints.
"""

from __future__ import annotations

from typing import Callable

Progress = Callable[..., None]
