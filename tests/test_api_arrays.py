"""What the Python API accepts as images and batch sizes (issue 21, item 11): vaekit.images.arrays.

Every bad argument is a BadInput (a VaekitError) with a one-line message; float images in [0, 1]
(what Model.decode returns) become the uint8 images they stand for, never divided by 255 twice.
The last tests drive vaekit.Model itself; they are marked xfail(strict) until engine.py calls
these checks (the lead wires them): remove the marker with that change.
"""

from __future__ import annotations

import numpy as np
import pytest

from vaekit import images
from vaekit.errors import BadInput, VaekitError
from vaekit.images.arrays import as_images, as_latents, check_batch_size, user_images

C, S = 1, 16


def refused(fn, *args, match: str) -> str:
    with pytest.raises(BadInput, match=match) as e:
        fn(*args)
    assert isinstance(e.value, VaekitError) and "\n" not in str(e.value)
    return str(e.value)


def test_uint8_images_pass_as_they_are():
    x = np.random.default_rng(0).integers(0, 256, (3, C, S, S), dtype=np.uint8)
    assert as_images(x, C, S) is x


def test_float_images_in_0_1_become_the_uint8_images_they_stand_for():
    x = np.random.default_rng(1).random((2, C, S, S)).astype(np.float32)  # what Model.decode returns
    got = as_images(x, C, S)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, images.to_uint8(x))
    assert got.mean() > 100  # not divided by 255 a second time (that would be near black)


@pytest.mark.parametrize("bad,match", [(1.5, r"\[0, 1\]"), (-0.1, r"\[0, 1\]"), (np.nan, "finite"), (np.inf, "finite")])
def test_float_images_outside_0_1_are_refused(bad, match):
    x = np.zeros((1, C, S, S), np.float64)
    x[0, 0, 0, 0] = bad
    refused(as_images, x, C, S, match=match)


def test_integer_images_must_hold_0_to_255():
    x = np.full((1, C, S, S), 200, np.int64)
    np.testing.assert_array_equal(as_images(x, C, S), x.astype(np.uint8))
    x[0, 0, 0, 0] = 300
    assert "300" in refused(as_images, x, C, S, match="0..255")
    refused(as_images, -x, C, S, match="0..255")


@pytest.mark.parametrize("dtype,name", [(np.complex64, "complex"), (bool, "bool"), (object, "object"), ("U3", "text")])
def test_other_dtypes_are_refused(dtype, name):
    refused(as_images, np.zeros((1, C, S, S), dtype), C, S, match=name)


def test_shapes_are_checked_with_a_hint_for_one_image():
    refused(as_images, np.zeros((2, 3, S, S), np.uint8), C, S, match=r"\(N, 1, 16, 16\)")
    refused(as_images, np.zeros((C, S, S), np.uint8), C, S, match=r"x\[None\]")
    refused(as_images, [np.zeros((C, S, S), np.uint8), np.zeros((C, 8, 8), np.uint8)], C, S, match="differ in shape")


def test_latent_codes_or_nhwc_floats_given_as_images_are_told_their_shape():
    # the shape is checked before the values: reconstruct(z) was told its floats lie outside [0, 1]
    # and to pass x.astype(np.uint8), which the next call then refused for its shape
    z = np.full((2, 4), -0.15, np.float32)  # what Model.encode returns
    msg = refused(as_images, z, C, S, match=r"shape \(N, 1, 16, 16\), got \(2, 4\)")
    assert "astype" not in msg
    nhwc = np.full((2, S, S, 3), 200.0)  # 0..255 floats, channels last
    refused(as_images, nhwc, 3, S, match=r"got \(2, 16, 16, 3\)")


def test_a_float_just_outside_0_1_is_named_as_it_is():
    x = np.zeros((1, C, S, S), np.float32)
    x[0, 0, 0, 0] = np.nextafter(np.float32(1), np.float32(2))  # 1.0000001: .4g printed it "1", in range
    assert "got 0..1.0000001;" in refused(as_images, x, C, S, match=r"\[0, 1\]")
    x[0, 0, 0, 0] = 255  # whole numbers still read as such
    assert "got 0..255;" in refused(as_images, x, C, S, match=r"\[0, 1\]")


