"""Student families: sizes, shapes, ONNX export with dynamic H/W, validation messages."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from distill_core.config import ConfigError
from distill_core.students import (
    STUDENTS,
    build_student,
    clamp01,
    count_macs,
    count_params,
    describe_student,
    student_features,
    validate_student,
)

# Small versions of the big families keep the tests fast; the defaults are sized separately.
SMALL = {
    "tiny_style": {},
    "johnson": {"channels": [8, 16, 32], "blocks": 2},
    "can24": {},
    "mobile_residual": {},
}


def _randomised(family: str) -> nn.Module:
    """A student in eval mode whose zero-initialised heads are perturbed (so it is no identity)."""
    torch.manual_seed(0)
    model = build_student(family, SMALL[family])
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def test_the_articles_student_is_expressible_exactly() -> None:
    model = build_student("tiny_style", {"channels": [16, 32, 64], "blocks": 3})
    # FIELD_NOTES: ~277 K parameters (~1.1 MB fp32), not the article's 23 MB.
    assert count_params(model) == 276_675
    assert isinstance(model.norm1, nn.InstanceNorm2d)
    assert count_macs(model) == 2_170_552_320


def test_johnson_is_the_full_transform_net_and_can_grow_into_a_bigger_teacher() -> None:
    assert describe_student("johnson", {})["params"] == 1_679_235
    assert count_params(build_student("johnson", {"blocks": 6})) > 1.7e6


def test_can24_has_24_channels_dilations_to_64_and_about_37k_parameters() -> None:
    model = build_student("can24", {})
    dilations = [m.dilation[0] for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert dilations == [1, 2, 4, 8, 16, 32, 64, 1, 1]
    assert 36_000 <= count_params(model) <= 38_000
    assert any(isinstance(m, nn.LeakyReLU) and m.negative_slope == 0.2 for m in model.modules())


def test_mobile_residual_default_is_small_and_cheap() -> None:
    size = describe_student("mobile_residual", {})
    assert 50_000 <= size["params"] <= 60_000
    # At most a fifth of the article's student's work at 256x256.
    assert size["macs_at_256"] * 5 <= describe_student("tiny_style", {})["macs_at_256"]


@pytest.mark.parametrize("family", sorted(STUDENTS))
@pytest.mark.parametrize("shape", [(2, 3, 32, 32), (1, 3, 40, 64), (1, 3, 64, 40)])
def test_every_family_keeps_the_image_size_at_multiples_of_8(family: str, shape: tuple) -> None:
    model = _randomised(family)
    with torch.no_grad():
        out, feats = model.features(torch.rand(shape))
    assert out.shape == shape
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert len(feats) >= 2 and all(f.dim() == 4 and f.shape[0] == shape[0] for f in feats)


@pytest.mark.parametrize("family", sorted(STUDENTS))
def test_every_family_exports_to_onnx_with_dynamic_height_and_width(family: str, tmp_path) -> None:
    model = _randomised(family)
    path = tmp_path / f"{family}.onnx"
    axes = {0: "batch", 2: "height", 3: "width"}
    torch.onnx.export(
        model,
        (torch.rand(1, 3, 64, 64),),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["input"],
        output_names=["output"],
        dynamic_axes={"input": axes, "output": axes},
    )
    onnx.checker.check_model(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in [(1, 3, 32, 32), (2, 3, 48, 40)]:
        x = np.random.default_rng(1).random(shape, dtype=np.float32)
        got = session.run(None, {"input": x})[0]
        with torch.no_grad():
            want = model(torch.from_numpy(x)).numpy()
        assert got.shape == shape
        assert np.abs(got - want).max() < 1e-4


def test_mobile_residual_exports_with_batchnorm_folded_and_int8_friendly_ops(tmp_path) -> None:
    path = tmp_path / "m.onnx"
    torch.onnx.export(
        _randomised("mobile_residual"),
        (torch.rand(1, 3, 32, 32),),
        str(path),
        dynamo=False,
        opset_version=17,
    )
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert "BatchNormalization" not in ops
    assert "InstanceNormalization" not in ops
    assert "DepthToSpace" in ops
    # No Concat: int8 would give its inputs (image and feature maps) one shared scale.
    assert ops <= {"Conv", "Clip", "Relu", "Add", "DepthToSpace", "Constant"}


@pytest.mark.parametrize("family", ["mobile_residual", "can24"])
def test_residual_and_identity_initialised_students_start_as_the_identity(family: str) -> None:
    model = build_student(family, {}).eval()
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), x, atol=1e-6)


def test_students_script_with_their_feature_maps_so_a_teacher_can_expose_layers() -> None:
    model = torch.jit.script(build_student("johnson", SMALL["johnson"]).eval())
    maps = model.feature_maps(torch.rand(1, 3, 32, 32))
    assert [m.shape[1] for m in maps] == [32, 32, 16]


def test_clamp_lets_gradients_through_while_training_and_is_a_plain_clamp_in_eval() -> None:
    y = torch.tensor([1.2, 0.5, -0.3], requires_grad=True)
    out = clamp01(y, training=True)
    assert out.tolist() == [1.0, 0.5, 0.0]
    ((out - 0.9) ** 2).sum().backward()
    assert y.grad[0] > 0  # an overshoot is still pulled back toward the target
    assert clamp01(y, training=False).tolist() == [1.0, 0.5, 0.0]


def test_count_macs_counts_a_convolution_exactly() -> None:
    conv = nn.Conv2d(3, 8, 3, padding=1)
    assert count_macs(conv, size=16) == 16 * 16 * 8 * 3 * 9
    depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
    assert count_macs(nn.Sequential(conv, depthwise), size=16) == 16 * 16 * 8 * (27 + 9)


def test_describe_student_matches_a_built_model_and_fills_defaults() -> None:
    model = build_student("mobile_residual", {"width": 16})
    assert describe_student("mobile_residual", {"width": 16}) == {
        "params": count_params(model),
        "macs_at_256": count_macs(model, 256),
    }


def test_student_features_works_for_a_model_without_feature_maps() -> None:
    out, feats = student_features(nn.Identity(), torch.rand(1, 3, 8, 8))
    assert out.shape == (1, 3, 8, 8) and feats == []


@pytest.mark.parametrize(
    ("family", "params", "message"),
    [
        (
            "tiny_style",
            {"channels": [16, 32]},
            "student.channels=[16,32]: tiny_style needs three channel counts, e.g. [16,32,64]",
        ),
        ("tiny_style", {"norm": "layer"}, 'student.norm="layer": tiny_style accepts instance'),
        ("tiny_style", {"blocks": True}, "student.blocks=true: tiny_style needs a whole number"),
        ("johnson", {"channels": [32, 64, 100000]}, "each channel count must be a whole number"),
        ("mobile_residual", {"depth": 3}, "student.depth: not a mobile_residual parameter"),
        ("mobile_residual", {"dilations": []}, "student.dilations=[]: mobile_residual needs"),
        ("mobile_residual", {"norm": "instance"}, "mobile_residual accepts batch, none"),
        ("can24", {"width": 0}, "student.width=0: can24 needs a whole number from 1 to 256"),
        ("resnet", {}, "student_family='resnet': unknown student family; choose from can24"),
    ],
)
def test_bad_student_parameters_are_refused_with_a_message_naming_the_key(
    family: str, params: dict, message: str
) -> None:
    with pytest.raises(ConfigError) as excinfo:
        validate_student(family, params)
    assert message in str(excinfo.value)
