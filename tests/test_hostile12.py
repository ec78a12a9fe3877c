"""The twelfth hostile round: what the last closing note left alone (a .vkc whose chunk table is
damaged, links out of the web app's data root, the library's image size, non-finite thresholds,
links called files, a Train slot that leaked)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from test_codec import _digits
from vaekit.codec import container
from vaekit.codec.header import Reader, pack, varint
from vaekit.errors import BadInput, CannotWrite, VaekitError
from vaekit_cli.main import app

runner = CliRunner()
GOLDEN = Path(__file__).parent / "golden"


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


# --- 1. a .vkc's chunk table is checked by the checksum before it is read --------------------

@pytest.fixture(scope="module")
def vkc(tmp_path_factory):
    """A run and a lossless .vkc of 12 images written by vaekit's own encode."""
    from export_support import random_run

    root = tmp_path_factory.mktemp("hostile12-vkc")
    run = random_run(root / "run", image_size=16, channels=1, latent_dim=4, base_channels=4, likelihood="logistic")
    _digits(root / "src", 12)
    r = invoke("encode", run, root / "src", "-o", root / "a.vkc", "--lossless")
    assert r.exit_code == 0, r.output
    return run, root / "a.vkc"


def _chunk_table(data: bytes) -> range:
    """The byte positions of a format-3 .vkc's chunk table (its count, then [images, words] pairs)."""
    r = Reader(data[4:])
    n = r.varint()
    offset = 4 + r.pos
    h = Reader(data[offset:offset + n])
    h.take(3), h.varint(), h.varint(), h.take(16)
    start = offset + h.pos
    for _ in range(h.varint()):
        h.varint(), h.varint()
    return range(start, offset + h.pos)


@pytest.mark.parametrize("flip", [0x01, 0x02, 0x40])
def test_a_flipped_byte_in_the_chunk_table_is_refused_by_the_checksum(vkc, tmp_path, flip):
    # a flipped bit in a chunk's word count was trusted before the checksum: "is truncated (2342
    # bytes, its header describes 2346)", of a file that had every byte it was written with
    run, path = vkc
    data = path.read_bytes()
    table = _chunk_table(data)
    assert len(table) >= 3  # the count, one chunk's images and its words
    for i in table:
        bad = bytearray(data)
        bad[i] ^= flip
        (tmp_path / "d.vkc").write_bytes(bytes(bad))
        r = invoke("decode", run, tmp_path / "d.vkc", "-o", tmp_path / "out")
        assert r.exit_code == 2, (i, r.output)
        assert "its checksum does not match its contents" in r.output, (i, r.output)
        assert r.output.strip().count("\n") == 0 and "Traceback" not in r.output
        assert not (tmp_path / "out").exists()


def test_a_file_cut_short_still_says_truncated_in_its_one_line(vkc, tmp_path):
    run, path = vkc
    data = path.read_bytes()
    (tmp_path / "cut.vkc").write_bytes(data[:-3])
    r = invoke("decode", run, tmp_path / "cut.vkc", "-o", tmp_path / "out")
    assert r.exit_code == 2 and "truncated" in r.output and r.output.strip().count("\n") == 0
    assert not (tmp_path / "out").exists()


def test_a_chunk_table_forged_with_a_fitting_checksum_is_an_invalid_header(vkc, tmp_path):
    # the checksum fits, so the file is as its writer made it: a table that describes another
    # length is named as the header's fault, not as truncation
    run, path = vkc
    header, offset = container.read_header(path)
    data = path.read_bytes()
    header.chunks = [[header.chunks[0][0], header.chunks[0][1] + 1]]
    head = pack(header)
    body = container.MAGIC + varint(len(head)) + head + data[offset:-container.DIGESTS[container.MAGIC]]
    (tmp_path / "f.vkc").write_bytes(body + hashlib.sha256(body).digest()[:container.DIGESTS[container.MAGIC]])
    r = invoke("decode", run, tmp_path / "f.vkc", "-o", tmp_path / "out")
    assert r.exit_code == 2 and "has an invalid header: it describes a file of" in r.output
    assert not (tmp_path / "out").exists()


# --- 2. the web app reads no link that leads out of its data folder ---------------------------

