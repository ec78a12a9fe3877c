""".vkc files end to end: folders in and back, golden bitstreams, damaged and foreign files refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import vaekit
from vaekit import codec
from vaekit.codec import container

from export_support import run_without_torch
from test_codec import _digits

GOLDEN = Path(__file__).parent / "golden" / "codec"


def _pixels(paths) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p)) for p in paths])


@pytest.fixture(scope="module")
def coded(tmp_path_factory):
    """A logistic run with fitted tables, its source folder, and one lossy and one lossless file."""
    from export_support import random_run

    root = tmp_path_factory.mktemp("vkc")
    run = random_run(root / "run", image_size=16, channels=1, latent_dim=6, base_channels=4, likelihood="logistic")
    src = root / "src"
    x = _digits(src, 40)
    model = vaekit.load(run)
    # an untrained net's posterior means barely move: steps as fine as its spread, so qualities differ
    codec.save_prior(run, codec.fit_prior(model, x, steps=0.05 * 2.0 ** (-np.arange(8) / 2)), model)
    lossy = codec.encode(model, src, root / "q6.vkc", quality=6, chunk=16)
    lossless = codec.encode(model, src, root / "all.vkc", lossless=True, chunk=16)
    return model, src, lossy, lossless


def test_lossy_folder_round_trip_keeps_names_and_gets_better_with_quality(coded, tmp_path):
    model, src, lossy, _ = coded
    assert lossy.count == 40 and lossy.mode == "lossy" and lossy.header_bytes < lossy.file_bytes
    out = codec.decode(model, lossy.path, tmp_path / "out")
    rel = sorted(str(p.relative_to(tmp_path / "out")) for p in out.written)
    assert rel == sorted(str(p.relative_to(src)) for p in src.rglob("*.png"))
    ref = np.rint(model.reconstruct(src) * 255)  # z = mu, what the latents are quantised from
    errors, sizes = [], []
    for q in (1, 4, 8):
        r = codec.encode(model, src, tmp_path / f"{q}.vkc", quality=q)
        d = codec.decode(model, r.path, tmp_path / f"d{q}")
        got = _pixels(sorted(d.written, key=lambda p: str(p.relative_to(tmp_path / f"d{q}"))))
        want = ref[np.argsort([str(p.relative_to(src)) for p in vaekit.stream.find_inputs(src).paths])]
        errors.append(np.abs(got.astype(float) - want[:, 0]).mean())
        sizes.append(r.file_bytes - r.header_bytes)
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1] and errors == sorted(errors, reverse=True)
    assert errors[-1] < 1.0  # quality 8 is within a grey level of the unquantised reconstruction on average


def test_residual_qualities_hold_every_pixel_within_half_a_step(tmp_path):
    from export_support import random_run

    from vaekit.codec import prior as priors

    run = random_run(tmp_path / "run", image_size=16, channels=1, latent_dim=4, base_channels=4, likelihood="logistic")
    x = _digits(tmp_path / "src", 30, seed=5)
    model = vaekit.load(run)
    codec.save_prior(run, codec.fit_prior(model, x), model)  # the default ladder: residual from quality 4
    index = {("sub/" if i % 3 == 0 else "") + f"img{i:03d}.png": i for i in range(len(x))}  # _digits' names
    sizes = []
    for q in (3, 4, 6, 8):
        r = codec.encode(model, tmp_path / "src", tmp_path / f"{q}.vkc", quality=q)
        d = codec.decode(model, r.path, tmp_path / f"d{q}")
        want = x[[index[p.relative_to(tmp_path / f"d{q}").as_posix()] for p in d.written], 0].astype(int)
        err = np.abs(_pixels(d.written).astype(int) - want).max()
        delta = int(priors.DELTAS[q - 1])
        assert err <= (delta // 2 + 1 if delta else 255), (q, err)  # +1: the network's own float rounding
        sizes.append(r.file_bytes)
    assert sizes == sorted(sizes)


@pytest.mark.slow  # exports
def test_a_refit_keeps_the_tables_older_files_were_coded_with(tmp_path):
    """Refitting replaces the current tables but keeps the earlier set (by hash), so a .vkc coded
    before decodes the same afterwards, from the run and from an export made after the refit."""
    from export_support import random_run

    from vaekit.export import export
    from vaekit.training import rundir

    run = random_run(tmp_path / "run", image_size=16, channels=1, latent_dim=4, base_channels=4, likelihood="logistic")
    x = _digits(tmp_path / "src", 12, seed=2)
    model = vaekit.load(run)
    first = codec.fit_prior(model, x, steps=0.05 * 2.0 ** (-np.arange(8) / 2))
    codec.save_prior(run, first, model)
    old = codec.encode(model, tmp_path / "src", tmp_path / "old.vkc", quality=2)
    before = _pixels(codec.decode(model, old.path, tmp_path / "before").written)
    for steps in (0.3 * 2.0 ** (-np.arange(8) / 2), 0.05 * 2.0 ** (-np.arange(8) / 2)):  # a new set, then the first again
        codec.save_prior(run, codec.fit_prior(model, x, steps=steps), model)
    stored = rundir.read_config(run)["codec"]
    assert stored["hash"] == first.hash  # current again: the set in between is kept once, first is not repeated
    assert len(stored["earlier"]) == 1 and stored["earlier"][0]["hash"] != first.hash
    codec.save_prior(run, codec.fit_prior(model, x, steps=0.3 * 2.0 ** (-np.arange(8) / 2)), model)
    assert codec.read_info(old.path).tables == first.hash != codec.stored_prior(vaekit.load(run)).hash
    for m in (vaekit.load(run), model):
        after = _pixels(codec.decode(m, old.path, tmp_path / f"after{id(m)}").written)
        assert np.array_equal(after, before)
    export(run, tmp_path / "m.onnx")
    onnx = vaekit.load(tmp_path / "m.onnx")
    assert np.abs(_pixels(codec.decode(onnx, old.path, tmp_path / "onnx").written).astype(int) - before).max() <= 1


def test_original_size_is_restored(coded, tmp_path):
    model, _, _, _ = coded
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(np.full((20, 30), 128, np.uint8)).save(src / "wide.png")
    r = codec.encode(model, src, tmp_path / "w.vkc", quality=3)
    d = codec.decode(model, r.path, tmp_path / "out", size="original")
    assert Image.open(d.written[0]).size == (30, 20)


def test_lossless_archive_gives_every_pixel_back(coded, tmp_path):
    model, src, _, lossless = coded
    assert lossless.count == 40 and 4 * 0 < lossless.bits_per_dim < 16
    out = codec.decode(model, lossless.path, tmp_path / "out")
    for p in out.written:
        assert np.array_equal(np.asarray(Image.open(p)), np.asarray(Image.open(src / p.relative_to(tmp_path / "out"))))
    h = codec.read_info(lossless.path)
    assert h.mode == "lossless" and h.engine["engine"] == "torch" and [c[0] for c in h.chunks] == [16, 16, 8]


def test_decode_removes_the_staging_folder_a_killed_decode_left(coded, tmp_path):
    import os

    model, _, lossy, _ = coded
    from vaekit.fileio.leftovers import PARTIAL_MARK, partial_tag

    stale = tmp_path / ".out.vkc-999999999-0a1b2c"  # no such process: a SIGKILLed decode's
    live = tmp_path / f".out.vkc-{os.getppid()}-d4e5f6"  # a decode that still runs
    users = tmp_path / ".out.vkc-999999998-abc"  # a user's folder only named like one
    for d in (stale, live, users):
        d.mkdir()
        (d / "img.png").write_bytes(b"half")
    (stale / PARTIAL_MARK).write_bytes(partial_tag(999999999))
    (live / PARTIAL_MARK).write_bytes(partial_tag(os.getppid()))
    codec.decode(model, lossy.path, tmp_path / "out")
    assert not stale.exists() and live.exists() and (users / "img.png").read_bytes() == b"half"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, users.name, "out"])


def test_a_lossless_archive_from_the_other_engine_is_refused_up_front(coded, tmp_path, monkeypatch):
    from vaekit.codec.net import Net

    model, _, _, _ = coded
    src = tmp_path / "src"
    _digits(src, 6)  # two chunks of `coded`'s model: coding its 40 images took 2/3 s
    monkeypatch.setattr(Net, "describe", lambda self: {"engine": "onnxruntime"})
    r = codec.encode(model, src, tmp_path / "o.vkc", lossless=True, chunk=4)
    assert len(codec.read_info(r.path).chunks) == 2
    monkeypatch.undo()
    with pytest.raises(codec.Desynchronised, match="onnxruntime engine"):
        codec.decode(model, r.path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_lossless_needs_images_of_the_models_size(coded, tmp_path):
    model, src, _, _ = coded
    odd = tmp_path / "odd"
    odd.mkdir()
    Image.fromarray(np.zeros((20, 16), np.uint8)).save(odd / "a.png")
    with pytest.raises(vaekit.errors.BadInput, match="exactly the model's size"):
        codec.encode(model, odd, tmp_path / "y.vkc", lossless=True)
    assert not (tmp_path / "y.vkc").exists() and not list(tmp_path.glob(".y.vkc*"))
    for p in sorted(Path(src).rglob("*.png"))[:3]:  # beside images of its size: skipped and named, the rest coded
        (odd / p.name).write_bytes(p.read_bytes())
    report = codec.encode(model, odd, tmp_path / "y.vkc", lossless=True)
    assert [p.name for p, why in report.skipped] == ["a.png"] and "exactly the model's size" in report.skipped[0][1]
    assert len(codec.read_info(tmp_path / "y.vkc").names) == 3
    with pytest.raises(vaekit.errors.BadInput, match="quality"):
        codec.encode(model, src, tmp_path / "z.vkc", quality=12)
    with pytest.raises(vaekit.errors.BadInput, match="either"):
        codec.encode(model, src, tmp_path / "z.vkc")


@pytest.mark.parametrize("likelihood", ["gaussian", "bernoulli"])
def test_every_model_writes_a_lossless_archive(tmp_path, likelihood):
    """A Gaussian (the default for grey photos) or Bernoulli model codes losslessly with a pixel
    model fitted to the archive's first images, which its header carries: every pixel back."""
    from export_support import random_run

    from vaekit.codec import fitted, lossless

    # 20 of _digits' images (some in a sub-folder) in chunks of 8: two full chunks and a part one,
    # as `coded`'s 40 in chunks of 16, at half the coding time
    src = tmp_path / "src"
    _digits(src, 20)
    model = vaekit.load(random_run(tmp_path / "m", image_size=16, latent_dim=6, base_channels=4, likelihood=likelihood))
    report = codec.encode(model, src, tmp_path / "m.vkc", lossless=True, chunk=8)
    assert report.mode == "lossless" and report.count == 20 and not report.skipped
    header = codec.read_info(report.path)
    assert header.engine["pixels"]["kind"] == fitted.KIND
    out = codec.decode(model, report.path, tmp_path / "back")
    assert len(out.written) == 20
    for p in out.written:
        assert np.array_equal(_pixels([p]), _pixels([src / p.relative_to(tmp_path / "back")]))
    header.engine["pixels"]["weights"][0][0] = 1.5  # what a crafted header could hold
    with pytest.raises(container.ArchiveError, match="weights"):
        lossless.pixel_model(header, model, report.path)
    del header.engine["pixels"]
    with pytest.raises(container.ArchiveError, match="pixel model is missing"):
        lossless.pixel_model(header, model, report.path)


