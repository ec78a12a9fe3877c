"""Tests for vaekit.sample_data: the digits and synthetic-parts data-set writers."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vaekit import sample_data
from vaekit.sample_data import write_digits, write_shapes
from vaekit.sample_data.shapes import render_shape

FOLDERS = ["train", "test/normal", "test/anomalous"]
NAME = re.compile(r"digit(\d)_(\d{4})\.png")


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.png"))


def _parse(folder: Path) -> list[tuple[int, int]]:
    """(label, index) for every digit file in folder."""
    out = []
    for name in _names(folder):
        m = NAME.fullmatch(name)
        assert m, name
        out.append((int(m[1]), int(m[2])))
    return out


def _read_tree(root: Path) -> dict[str, bytes]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


@pytest.fixture(scope="module")
def digits_source():
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images, d.target


# --------------------------------------------------------------------------------------------
# digits


@pytest.fixture(scope="module")
def digits3(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits3")
    calls = []
    report = write_digits(
        root, normal=3, size=24, seed=5, progress=lambda done, total: calls.append((done, total))
    )
    return root, report, calls


def test_digits_counts_match_class_sizes(digits3, digits_source):
    root, report, _ = digits3
    _, labels = digits_source
    n_class = int((labels == 3).sum())
    n_test = round(n_class * 0.2)
    expected = {"train": n_class - n_test, "test/normal": n_test, "test/anomalous": 200}
    assert report.counts == expected
    assert report.root == root
    assert {f: len(_names(root / f)) for f in FOLDERS} == expected
    assert (root / "README.txt").read_text().strip()


def test_digits_files_are_grayscale_at_requested_size(digits3):
    root, _, _ = digits3
    for folder in FOLDERS:
        for path in sorted((root / folder).glob("*.png")):
            with Image.open(path) as img:
                assert img.mode == "L"
                assert img.size == (24, 24)


def test_digits_labels_in_names_are_true_and_split_correctly(digits3, digits_source):
    root, _, _ = digits3
    _, labels = digits_source
    train, test_normal, anomalous = (_parse(root / f) for f in FOLDERS)
    for label, index in train + test_normal + anomalous:
        assert labels[index] == label  # the name tells the user the true label
    assert {lab for lab, _ in train} == {3}
    assert {lab for lab, _ in test_normal} == {3}
    assert all(lab != 3 for lab, _ in anomalous)
    train_idx, test_idx = {i for _, i in train}, {i for _, i in test_normal}
    assert not train_idx & test_idx
    assert train_idx | test_idx == set(np.flatnonzero(labels == 3).tolist())


def test_digits_anomalies_are_balanced_across_other_classes(digits3):
    root, _, _ = digits3
    per_class = np.bincount([lab for lab, _ in _parse(root / "test/anomalous")], minlength=10)
    others = np.delete(per_class, 3)
    assert others.sum() == 200
    assert others.max() - others.min() <= 1  # 200 = 9 * 22 + 2


def test_digits_progress_counts_every_file(digits3):
    _, report, calls = digits3
    total = sum(report.counts.values())
    assert calls == [(i, total) for i in range(1, total + 1)]


def test_digits_pixels_are_the_source_scaled_to_8_bit(tmp_path, digits_source):
    images, _ = digits_source
    write_digits(tmp_path, normal=7, size=8, n_anomalous=20)
    for label, index in _parse(tmp_path / "train")[:20]:
        with Image.open(tmp_path / "train" / f"digit{label}_{index:04d}.png") as img:
            pixels = np.asarray(img)
        np.testing.assert_array_equal(pixels, np.rint(images[index] * 255 / 16).astype(np.uint8))


@pytest.mark.slow  # writes the whole scikit-learn digits set again
def test_digits_all_anomalies_when_n_anomalous_is_none(tmp_path, digits_source):
    _, labels = digits_source
    report = write_digits(tmp_path, normal=0, size=8, n_anomalous=None)
    assert report.counts["test/anomalous"] == int((labels != 0).sum())
    assert len(_names(tmp_path / "test/anomalous")) == int((labels != 0).sum())


@pytest.mark.slow  # writes the whole scikit-learn digits set again
def test_digits_are_deterministic_for_a_seed(tmp_path):
    kwargs = dict(normal=5, size=16, n_anomalous=30, seed=11)
    write_digits(tmp_path / "a", **kwargs)
    write_digits(tmp_path / "b", **kwargs)
    assert _read_tree(tmp_path / "a") == _read_tree(tmp_path / "b")
    write_digits(tmp_path / "c", **{**kwargs, "seed": 12})
    assert _names(tmp_path / "c/test/normal") != _names(tmp_path / "a/test/normal")


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(normal=12), "normal class must be 0..9, got 12"),
        (dict(normal=-1), "-1"),
        (dict(size=7), "size .*got 7"),
        (dict(test_fraction=1.0), "test_fraction.*1.0"),
        (dict(n_anomalous=0), "n_anomalous.*got 0"),
        (dict(n_anomalous=5000), "n_anomalous.*got 5000"),
        (dict(seed=-3), "seed.*-3"),
    ],
)
def test_digits_rejects_bad_arguments_before_writing(tmp_path, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        write_digits(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_digits_refuse_to_overwrite_unless_asked(tmp_path):
    write_digits(tmp_path, normal=1, size=8, n_anomalous=10)
    (tmp_path / "train" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=re.escape(str(tmp_path))):
        write_digits(tmp_path, normal=2, size=8, n_anomalous=10)
    assert {lab for lab, _ in _parse(tmp_path / "train")} == {1}  # untouched

    report = write_digits(tmp_path, normal=2, size=8, n_anomalous=10, overwrite=True)
    assert {lab for lab, _ in _parse(tmp_path / "train")} == {2}  # no stale digit1 files
    assert {lab for lab, _ in _parse(tmp_path / "test/normal")} == {2}
    assert len(_names(tmp_path / "test/anomalous")) == report.counts["test/anomalous"] == 10
    assert (tmp_path / "train" / "notes.txt").read_text() == "mine"  # only our PNGs removed


# --------------------------------------------------------------------------------------------
# shapes


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    report = write_shapes(root, n_train=40, n_test_normal=12, n_test_anomalous=40, seed=2)
    return root, report


def _load(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


def test_shapes_counts_and_layout(shapes):
    root, report = shapes
    expected = {"train": 40, "test/normal": 12, "test/anomalous": 40, "test/masks": 40}
    assert report.counts == expected
    assert {f: len(_names(root / f)) for f in expected} == expected
    assert _names(root / "train")[:2] == ["part_0000.png", "part_0001.png"]
    # Exactly the anomalous images have masks: normal ones have none.
    assert _names(root / "test/masks") == _names(root / "test/anomalous")
    assert (root / "README.txt").read_text().strip()


def test_shapes_test_images_are_not_copies_of_training_images(shapes):
    root, _ = shapes
    train = {p.read_bytes() for p in (root / "train").glob("*.png")}
    assert len(train) == 40
    for folder in ("test/normal", "test/anomalous"):
        assert not train & {p.read_bytes() for p in (root / folder).glob("*.png")}
    for i in range(12):  # not even the parts under the defects
        clean, _ = render_shape(2, "test/anomalous", i, 64, defect=False)
        assert not any(np.array_equal(clean, _load(p)) for p in (root / "train").glob("*.png"))


def test_shapes_images_are_rgb_and_masks_binary(shapes):
    root, _ = shapes
    for folder in FOLDERS:
        for path in sorted((root / folder).glob("*.png")):
            with Image.open(path) as img:
                assert (img.mode, img.size) == ("RGB", (64, 64))
    for path in sorted((root / "test/masks").glob("*.png")):
        with Image.open(path) as img:
            assert (img.mode, img.size) == ("L", (64, 64))
            assert set(np.unique(np.asarray(img)).tolist()) <= {0, 255}


def test_shapes_defects_have_sane_areas(shapes):
    root, _ = shapes
    areas = np.array([(_load(p) > 0).mean() for p in sorted((root / "test/masks").glob("*.png"))])
    assert areas.min() > 0.003  # every anomaly has a visible defect
    assert areas.max() < 0.10  # and none takes over the image
    assert 0.01 <= areas.mean() <= 0.06


def test_shapes_normals_look_alike_and_defects_do_not_give_themselves_away(shapes):
    root, _ = shapes
    normal = [_load(p).mean() for f in ("train", "test/normal") for p in (root / f).glob("*.png")]
    anomalous = [_load(p).mean() for p in (root / "test/anomalous").glob("*.png")]
    assert np.std(normal) / np.mean(normal) < 0.1
    # A detector that only looks at mean brightness should not separate the classes.
    inside = np.mean([min(normal) <= m <= max(normal) for m in anomalous])
    assert inside >= 0.75
    assert abs(np.mean(anomalous) - np.mean(normal)) < 2 * np.std(normal)


def test_shapes_masks_cover_where_the_defect_changed_the_part(shapes):
    """Rebuild each anomalous part without its defect: the change must sit under the mask."""
    root, _ = shapes
    for i, path in enumerate(sorted((root / "test/anomalous").glob("*.png"))):
        clean, _ = render_shape(2, "test/anomalous", i, 64, defect=False)
        diff = np.abs(_load(path).astype(float) - clean.astype(float)).max(axis=2)
        mask = _load(root / "test/masks" / path.name) > 0
        assert diff[mask].mean() > 25, path.name  # clearly visible (10% of full scale)
        changed = diff > 30
        assert (changed & mask).sum() / (changed | mask).sum() > 0.5, path.name  # mask fits
        # Away from the mask nothing changes; within 5 px, allow the anti-aliased edge and
        # the shadow that a missing piece no longer casts.
        near = mask.copy()
        for dy in range(-5, 6):
            for dx in range(-5, 6):
                near |= np.roll(mask, (dy, dx), axis=(0, 1))
        assert diff[~near].max() <= 2, path.name


def test_shapes_are_deterministic_for_a_seed(tmp_path):
    kwargs = dict(n_train=5, n_test_normal=2, n_test_anomalous=6, size=32, seed=9)
    write_shapes(tmp_path / "a", **kwargs)
    write_shapes(tmp_path / "b", **kwargs)
    assert _read_tree(tmp_path / "a") == _read_tree(tmp_path / "b")
    write_shapes(tmp_path / "c", **{**kwargs, "seed": 10})
    a, c = _read_tree(tmp_path / "a"), _read_tree(tmp_path / "c")
    assert a.keys() == c.keys()
    assert all(a[k] != c[k] for k in a if k.endswith(".png"))


def test_shapes_folders_do_not_depend_on_other_counts(tmp_path):
    write_shapes(tmp_path / "a", n_train=3, n_test_normal=1, n_test_anomalous=4, size=32)
    write_shapes(tmp_path / "b", n_train=7, n_test_normal=0, n_test_anomalous=4, size=32)
    a, b = _read_tree(tmp_path / "a"), _read_tree(tmp_path / "b")
    for key in a:
        if key.startswith(("test/anomalous", "test/masks")) or key.startswith("train/part_000"):
            assert a[key] == b[key], key


@pytest.mark.parametrize("size", [16, 48, 100])
def test_shapes_size_is_respected(tmp_path, size):
    calls = []
    write_shapes(tmp_path, n_train=2, n_test_normal=1, n_test_anomalous=3, size=size,
                 progress=lambda d, t: calls.append((d, t)))  # fmt: skip
    for folder in [*FOLDERS, "test/masks"]:
        for path in (tmp_path / folder).glob("*.png"):
            assert _load(path).shape[:2] == (size, size)
    for path in (tmp_path / "test/masks").glob("*.png"):
        assert (_load(path) > 0).any()
    assert calls == [(i, 6) for i in range(1, 7)]


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(size=15), "size .*got 15"),
        (dict(n_train=-1), "n_train.*-1"),
        (dict(n_test_anomalous=2.5), "n_test_anomalous.*2.5"),
        (dict(seed=-1), "seed.*-1"),
    ],
)
def test_shapes_rejects_bad_arguments(tmp_path, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        write_shapes(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_shapes_refuse_to_overwrite_unless_asked(tmp_path):
    write_shapes(tmp_path, n_train=3, n_test_normal=1, n_test_anomalous=3, size=32)
    with pytest.raises(FileExistsError, match=re.escape(str(tmp_path))):
        write_shapes(tmp_path, n_train=2, n_test_normal=1, n_test_anomalous=1, size=32)
    assert len(_names(tmp_path / "train")) == 3
    write_shapes(tmp_path, n_train=2, n_test_normal=1, n_test_anomalous=1, size=32, overwrite=True)
    assert len(_names(tmp_path / "train")) == 2
    assert _names(tmp_path / "test/anomalous") == ["part_0000.png"]
    assert _names(tmp_path / "test/masks") == ["part_0000.png"]


# --------------------------------------------------------------------------------------------


def test_module_imports_no_torch_and_sklearn_only_lazily():
    """The CPU-only install has no torch or sklearn; importing this package must not need them."""
    for path in sorted(Path(sample_data.__file__).parent.glob("*.py")):
        tree = ast.parse(path.read_text())
        top = set()
        for node in tree.body:
            if isinstance(node, ast.Import):
                top |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                top.add(node.module)
        outside = {m.split(".")[0] for m in top if not m.startswith("vaekit.")}
        assert outside <= {"__future__", "collections", "dataclasses", "pathlib", "numpy", "PIL"}, path
        assert {m for m in top if m.startswith("vaekit.")} <= {"vaekit.errors", "vaekit.progress", "vaekit.sample_data.common",
                                                              "vaekit.sample_data.digits", "vaekit.sample_data.shapes"}
        everywhere = {
            (a.name if isinstance(n, ast.Import) else n.module or "").split(".")[0]
            for n in ast.walk(tree)
            if isinstance(n, (ast.Import, ast.ImportFrom))
            for a in n.names
        }
        assert "torch" not in everywhere, path
