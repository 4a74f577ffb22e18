"""Teachers by spec: OpenCV operators, ONNX and TorchScript files, and pairs."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from distill_core.teachers import OPENCV_OPS, TeacherError, load_teacher


def batch(make_image, n: int = 2, size: int = 32) -> torch.Tensor:
    images = np.stack([make_image(i, size) for i in range(n)])
    return torch.from_numpy(images.transpose(0, 3, 1, 2).astype(np.float32) / 255.0)


def conv_model(path, *, in_channels=3, out_channels=3, stride=1, shape=("N", 3, "H", "W")):
    """A one-conv ONNX model (3x3, padding 1) followed by a sigmoid; returns its weights."""
    rng = np.random.default_rng(0)
    weight = rng.normal(0, 0.3, (out_channels, in_channels, 3, 3)).astype(np.float32)
    bias = rng.normal(0, 0.1, out_channels).astype(np.float32)
    nodes = [
        helper.make_node(
            "Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], strides=[stride, stride]
        ),
        helper.make_node("Sigmoid", ["c"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "c", "h", "w"])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return torch.from_numpy(weight), torch.from_numpy(bias)


# -- opencv ------------------------------------------------------------------------------------
@pytest.mark.parametrize("op", sorted(OPENCV_OPS))
def test_each_opencv_operator_keeps_shape_and_range_and_is_deterministic(op, make_image):
    teacher = load_teacher(f"opencv:{op}")
    x = batch(make_image)
    out = teacher(x)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert torch.equal(out, teacher(x))
    assert not torch.equal(out, x)
    assert teacher.kind == "opencv" and teacher.size_bytes is None and teacher.params is None


def test_opencv_operators_chain_with_plus(make_image):
    chain = load_teacher("opencv:stylization+oilpainting")
    assert chain.spec == "opencv:stylization+oilpainting"
    single = load_teacher("opencv:stylization")
    assert chain.fingerprint != single.fingerprint
    assert chain.fingerprint == load_teacher(" opencv:Stylization+oilpainting ").fingerprint
    assert len(chain.fingerprint) == 64
    x = batch(make_image, n=1)
    assert not torch.equal(chain(x), single(x))


def test_run_numpy_matches_the_tensor_call(opencv_teacher, make_image):
    x = batch(make_image)
    out = opencv_teacher.run_numpy(x.numpy())
    assert out.dtype == np.float32 and out.shape == tuple(x.shape)
    assert np.array_equal(out, opencv_teacher(x).numpy())


def test_teachers_refuse_inputs_that_are_not_rgb_batches(opencv_teacher):
    with pytest.raises(TeacherError, match=r"\(N, 3, H, W\)"):
        opencv_teacher(torch.zeros(1, 1, 8, 8))
    with pytest.raises(TeacherError, match=r"\(N, 3, H, W\)"):
        opencv_teacher.run_numpy(np.zeros((3, 8, 8), np.float32))


def test_unknown_specs_say_what_to_write(tmp_path):
    with pytest.raises(TeacherError, match="unknown teacher 'magic'.*opencv:<operator>"):
        load_teacher("magic")
    with pytest.raises(TeacherError, match="unknown OpenCV operator cartoon; choose from"):
        load_teacher("opencv:stylization+cartoon")
    with pytest.raises(TeacherError, match="not found"):
        load_teacher(f"onnx:{tmp_path / 'missing.onnx'}")
    with pytest.raises(TeacherError, match="needs a file path"):
        load_teacher("torchscript:")


# -- onnx --------------------------------------------------------------------------------------
def test_an_onnx_teacher_runs_with_onnxruntime_and_describes_itself(tmp_path, make_image):
    path = tmp_path / "tiny.onnx"
    weight, bias = conv_model(path)
    teacher = load_teacher(f"onnx:{path}")
    assert teacher.kind == "onnx" and teacher.path == path
    assert teacher.size_bytes == path.stat().st_size
    assert teacher.params == 3 * 3 * 3 * 3 + 3
    assert teacher.fingerprint == hashlib.sha256(path.read_bytes()).hexdigest()
    assert teacher.torch_module is None
    for size in (32, 40):  # dynamic height and width
        x = batch(make_image, n=3, size=size)
        expected = torch.sigmoid(torch.nn.functional.conv2d(x, weight, bias, padding=1))
        assert torch.allclose(teacher(x), expected, atol=1e-5)
    assert teacher.info()["params"] == 84


def test_a_file_that_is_not_onnx_is_refused_by_name(tmp_path):
    path = tmp_path / "x.onnx"
    path.write_bytes(b"definitely not a protobuf \xff\xfe" * 10)
    with pytest.raises(TeacherError, match=r"^x\.onnx is not an ONNX model: "):
        load_teacher(f"onnx:{path}")
    path.write_bytes(b"")
    with pytest.raises(TeacherError, match=r"^x\.onnx is not an ONNX model: "):
        load_teacher(f"onnx:{path}")


def test_onnx_models_outside_the_image_contract_fail_at_load(tmp_path):
    conv_model(tmp_path / "gray.onnx", in_channels=1, shape=("N", 1, "H", "W"))
    with pytest.raises(TeacherError, match=r"gray\.onnx takes input of shape \(N, 1, H, W\)"):
        load_teacher(f"onnx:{tmp_path / 'gray.onnx'}")
    conv_model(tmp_path / "half.onnx", stride=2)
    with pytest.raises(TeacherError, match=r"half\.onnx turned a \(1, 3, 32, 32\) image into"):
        load_teacher(f"onnx:{tmp_path / 'half.onnx'}")
    conv_model(tmp_path / "mask.onnx", out_channels=1)
    with pytest.raises(TeacherError, match="same size as its input"):
        load_teacher(f"onnx:{tmp_path / 'mask.onnx'}")


def test_an_onnx_model_with_a_fixed_shape_runs_image_by_image(tmp_path, make_image):
    conv_model(tmp_path / "fixed.onnx", shape=(1, 3, 24, 24))
    teacher = load_teacher(f"onnx:{tmp_path / 'fixed.onnx'}")
    assert teacher(batch(make_image, n=3, size=24)).shape == (3, 3, 24, 24)
    with pytest.raises(TeacherError, match="only takes 24x24 images, got 32x32"):
        teacher(batch(make_image, n=1, size=32))


# -- torchscript -------------------------------------------------------------------------------
class Brighten(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 1.5 + 0.1 * self.conv(x)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.script is deprecated upstream
def test_a_torchscript_teacher_exposes_its_module(tmp_path, make_image):
    torch.manual_seed(0)
    module = Brighten().eval()
    path = tmp_path / "teacher.pt"
    torch.jit.script(module).save(str(path))
    teacher = load_teacher(f"torchscript:{path}")
    assert teacher.kind == "torchscript"
    assert teacher.params == 3 * 3 * 3 * 3 + 3
    assert teacher.size_bytes == path.stat().st_size
    assert teacher.fingerprint == hashlib.sha256(path.read_bytes()).hexdigest()
    assert isinstance(teacher.torch_module, torch.jit.ScriptModule)
    x = batch(make_image)
    with torch.no_grad():
        expected = module(x).clamp(0, 1)
    out = teacher(x)
    assert torch.allclose(out, expected, atol=1e-6) and not out.requires_grad
    assert out.max() == 1.0  # clamped: the module brightens past 1
    assert np.allclose(teacher.run_numpy(x.numpy()), expected.numpy(), atol=1e-6)


def test_a_pickled_checkpoint_is_not_accepted_as_torchscript(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(Brighten().state_dict(), path)
    with pytest.raises(TeacherError, match=r"weights\.pt is not a TorchScript model: .*jit"):
        load_teacher(f"torchscript:{path}")


# -- pairs -------------------------------------------------------------------------------------
def test_the_pairs_teacher_cannot_be_called():
    teacher = load_teacher("pairs")
    assert teacher.kind == "pairs" and teacher.size_bytes is None and teacher.params is None
    assert len(teacher.fingerprint) == 64
    with pytest.raises(TeacherError, match="target/"):
        teacher(torch.zeros(1, 3, 8, 8))
    with pytest.raises(TeacherError, match="target/"):
        teacher.run_numpy(np.zeros((1, 3, 8, 8), np.float32))