def test_user_images_tells_paths_from_arrays(tmp_path):
    x = np.zeros((2, C, S, S), np.uint8)
    assert user_images(x, C, S)[0] is None and user_images(x, C, S)[1] is x
    assert user_images(str(tmp_path), C, S) == ([tmp_path], None)
    assert user_images((p for p in [tmp_path / "a.png", tmp_path / "b.png"]), C, S)[0] == \
        [tmp_path / "a.png", tmp_path / "b.png"]  # a generator of paths: read once
    paths, arr = user_images([np.zeros((C, S, S), np.uint8)] * 3, C, S)
    assert paths is None and arr.shape == (3, C, S, S)
    refused(user_images, None, C, S, match="no images given")
    refused(user_images, [], C, S, match="no images given")
    refused(user_images, 7, C, S, match="type int")
    refused(user_images, [str(tmp_path), np.zeros((C, S, S), np.uint8)], C, S, match="only paths or only arrays")


@pytest.mark.parametrize("bad", [0, -1, 1.5, "8", True, None, 1 << 20])
def test_batch_size_is_an_integer_of_at_least_one(bad):
    refused(check_batch_size, bad, match="batch_size must be an integer >= 1")


def test_batch_size_accepts_integers_and_a_default():
    assert check_batch_size(8) == 8 and check_batch_size(np.int64(3)) == 3 and check_batch_size(None, 64) == 64
    with pytest.raises(BadInput):
        check_batch_size(0, 64)  # 0 is refused, not read as the default


def test_latents_are_real_finite_and_of_the_models_width():
    np.testing.assert_array_equal(as_latents([[1, 2]], 2), np.array([[1, 2]], np.float32))
    refused(as_latents, np.zeros((1, 2), np.complex64), 2, match="real numbers")
    refused(as_latents, np.zeros((1, 3)), 2, match=r"\(N, 2\)")
    refused(as_latents, np.full((1, 2), np.nan), 2, match="finite")


# --- the Model calls the checks above ---------------------------------------------

@pytest.fixture(scope="module")
def model(tmp_path_factory):
    import vaekit
    from export_support import random_run

    return vaekit.load(random_run(tmp_path_factory.mktemp("api") / "run", image_size=S, channels=C, latent_dim=4,
                                  base_channels=4))


def test_model_scores_float_images_as_the_uint8_they_stand_for(model):
    x = np.random.default_rng(2).random((2, C, S, S)).astype(np.float32)
    np.testing.assert_allclose(model.score(x, maps=False).score, model.score(images.to_uint8(x), maps=False).score)


@pytest.mark.parametrize("call", ["score_int300", "score_complex", "iter_none", "iter_ndarray", "batch_text",
                                  "batch_zero", "batch_float", "ragged"])
def test_model_refuses_bad_arguments_with_one_line(model, call):
    x = np.zeros((2, C, S, S), np.uint8)
    calls = {
        "score_int300": lambda: model.score(np.full((1, C, S, S), 300, np.int64)),
        "score_complex": lambda: model.score(x.astype(np.complex64)),
        "iter_none": lambda: list(model.iter_scores(None)),
        "iter_ndarray": lambda: [s.score for s in model.iter_scores(np.full((1, C, S, S), 300))],
        "batch_text": lambda: list(model.iter_scores(x, batch_size="8")),
        "batch_zero": lambda: list(model.iter_scores(x, batch_size=0)),
        "batch_float": lambda: list(model.iter_scores(x, batch_size=1.5)),
        "ragged": lambda: model.encode([x[0], np.zeros((C, 8, 8), np.uint8)]),
    }
    with pytest.raises(BadInput) as e:
        calls[call]()
    assert "\n" not in str(e.value)


def test_masked_images_are_refused_unless_nothing_is_masked():
    x = np.random.default_rng(5).integers(0, 256, (2, C, S, S), dtype=np.uint8)
    hidden = np.ma.masked_array(x, mask=np.zeros_like(x, bool))
    np.testing.assert_array_equal(as_images(hidden, C, S), x)  # a mask that hides nothing reads as the data
    hidden.mask[0, 0, 3, 3] = True
    refused(as_images, hidden, C, S, match="masked pixels")
    refused(as_images, [hidden[0], x[1]], C, S, match="masked pixels")
    refused(as_images, [[hidden[0, 0]], [x[1, 0]]], C, S, match="masked pixels")  # a list of channels (h5)


def test_model_iter_scores_takes_an_array_in_batches(model):
    x = np.random.default_rng(3).integers(0, 256, (5, C, S, S), dtype=np.uint8)
    parts = list(model.iter_scores(x, batch_size=2))
    assert [len(p.score) for p in parts] == [2, 2, 1]
    np.testing.assert_allclose(np.concatenate([p.score for p in parts]), model.score(x, maps=False).score, rtol=1e-5)


