"""int8 (static QDQ) and fp16 variants: real quantized ops, real size savings, close to fp32."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import helper
from torch import nn

from distill_core import quantize
from distill_core.export import export_onnx, read_metadata, run_onnx
from distill_core.quantize import QuantizeError, convert_fp16, op_counts, quantize_int8
from distill_core.students import build_student, count_params


def trained_looking(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial weights and BatchNorm statistics (fresh students start at the identity)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * 0.05)
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2, generator=gen)
                module.running_var.uniform_(0.5, 1.5, generator=gen)
    return model.eval()


def smooth_images(n: int, size: int = 48, seed: int = 0) -> np.ndarray:
    """Random but photo-like (smooth) NCHW float32 images in [0, 1]."""
    coarse = torch.from_numpy(np.random.default_rng(seed).random((n, 3, 6, 6), dtype=np.float32))
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False).numpy()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((a.astype(np.float64) - b) ** 2)))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("quantize")


@pytest.fixture(scope="module")
def small_fp32(workdir):
    """Our own family at its default size (~56 K parameters)."""
    model = trained_looking(build_student("mobile_residual", {}))
    assert count_params(model) < 100_000
    return export_onnx(model, workdir / "small_fp32.onnx", run_id="run-7", config_hash="abc123")


@pytest.fixture(scope="module")
def article_fp32(workdir):
    """The article's student exactly: tiny_style [16,32,64] x 3 blocks (~277 K parameters)."""
    model = trained_looking(build_student("tiny_style", {"channels": [16, 32, 64], "blocks": 3}))
    assert count_params(model) >= 250_000
    return export_onnx(model, workdir / "article_fp32.onnx", run_id="run-8", config_hash="def456")


@pytest.fixture(scope="module")
def calibration():
    return smooth_images(8, seed=1)


@pytest.fixture(scope="module")
def test_images():
    return smooth_images(3, seed=2)


@pytest.fixture(scope="module")
def small_int8(small_fp32, calibration, workdir):
    return quantize_int8(small_fp32, workdir / "small_int8.onnx", calibration)


@pytest.fixture(scope="module")
def article_int8(article_fp32, calibration, workdir):
    return quantize_int8(article_fp32, workdir / "article_int8.onnx", calibration)


def weight_dequantized_convs(path) -> tuple[int, int]:
    """(Convs whose weight comes through DequantizeLinear, all Convs)."""
    graph = onnx.load(str(path)).graph
    producers = {out: node.op_type for node in graph.node for out in node.output}
    convs = [node for node in graph.node if node.op_type == "Conv"]
    quantized = [c for c in convs if producers.get(c.input[1]) == "DequantizeLinear"]
    return len(quantized), len(convs)


def test_int8_holds_quantize_dequantize_pairs_and_int8_weights(small_int8):
    counts = op_counts(small_int8)
    assert counts["QuantizeLinear"] > 0 and counts["DequantizeLinear"] > 0
    model = onnx.load(str(small_int8))
    int8 = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8]
    assert sum(np.prod(i.dims) for i in int8) > 40_000  # the conv weights, not a token tensor
    quantized, convs = weight_dequantized_convs(small_int8)
    assert quantized == convs > 0
    assert "ConvInteger" not in counts  # what quantize_dynamic would have made


def test_the_articles_student_in_int8_is_at_least_3_5x_smaller(article_fp32, article_int8):
    ratio = article_fp32.stat().st_size / article_int8.stat().st_size
    assert ratio >= 3.5, f"int8 only {ratio:.2f}x smaller"


def test_a_small_student_in_int8_is_at_least_2x_smaller(small_fp32, small_int8):
    ratio = small_fp32.stat().st_size / small_int8.stat().st_size
    assert ratio >= 2.0, f"int8 only {ratio:.2f}x smaller"


def test_int8_runs_on_the_cpu_close_to_fp32(small_fp32, small_int8, test_images):
    fp32 = run_onnx(small_fp32, test_images)
    int8 = run_onnx(small_int8, test_images)
    assert int8.shape == fp32.shape and int8.dtype == np.float32
    # The quantization error must be far smaller than what the model itself does to the image.
    model_change = psnr(fp32, test_images)
    assert psnr(int8, fp32) > max(30.0, model_change + 10.0)


def test_16_bit_activations_lose_less_than_8_bit(article_fp32, article_int8, calibration, workdir):
    images = smooth_images(2, seed=3)
    fp32 = run_onnx(article_fp32, images)
    int16 = quantize_int8(
        article_fp32, workdir / "article_a16.onnx", calibration, activation_type="uint16"
    )
    a16, a8 = psnr(run_onnx(int16, images), fp32), psnr(run_onnx(article_int8, images), fp32)
    # Measured: ~38 dB vs ~28 dB on this untrained net (InstanceNorm amplifies activation error).
    assert a16 > max(35.0, a8 + 6.0)


def test_excluding_first_and_last_conv_keeps_their_weights_float(small_fp32, calibration, workdir):
    path = quantize_int8(
        small_fp32, workdir / "small_int8_ends.onnx", calibration, exclude_first_last=True
    )
    quantized, convs = weight_dequantized_convs(path)
    assert quantized == convs - 2
    assert "first/last conv kept fp32" in read_metadata(path)["quantization"]
    run_onnx(path, smooth_images(1))


def test_int8_keeps_the_run_metadata_and_says_how_it_was_made(small_int8, calibration):
    meta = read_metadata(small_int8)
    assert meta["run_id"] == "run-7" and meta["config_hash"] == "abc123"
    assert meta["input_spec"] == "float32 NCHW RGB in [0,1]"
    assert meta["precision"] == "int8"
    assert f"on {len(calibration)} images" in meta["quantization"]
    assert "static QDQ" in meta["quantization"]


def test_calibration_that_is_not_nchw_rgb_is_refused(small_fp32, workdir):
    with pytest.raises(QuantizeError, match="NCHW float32 array of RGB images"):
        quantize_int8(small_fp32, workdir / "x.onnx", np.zeros((2, 48, 48, 3), np.float32))


def test_an_unknown_activation_type_is_refused(small_fp32, calibration, workdir):
    with pytest.raises(QuantizeError, match="uint16"):
        quantize_int8(small_fp32, workdir / "x.onnx", calibration, activation_type="int4")


def test_a_model_with_nothing_to_quantize_is_refused(workdir, calibration):
    dims = ["batch", 3, "height", "width"]
    graph = helper.make_graph(
        [helper.make_node("Sqrt", ["input"], ["output"])],
        "no-weights",
        [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("output", onnx.TensorProto.FLOAT, dims)],
    )
    path = workdir / "sqrt.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(QuantizeError, match="nothing ORT could quantize"):
        quantize_int8(path, workdir / "sqrt_int8.onnx", calibration)


def test_there_is_no_dynamic_quantization_path():
    # quantize_dynamic makes ConvInteger on convs, which the CPU provider cannot run.
    assert not hasattr(quantize, "quantize_dynamic")


def test_fp16_is_about_half_the_size_with_float32_input_and_output(
    small_fp32, workdir, test_images
):
    path = convert_fp16(small_fp32, workdir / "small_fp16.onnx")
    assert path.stat().st_size <= 0.6 * small_fp32.stat().st_size
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    out = run_onnx(path, test_images)
    assert out.dtype == np.float32
    assert psnr(out, run_onnx(small_fp32, test_images)) > 50.0
    meta = read_metadata(path)
    assert meta["precision"] == "fp16" and meta["run_id"] == "run-7"
