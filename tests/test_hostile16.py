"""The sixteenth hostile round, on lossless archives of Gaussian and Bernoulli models (the pixel
model fitted to the archive's images, vaekit/codec/fitted.py): a header whose pixel model holds an
integer beyond any float was a traceback (OverflowError), not a damaged archive; the fit built
arrays ~144 bytes a sub-pixel (367 MB for a 512 px grey chunk of 3 MB); a model whose decoder gives
NaN made the fit a traceback; the rate-distortion benchmark skipped a Bernoulli model's archive."""

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


def test_fitting_the_pixel_model_builds_no_array_many_times_the_images():
    """fit() built a (C, N, 4) float64 array of every pixel's neighbours' residuals and every
    pixel's context twice over (the first pass's only use: the means it copied), 144 bytes a
    sub-pixel at its peak: a 512 px grey chunk (12 images, 3 MB) took 367 MB to fit. The weights
    now come from normal equations summed image by image, the contexts are filled in place."""
    import tracemalloc

    from vaekit.codec import fitted

    rng = np.random.default_rng(0)
    x = [rng.integers(0, 256, (1, 256, 256), np.uint8) for _ in range(12)]
    m = [xi / 255.0 * 0.9 + 0.05 for xi in x]
    tracemalloc.start()
    try:
        model = fitted.fit("gaussian", x, m)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak / sum(xi.size for xi in x) < 80  # bytes a sub-pixel, the sampled spread's fixed ~45 MB included
    # the same weights as a least-squares fit over every pixel at once
    own = np.concatenate([(xi / 255.0 - mi).ravel() for xi, mi in zip(x, m)])
    res = np.stack([np.concatenate([fitted._neighbour_residual(xi, mi, dy, dx)[0] for xi, mi in zip(x, m)])
                    for dy, dx in fitted.NEIGHBOURS], axis=-1)
    direct = np.clip(np.linalg.lstsq(res, own, rcond=None)[0], -0.99, 0.99)
    np.testing.assert_allclose(model.weights[0], np.round(direct, 4), atol=1e-4)


def test_the_rate_distortion_benchmark_has_a_lossless_row_for_a_bernoulli_model(tmp_path):
    """benchmarks/rate_distortion.py still wrote its bits-back row only for a logistic or Gaussian
    model ("lossless needs a logistic or Gaussian likelihood"), after Bernoulli models gained
    lossless archives (the MNIST default whose 1.47 bits/dim docs/codec.md reports)."""
    import sys

    import vaekit
    from export_support import random_run

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        import rate_distortion
    finally:
        sys.path.pop(0)
    model = vaekit.load(random_run(tmp_path / "run", image_size=16, channels=1, latent_dim=4, base_channels=4,
                                   likelihood="bernoulli"))
    folder = tmp_path / "src"
    folder.mkdir()
    x = np.random.default_rng(0).integers(0, 256, (3, 1, 16, 16), np.uint8)
    for i, img in enumerate(x):
        Image.fromarray(img[0]).save(folder / f"i{i}.png")
    work = tmp_path / "work"
    work.mkdir()
    rows = {name: note for name, _, note in rate_distortion.lossless_table(model, folder, x, work)}
    assert "every pixel exact" in rows["vaekit bits-back"]


@pytest.mark.parametrize("likelihood", ["gaussian", "bernoulli"])
def test_a_model_whose_decoder_gives_nan_still_writes_an_exact_archive(tmp_path, likelihood):
    """A logistic model whose decoder gives NaN still codes every pixel exactly (its tables fall
    back to uniform); a Gaussian or Bernoulli one made the pixel model's fit raise LinAlgError
    ("SVD did not converge"), a traceback. Its non-finite means now read as mid-grey."""
    import torch

    import vaekit
    from export_support import random_run

    model = vaekit.load(random_run(tmp_path / "run", image_size=16, channels=1, latent_dim=4, base_channels=4,
                                   likelihood=likelihood))
    last = [p for name, p in model.net.named_parameters() if name.startswith("decoder") and p.ndim == 4][-1]
    with torch.no_grad():
        last.fill_(float("nan"))
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(2)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (16, 16), np.uint8)).save(src / f"i{i}.png")
    report = vaekit.codec.encode(model, src, tmp_path / "a.vkc", lossless=True)
    out = vaekit.codec.decode(model, report.path, tmp_path / "back")
    assert len(out.written) == 3
    for p in out.written:
        assert np.array_equal(np.asarray(Image.open(p)), np.asarray(Image.open(src / p.name)))