def test_model_iter_scores_reads_a_generator_a_batch_at_a_time(model, tmp_path):
    # h5, 2026-12-07: iter_scores(generator) held the whole generator before the first batch
    x = np.random.default_rng(4).integers(0, 256, (5, C, S, S), dtype=np.uint8)
    drawn = []

    def images_one_by_one():
        for i, image in enumerate(x):
            drawn.append(i)
            yield image

    parts = model.iter_scores(images_one_by_one(), batch_size=2)
    first = next(parts)
    assert len(first.score) == 2 and drawn == [0, 1]
    rest = list(parts)
    assert [len(p.score) for p in rest] == [2, 1] and drawn == [0, 1, 2, 3, 4]
    got = np.concatenate([first.score] + [p.score for p in rest])
    np.testing.assert_allclose(got, model.score(x, maps=False).score, rtol=1e-5)
    files = []
    for i in range(3):
        images.save_png(x[i], tmp_path / f"{i}.png")
        files.append(tmp_path / f"{i}.png")
    by_name = list(model.iter_scores(iter(files), batch_size=2))  # a generator of paths reads as a list of them
    assert [p.name for part in by_name for p in part.paths] == ["0.png", "1.png", "2.png"]
    mixed = iter([x[0] / 255, x[1] / 255, x[2], x[3]])  # a float batch, then a uint8 one (h5, 2026-12-08)
    with pytest.raises(BadInput, match="not all of one kind"):
        list(model.iter_scores(mixed, batch_size=2))
    for bad, said in ((iter([x[0], files[0]]), "only paths or only arrays"), (iter([]), "no images given"),
                      (iter([x[0], np.zeros((C, 8, 8), np.uint8)]), "differ in shape")):
        with pytest.raises(BadInput, match=said):
            list(model.iter_scores(bad, batch_size=4))


def test_arguments_of_the_wrong_kind_are_refused_before_anything_is_written(tmp_path):
    # a helper's review, 2026-12-07: train(progress=1) raised TypeError after making the run
    # folder (which only --overwrite then cleared); a dict for a config was an AttributeError;
    # workers=1.5 trained; score(progress=5) and a run's path given as the model were TypeErrors
    from vaekit import codec
    from vaekit.config import ModelConfig, TrainConfig
    from vaekit.train import train

    from export_support import random_run

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(4):
        images.save_png(np.full((1, 16, 16), 40 * i, np.uint8), folder / f"{i}.png")
    cfg, tcfg = ModelConfig(image_size=16), TrainConfig(epochs=1)
    for kw, said in (({"progress": 1}, "progress must be a function"), ({"should_stop": True}, "should_stop must be"),
                     ({"workers": 1.5}, "workers must be an integer")):
        refused(lambda: train(folder, tmp_path / "run", cfg, tcfg, **kw), match=said)
    refused(lambda: train(folder, tmp_path / "run", {"image_size": 16}, tcfg), match="must be vaekit.config.ModelConfig")
    refused(lambda: train(None, tmp_path / "run", cfg, tcfg), match="data_dir must be a folder's path")
    assert not (tmp_path / "run").exists()
    import vaekit

    run = random_run(tmp_path / "r", image_size=16, channels=1, latent_dim=4, base_channels=4)
    m = vaekit.load(run)
    refused(lambda: m.score(folder, progress=5), match="progress must be a function")
    refused(lambda: m.load_images(folder, progress=1), match="progress must be a function")
    refused(lambda: codec.encode(str(run), folder, tmp_path / "x.vkc", quality=3), match="must be a loaded model")
    refused(lambda: codec.decode(str(run), tmp_path / "x.vkc", tmp_path / "out"), match="must be a loaded model")


def test_a_grid_of_pixels_out_of_range_is_refused_not_saturated(tmp_path):
    # floats of 0..255 and int32 arrays were written with every tile 0 or 255, NaN as black
    from vaekit import codes

    x = np.random.default_rng(0).integers(0, 256, (2, 1, 16, 16))
    for bad, said in ((x.astype(np.float32), "floats must be finite numbers in \\[0, 1\\]"),
                      (np.full((2, 1, 16, 16), np.nan), "floats must be"), (x > 9, "must be uint8"),
                      (x - 300, "integers must lie in 0..255")):
        refused(lambda: codes.write_grid(bad, tmp_path / "g.png"), match=said)
    assert not (tmp_path / "g.png").exists()
    codes.write_grid(x.astype(np.int32), tmp_path / "g.png")  # in range: the same as uint8
    codes.write_grid(x.astype(np.uint8), tmp_path / "h.png")
    assert (tmp_path / "g.png").read_bytes() == (tmp_path / "h.png").read_bytes()
