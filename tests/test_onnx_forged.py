"""Exports forged on purpose, re-sealed with vaekit's own (public) checksum, which guards against
damage, not forgery (a helper's review, 2026-12-07): external data read from the working folder,
graphs that fail to run or give outputs of other shapes, metadata whose likelihood disagrees.
Each is one line and exit 2, never a traceback or a silent wrong score.

Real components: a trained 16 px export (export_support), onnx to edit it, onnxruntime to run it.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

import vaekit
from export_support import exported
from vaekit.inference.engine_onnx import OnnxModelError

onnx = pytest.importorskip("onnx")

pytestmark = pytest.mark.slow  # exports a model to ONNX (module fixture)


@pytest.fixture(scope="module")
def ex(tmp_path_factory):
    return exported(tmp_path_factory)


def test_a_graph_reads_no_external_data_from_the_working_folder(tmp_path, monkeypatch):
    # a session built from bytes resolved external data against the current folder: a forged
    # .onnx scored with the bytes of ./secret.txt summed into its output, exit 0
    from onnx import TensorProto, helper

    from vaekit.inference.onnx_session import graph_session

    (tmp_path / "secret.txt").write_bytes(b"top secret data!")
    w = TensorProto(name="w", data_type=TensorProto.UINT8, dims=[16], data_location=TensorProto.EXTERNAL)
    for k, v in {"location": "secret.txt", "offset": "0", "length": "16"}.items():
        w.external_data.add(key=k, value=v)
    graph = helper.make_graph([helper.make_node("Identity", ["w"], ["y"])], "g", [],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, [16])], [w])
    data = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(Exception, match="External data|external"):
        graph_session(data, "scorer", 1)


def _forged(ex, tmp_path, **meta):
    from vaekit.export.metadata import sealed

    m = onnx.load(str(ex.onnx))
    props = {p.key: p.value for p in m.metadata_props}
    props.update(meta)
    del m.metadata_props[:]
    onnx.helper.set_model_props(m, props)
    out = tmp_path / "forged.onnx"
    out.write_bytes(sealed(m))
    for part in ("encoder", "decoder"):
        shutil.copy(ex.onnx.with_name(f"{ex.onnx.stem}.{part}.onnx"), tmp_path / f"forged.{part}.onnx")
    return out


def test_metadata_whose_likelihood_disagrees_is_refused(ex, tmp_path):
    # the header said bernoulli, the model gaussian (or the other way): scores in the wrong units, exit 0
    model = vaekit.load(ex.onnx)
    other = "gaussian" if model.info.likelihood == "bernoulli" else "bernoulli"
    with pytest.raises(OnnxModelError, match="vaekit metadata disagree"):
        vaekit.load(_forged(ex, tmp_path, **{"vaekit.likelihood": other}))


@pytest.mark.parametrize("output,shape", [("recon", (3,)), ("mu", (2, 3)), ("x_hat", (2, 1, 16, 5)),
                                          ("pixel_map", (2, 5, 5))])
def test_outputs_of_other_shapes_are_one_line_naming_the_file(ex, output, shape):
    # numpy's broadcasting errors from deep inside the scoring (exit 3), or silent wrong scores
    model = vaekit.load(ex.onnx)
    x = model.load_images(ex.digits / "test" / "normal").images[:2]
    inner = model._scorer
    assert output in [o.name for o in inner.get_outputs()]

    class Lying:
        def run(self, wanted, feeds):
            out = inner.run(wanted, feeds)
            return [np.zeros(shape, a.dtype) if n == output else a for n, a in zip(wanted, out)]

        def get_outputs(self):
            return inner.get_outputs()

    model._scorer = Lying()
    with pytest.raises(OnnxModelError, match=f"its output '{output}' has shape") as e:
        model.score(x)
    assert "\n" not in str(e.value) and str(ex.onnx) in str(e.value)


def test_a_graph_that_fails_to_run_is_one_line(ex):
    # onnxruntime's RuntimeException (a forged graph's bad_alloc) was a traceback, exit 3
    model = vaekit.load(ex.onnx)
    x = model.load_images(ex.digits / "test" / "normal").images[:2]
    inner = model._scorer

    class Failing:
        def run(self, wanted, feeds):
            raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : bad_alloc\nmore lines")

        def get_outputs(self):
            return inner.get_outputs()

    model._scorer = Failing()
    with pytest.raises(OnnxModelError, match="failed to run: .*bad_alloc$") as e:
        model.score(x)
    assert "\n" not in str(e.value)
    with pytest.raises(OnnxModelError, match="its output 'mu' has shape"):
        model._sessions["encoder"] = type("E", (), {"run": lambda self, w, f: [np.zeros((2, 9), np.float32)] * 2})()
        model.encode(x)