def _handler(app, api_name: str):
    return next(f.fn for f in app.fns.values() if f.api_name == api_name)


def _press(app, api_name: str, *args):
    """A handler's answer as the page gets it: gr.Error's message, or the result."""
    import gradio as gr

    try:
        got = _handler(app, api_name)(*args)
        return list(got) if hasattr(got, "__next__") else got
    except gr.Error as e:
        return e.message


@pytest.fixture()
def data(tmp_path):
    """data/cats (two images), data/dogs (one), and outside/ (a secret image) beside data/."""
    from PIL import Image

    for rel in ("data/cats/a.png", "data/cats/b.png", "data/dogs/c.png", "outside/secret.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (16, 16), 90).save(tmp_path / rel)
    return tmp_path


@pytest.mark.parametrize("link, target", [("cats/evil.png", "outside/secret.png"), ("cats/out", "outside"),
                                          ("cats/deep/evil.PNG", "outside/secret.png")])
def test_a_link_in_a_train_folder_that_leads_outside_the_data_root_is_refused_by_name(data, link, target):
    from vaekit_demo.app import build_app

    (data / "data" / link).parent.mkdir(parents=True, exist_ok=True)
    os.symlink(data / target, data / "data" / link)
    app = build_app(None, runs_dir=data / "runs", workdir=data / "work", data_root=data / "data")
    said = _press(app, "train", "cats", 16, 4, 1)
    assert isinstance(said, str) and f"{link} is a symbolic link to outside the app's data folder" in said
    assert str(data) not in said and "secret" not in said  # the page shows no server path, nor the target
    assert not (data / "runs").exists()  # nothing begun


def test_a_link_chain_through_an_inside_folder_to_outside_is_refused_and_inside_links_are_followed(data):
    # the web app's check is the library's scan, confined to --data-root (it walked the folder first)
    from vaekit.images import find_images

    root = data / "data"
    os.symlink(root / "dogs", root / "cats" / "dogs")  # stays inside: fine
    os.symlink(root / "cats" / "a.png", root / "dogs" / "a_again.png")
    os.symlink(root / "cats", root / "cats" / "loop")  # a loop inside: followed once
    (root / "cats" / "notes.txt").symlink_to(data / "outside" / "secret.png")  # not an image name: never read
    found = [p.relative_to(root / "cats").as_posix() for p in find_images(root / "cats", confine_to=root)]
    assert found == ["a.png", "b.png", "dogs/a_again.png", "dogs/c.png"]
    os.symlink(data / "outside", root / "dogs" / "more")  # reached through cats/dogs
    with pytest.raises(BadInput, match=rf"^{root}/cats/dogs/more is a symbolic link to outside {root},") as e:
        find_images(root / "cats", confine_to=root)
    assert isinstance(e.value, VaekitError) and e.value.exit_code == 2


def test_the_latent_tab_refuses_a_folder_with_a_link_out_too(data):
    from vaekit_demo.app import build_app

    os.symlink(data / "outside" / "secret.png", data / "data" / "dogs" / "x.jpg")
    # with a model open: the link is refused by the library's scan of the folder, after "no model is open"
    app = build_app(GOLDEN / "codec" / "run", runs_dir=data / "runs", workdir=data / "work", data_root=data / "data")
    said = _press(app, "latent", "dogs", "PCA", 10)
    assert isinstance(said, str) and "dogs/x.jpg is a symbolic link to outside the app's data folder" in said


# --- 6. a Train press whose run folder cannot be named gives its slot back ---------------------

def test_a_train_press_failing_before_its_worker_starts_releases_its_slot(data, monkeypatch):
    from vaekit_demo import context
    from vaekit_demo.app import build_app

    def no_run_dir(self, folder):
        raise CannotWrite(f"cannot write {self.st.runs_dir}: No space left on device")

    monkeypatch.setattr(context, "MAX_TRAININGS", 1)
    monkeypatch.setattr(context.Context, "new_run_dir", no_run_dir)
    app = build_app(None, runs_dir=data / "runs", workdir=data / "work", data_root=data / "data")
    for _ in range(3):  # with the slot leaked, the second press said "the app is running 1 training(s) already"
        said = _press(app, "train", "cats", 16, 4, 1)
        assert isinstance(said, str) and "No space left on device" in said, said


# --- 4. a threshold that is not a finite number is refused, never drawn -----------------------

@pytest.fixture(scope="module")
def golden_app(tmp_path_factory):
    """The app on the golden run, built once for the slider's cases: its handler keeps no state
    (demo/tabs.py rethreshold: it reads the threshold it is given and draws)."""
    from vaekit_demo.app import build_app

    root = tmp_path_factory.mktemp("slider")
    return build_app(GOLDEN / "codec" / "run", runs_dir=root / "runs", workdir=root / "work", data_root=root)


@pytest.mark.parametrize("thr", [float("nan"), float("inf"), -float("inf"), None, "0.5"])
def test_the_threshold_slider_refuses_a_threshold_that_is_not_a_finite_number(golden_app, thr):
    # with no uploads the slider's handler only redraws the histogram: it drew "threshold nan" at NaN
    app = golden_app
    said = _press(app, "threshold", None, thr)
    assert said == f"invalid threshold {thr!r}: expected a finite number"
    figure = _press(app, "threshold", None, 1.5)[1]
    assert "threshold 1.50" in [t.get_text() for t in figure.axes[0].get_legend().get_texts()]


# --- 5. a link to a file is called one ----------------------------------------------------------

def _link_to_a_file(tmp_path) -> Path:
    (tmp_path / "notes.txt").write_text("mine")
    os.symlink("notes.txt", tmp_path / "lnk")
    return tmp_path / "lnk"


@pytest.mark.parametrize("args", [["sample-data", "digits", "{lnk}/d"], ["sample-data", "digits", "{lnk}"],
                                  ["train", "{data}", "--out", "{lnk}", "--epochs", "1"]])
def test_an_output_under_a_link_to_a_file_names_the_link(tmp_path, args):
    # was "lnk is a file, not a folder": the user looked for a file they never made
    lnk = _link_to_a_file(tmp_path)
    (tmp_path / "data").mkdir()
    _digits(tmp_path / "data", 2)
    r = invoke(*[a.format(lnk=lnk, data=tmp_path / "data") for a in args])
    assert r.exit_code == 2 and f"{lnk} is a link to a file (notes.txt), not a folder" in r.output, r.output
    assert r.output.strip().count("\n") == 0
    assert (tmp_path / "notes.txt").read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == [
        "data", "lnk", "notes.txt"]


def test_not_a_folder_tells_a_file_a_link_to_one_a_broken_link_and_a_loop_apart(tmp_path):
    from vaekit.errors import not_a_folder

    lnk = _link_to_a_file(tmp_path)
    os.symlink("nowhere", tmp_path / "dangling")
    os.symlink("loop", tmp_path / "loop")
    assert not_a_folder(tmp_path / "notes.txt") == f"{tmp_path / 'notes.txt'} is a file, not a folder"
    assert not_a_folder(lnk) == f"{lnk} is a link to a file (notes.txt), not a folder"
    assert not_a_folder(tmp_path / "dangling") == f"{tmp_path / 'dangling'} is a link to nothing (nowhere)"
    assert not_a_folder(tmp_path / "loop") == f"{tmp_path / 'loop'} is a symbolic link loop"


# --- 3. the library and the CLI agree on image sizes (17 is taken by both) ------------------------

@pytest.mark.parametrize("size, cli_says", [(15, "--image-size must be from 16 to 1024"), (17, "no image files found"),
                                            (-16, "--image-size must be from 16 to 1024")])
def test_the_cli_and_the_library_take_and_refuse_the_same_image_sizes(tmp_path, size, cli_says):
    # reported as "the library accepts 17, the CLI refuses it": both take it (a model of 17 px
    # trains); the CLI builds the library's ModelConfig, so the rule is one, in vaekit.config
    from vaekit.config import ModelConfig

    (tmp_path / "empty").mkdir()
    r = invoke("train", tmp_path / "empty", "--image-size", size, "--out", tmp_path / "r")
    assert r.exit_code == 2 and cli_says in r.output, r.output
    if size >= 16:
        assert ModelConfig(image_size=size).image_size == size
    else:
        with pytest.raises(BadInput, match=f"image size must be an integer from 16 to 1024 .or 0 for auto., got {size}"):
            ModelConfig(image_size=size)