def test_lossless_skips_images_whose_pixels_would_not_come_back_exactly(coded, tmp_path):
    """16-bit, colour, alpha and palette files would be converted to 8-bit grey: not lossless."""
    model, _, _, _ = coded
    src, rng = tmp_path / "mixed", np.random.default_rng(3)
    src.mkdir()
    grey = rng.integers(0, 256, (16, 16), dtype=np.uint8)
    Image.fromarray(grey).save(src / "grey.png")
    Image.fromarray(rng.integers(0, 65536, (16, 16)).astype(np.uint16)).save(src / "deep.png")
    assert Image.open(src / "deep.png").mode.startswith("I")
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(src / "rgb.png")
    Image.fromarray(rng.integers(0, 256, (16, 16, 4), dtype=np.uint8)).save(src / "rgba.png")
    Image.fromarray(grey).convert("P").save(src / "palette.png")
    r = codec.encode(model, src, tmp_path / "m.vkc", lossless=True)
    assert r.count == 1 and codec.read_info(r.path).names == ["grey.png"]
    assert sorted(p.name for p, _ in r.skipped) == ["deep.png", "palette.png", "rgb.png", "rgba.png"]
    assert all("not 8-bit 'L'" in why for _, why in r.skipped)
    out = codec.decode(model, r.path, tmp_path / "out")
    assert np.array_equal(np.asarray(Image.open(out.written[0])), grey)
    assert Image.open(out.written[0]).mode == "L"


