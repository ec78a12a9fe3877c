"""The sixteenth hostile round, on lossless archives of Gaussian and Bernoulli models (the pixel
model fitted to the archive's images, vaekit/codec/fitted.py): a header whose pixel model holds an
integer beyond any float was a traceback (OverflowError), not a damaged archive."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from vaekit.codec import container, header as header_format
from vaekit_cli.main import app


@pytest.fixture(scope="module")
def gaussian(tmp_path_factory):
    """(run, folder, archive): an untrained 16 px grey Gaussian model, 3 images, their archive."""
    import vaekit
    from export_support import random_run

    root = tmp_path_factory.mktemp("hostile16")
    run = random_run(root / "run", image_size=16, channels=1, latent_dim=4, base_channels=4, likelihood="gaussian")
    src = root / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (16, 16), np.uint8)).save(src / f"i{i}.png")
    vaekit.codec.encode(vaekit.load(run), src, root / "a.vkc", lossless=True)
    return run, src, root / "a.vkc"


def _rewritten(archive: Path, out: Path, edit) -> Path:
    """A copy of `archive` whose header `edit(header)` changed, with a valid checksum (as anyone
    can write one: the checksum is against damage, not a signature)."""
    h, offset = container.read_header(archive)
    data = archive.read_bytes()
    payload = data[offset:len(data) - container.DIGESTS[container.MAGIC]]
    edit(h)
    head = header_format.pack(h)
    body = container.MAGIC + header_format.varint(len(head)) + head + payload
    out.write_bytes(body + hashlib.sha256(body).digest()[:container.DIGESTS[container.MAGIC]])
    return out


@pytest.mark.parametrize("field", ["weights", "log_scale", "p0"])
def test_a_pixel_model_number_beyond_any_float_is_a_damaged_archive(gaussian, tmp_path, field):
    """JSON's integers have no bound: 10**400 in the header's pixel model made float() raise
    OverflowError, a traceback and exit 3 ("a bug in vaekit"); it is a damaged archive, exit 2."""
    import vaekit
    from vaekit.codec import lossless

    run, _, archive = gaussian

    def edit(h):
        h.engine["pixels"][field][0][0] = 10 ** 400

    crafted = _rewritten(archive, tmp_path / "crafted.vkc", edit)
    h, _ = container.read_header(crafted)
    with pytest.raises(container.ArchiveError, match=f"{field} holds a number beyond any float"):
        lossless.pixel_model(h, vaekit.load(run), crafted)
    result = CliRunner().invoke(app, ["decode", str(run), str(crafted), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert "beyond any float" in result.output
    assert not (tmp_path / "out").exists()