def _damaged(path: Path, tmp_path: Path) -> dict[str, Path]:
    data = path.read_bytes()
    cases = {"truncated": data[:-40], "cut in the header": data[:20], "one byte changed": bytearray(data),
             "bytes appended": data + b"\0\0\0\0", "empty": b"", "a PNG": (GOLDEN / "run" / "config.json").read_bytes()}
    cases["one byte changed"][len(data) // 2] ^= 0x10
    out = {}
    for name, blob in cases.items():
        out[name] = tmp_path / f"{name.replace(' ', '_')}.vkc"
        out[name].write_bytes(bytes(blob))
    return out


@pytest.mark.parametrize("which", ["lossy", "lossless"])
def test_damaged_files_are_refused_and_nothing_is_written(coded, tmp_path, which):
    model, _, lossy, lossless = coded
    for name, path in _damaged((lossy if which == "lossy" else lossless).path, tmp_path).items():
        with pytest.raises(container.ArchiveError) as e:
            codec.decode(model, path, tmp_path / "out")
        assert "\n" not in str(e.value) and str(path) in str(e.value), name
        assert isinstance(e.value, vaekit.errors.VaekitError) and e.value.exit_code == 2
        assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*")), name


def test_another_models_file_is_refused(coded, tmp_path):
    model, _, lossy, _ = coded
    golden = vaekit.load(GOLDEN / "run")
    with pytest.raises(container.ArchiveModelMismatch, match="encoded by model"):
        codec.decode(golden, lossy.path, tmp_path / "out")
    with pytest.raises(container.ArchiveModelMismatch):
        codec.decode(model, GOLDEN / "lossy_q5.vkc", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_existing_outputs_are_kept_without_overwrite(coded, tmp_path):
    model, _, lossy, _ = coded
    out = codec.decode(model, lossy.path, tmp_path / "out")
    before = out.written[0].read_bytes()
    out.written[0].write_bytes(b"mine")
    with pytest.raises(vaekit.errors.OutputExists):
        codec.decode(model, lossy.path, tmp_path / "out")
    assert out.written[0].read_bytes() == b"mine" and before != b"mine"


@pytest.mark.parametrize("fmt", ["", "_v2"])
def test_golden_bitstreams_decode_to_their_stored_pixels(tmp_path, fmt):
    """Files written once and checked in: the format, the tables and the coder must not drift.
    The same symbols in format 3 (today's) and format 2 (still read)."""
    model = vaekit.load(GOLDEN / "run")
    want = np.load(GOLDEN / "expected.npz")
    assert (GOLDEN / f"lossy_q5{fmt}.vkc").read_bytes()[:4] == (b"VKC2" if fmt else b"VKC3")
    lossy = codec.decode(model, GOLDEN / f"lossy_q5{fmt}.vkc", tmp_path / "lossy")
    assert [str(p.relative_to(tmp_path / "lossy")) for p in lossy.written] == list(want["lossy_q5_names"])
    diff = _pixels(lossy.written).astype(int) - want["lossy_q5"]
    assert np.abs(diff).max() <= 1  # the symbols are exact; the network's floats may differ in the last bits
    try:
        lossless = codec.decode(model, GOLDEN / f"lossless{fmt}.vkc", tmp_path / "lossless")
    except codec.Desynchronised as e:  # another CPU's float rounding (seen on AVX-512 machines): refused,
        assert "fails its checksum" in str(e), str(e)  # never wrong pixels, and nothing left
        assert not (tmp_path / "lossless").exists() or not any((tmp_path / "lossless").iterdir())
        return
    assert np.array_equal(_pixels(lossless.written), want["lossless"])


@pytest.mark.parametrize("name, run, q", [("dct", "run_dct", 5), ("dct_rgb", "run_dct_rgb", 6)])
def test_golden_dct_bitstreams_decode_to_their_stored_pixels(tmp_path, name, run, q):
    """Files whose residual is block-DCT coefficients (vaekit.codec.transform), written once and
    checked in with what they decoded to then: grey 16 px images in 8 x 8 blocks (the golden
    images, the golden weights with tables fitted with residual_coder="dct": run_dct), and colour
    20 px images in 4 x 4 blocks through the colour basis (an untrained colour model: run_dct_rgb).
    Pixels within one grey level (the symbols: the torch-free test below)."""
    want = np.load(GOLDEN / f"expected_{name}.npz")
    lossy = codec.decode(vaekit.load(GOLDEN / run), GOLDEN / f"lossy_q{q}_{name}.vkc", tmp_path / "out")
    assert [str(p.relative_to(tmp_path / "out")) for p in lossy.written] == list(want[f"lossy_q{q}_names"])
    assert np.abs(_pixels(lossy.written).astype(int) - want[f"lossy_q{q}"]).max() <= 1


@pytest.mark.parametrize("file, run, expected, shape", [
    ("lossy_q5", "run", "expected", (12, 1, 16, 16)), ("lossy_q5_v2", "run", "expected", (12, 1, 16, 16)),
    ("lossy_q5_dct", "run_dct", "expected_dct", (12, 1, 8, 8, 2, 2)),
    ("lossy_q6_dct_rgb", "run_dct_rgb", "expected_dct_rgb", (10, 3, 4, 4, 5, 5))])
def test_golden_symbols_decode_without_torch(file, run, expected, shape):
    """The .vkc reader, the tables and the lossy decoder run on the torch-free runtime, and the
    symbols (latents; residual per pixel or as DCT coefficients) must not drift."""
    code = (
        "import json, numpy as np\n"
        "from vaekit.codec import container, lossy, prior\n"
        f"root = {str(GOLDEN)!r}\n"
        f"h, off = container.read_header(root + '/{file}.vkc')\n"
        f"p = prior.from_dict(json.load(open(root + '/{run}/config.json'))['codec'])\n"
        f"(n, w), = container.iter_chunks(root + '/{file}.vkc', h, off)\n"
        "z, res = lossy.decode_chunk(p, h.quality, w, n, (h.channels, h.image_size, h.image_size))\n"
        f"want = np.load(root + '/{expected}.npz')\n"
        f"assert res.shape == {shape} and np.abs(res).sum() > 0\n"
        "q = f'lossy_q{h.quality}'\n"
        "assert np.array_equal(z, want[q + '_latents']) and np.array_equal(res, want[q + '_residual'])\n"
        "assert 'torch' not in sys.modules\n"
        "print('ok')\n"
    )
    r = run_without_torch(code)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr



@pytest.mark.slow
def test_the_onnx_export_decodes_what_torch_encoded(coded, tmp_path):
    """The tables travel in the export's metadata; lossy symbols decode identically (pixels within
    one grey level of torch's), a lossless archive is exact on its own engine and, on the other,
    either exact or refused; and the onnxruntime path runs with torch blocked."""
    from vaekit.export import export

    model, src, lossy, lossless = coded
    onnx_path = tmp_path / "m.onnx"
    export(model.info.source, onnx_path)
    onnx = vaekit.load(onnx_path)
    assert codec.stored_prior(onnx).hash == codec.stored_prior(model).hash
    a = _pixels(codec.decode(model, lossy.path, tmp_path / "torch").written).astype(int)
    b = _pixels(codec.decode(onnx, lossy.path, tmp_path / "onnx").written).astype(int)
    assert np.abs(a - b).max() <= 1
    with pytest.raises(codec.Desynchronised, match="torch engine"):  # refused up front, nothing written
        codec.decode(onnx, lossless.path, tmp_path / "across")
    assert not (tmp_path / "across").exists()
    own = codec.encode(onnx, src, tmp_path / "onnx.vkc", lossless=True)
    assert codec.read_info(own.path).engine["engine"] == "onnxruntime"
    code = (
        "import vaekit\n"
        "from vaekit import codec\n"
        f"m = vaekit.load({str(onnx_path)!r})\n"
        f"codec.decode(m, {str(own.path)!r}, {str(tmp_path / 'no_torch')!r})\n"
        f"codec.decode(m, {str(lossy.path)!r}, {str(tmp_path / 'no_torch_lossy')!r})\n"
        "assert 'torch' not in sys.modules\n"
        "print('ok')\n"
    )
    r = run_without_torch(code, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
    for p in (tmp_path / "no_torch").rglob("*.png"):
        assert np.array_equal(np.asarray(Image.open(p)), np.asarray(Image.open(src / p.relative_to(tmp_path / "no_torch"))))


def test_colour_images_and_a_latent_grid(tmp_path):
    """Three channels and a grid latent (a table per latent channel, shared by its cells)."""
    from export_support import random_run

    run = random_run(tmp_path / "run", image_size=20, channels=3, latent_dim=3, base_channels=4, likelihood="logistic",
                     layout="grid")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (8, 3, 20, 20), dtype=np.uint8)
    (tmp_path / "src").mkdir()
    for i, img in enumerate(x):
        Image.fromarray(img.transpose(1, 2, 0)).save(tmp_path / "src" / f"{i}.png")
    model = vaekit.load(run)
    codec.save_prior(run, codec.fit_prior(model, x), model)
    for q, bound in ((5, 16), (8, 2)):
        r = codec.encode(model, tmp_path / "src", tmp_path / f"{q}.vkc", quality=q)
        d = codec.decode(model, r.path, tmp_path / f"out{q}")
        y = np.stack([np.asarray(Image.open(tmp_path / f"out{q}" / f"{i}.png")).transpose(2, 0, 1) for i in range(8)])
        assert np.abs(y.astype(int) - x).max() <= bound + 1
    r = codec.encode(model, tmp_path / "src", tmp_path / "all.vkc", lossless=True)
    d = codec.decode(model, r.path, tmp_path / "exact")
    y = np.stack([np.asarray(Image.open(tmp_path / "exact" / f"{i}.png")).transpose(2, 0, 1) for i in range(8)])
    assert np.array_equal(y, x)


def test_a_lossless_decode_names_the_models_own_refusal_not_damage(coded, tmp_path, monkeypatch):
    """An export whose decoder part is missing (or foreign) refused inside the decoding loop, and the
    loop reworded it "all.vkc cannot be decoded (...); it is damaged or was written by another
    engine": a user could throw a good archive away. The model's own message comes through."""
    from vaekit.codec.net import Net
    from vaekit.errors import DamagedFile

    model, _, _, lossless = coded

    def missing(self, z):
        raise DamagedFile("m.decoder.onnx is missing: decode needs it beside m.onnx")

    monkeypatch.setattr(Net, "likelihood", missing)
    with pytest.raises(DamagedFile, match="^m.decoder.onnx is missing") as e:
        codec.decode(model, lossless.path, tmp_path / "out")
    assert "damaged or was written by another engine" not in str(e.value) and not (tmp_path / "out").exists()


def test_a_lossy_encode_reports_the_psnr_its_file_decodes_to(coded, tmp_path):
    """encode printed only sizes: "5277.6x smaller" for images that decoded to flat brown (9.6 dB).
    It reports the mean PSNR of the images as the file decodes, at the model's size."""
    from vaekit.images.quality import psnr

    model, src, lossy, _ = coded
    back = codec.decode(model, lossy.path, tmp_path / "out")
    x = model.load_images([src / n for n in codec.read_info(lossy.path).names]).images
    y = np.stack([np.asarray(Image.open(p)) for p in back.written])[:, None] / 255.0
    each = psnr(x, y)
    assert lossy.exact == int(np.isinf(each).sum()) and lossy.psnr == pytest.approx(float(each[np.isfinite(each)].mean()), abs=1e-6)
    assert 5 < lossy.psnr < 60 and lossy.psnr_images == lossy.count == 40
    assert codec.encode(model, src, tmp_path / "l.vkc", lossless=True).psnr is None


def test_a_latents_only_encode_measures_its_psnr_on_its_first_images(coded, tmp_path, monkeypatch):
    """Without a residual the decoder's pass is made for the PSNR alone: it doubled such an encode's
    time, so it is made for the first PSNR_IMAGES images only, and the count is reported."""
    from vaekit.codec import lossy_job

    model, src, _, _ = coded
    prior = codec.stored_prior(model)
    q = next(q for q in range(1, len(prior.steps) + 1) if not prior.deltas[q - 1])  # a quality of latents only
    monkeypatch.setattr(lossy_job, "PSNR_IMAGES", 16)
    r = codec.encode(model, src, tmp_path / "a.vkc", quality=q, chunk=16)
    assert r.count == 40 and r.psnr_images == 16 and r.psnr is not None
