"""ONNX export: one file, dynamic N/H/W, the input contract in metadata, parity with torch."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from distill_core.checksums import sha256_file
from distill_core.export import (
    IMAGE_SPEC,
    ExportError,
    _export_dynamo,
    check_parity,
    export_onnx,
    read_metadata,
    run_onnx,
)
from distill_core.students import build_student


def trained_looking(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give a fresh student non-trivial weights and BatchNorm statistics, as training would."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * 0.1)
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2, generator=gen)
                module.running_var.uniform_(0.5, 1.5, generator=gen)
                module.weight.uniform_(0.5, 1.5, generator=gen)
                module.bias.uniform_(-0.1, 0.1, generator=gen)
    return model.eval()


@pytest.fixture(scope="module")
def student() -> nn.Module:
    return trained_looking(build_student("mobile_residual", {"width": 16, "blocks": 2}))


@pytest.fixture(scope="module")
def exported(student, tmp_path_factory):
    path = tmp_path_factory.mktemp("export") / "student_fp32.onnx"
    return export_onnx(student, path, run_id="run-42", config_hash="cafe1234")


def images(n: int, height: int = 32, width: int = 32, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, height, width), dtype=np.float32)


def test_it_writes_one_checked_file_with_dynamic_batch_height_and_width(exported):
    model = onnx.load(str(exported))
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["output"]
    for value in (model.graph.input[0], model.graph.output[0]):
        dims = value.type.tensor_type.shape.dim
        assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        assert [d.dim_param for d in dims] == ["batch", "", "height", "width"]
        assert dims[1].dim_value == 3
    assert max(op.version for op in model.opset_import if op.domain in ("", "ai.onnx")) >= 17
    assert not any(
        init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer
    )
    assert sorted(p.name for p in exported.parent.iterdir()) == ["student_fp32.onnx"]


def test_it_records_the_run_and_the_image_contract_in_metadata(exported):
    meta = read_metadata(exported)
    assert meta["run_id"] == "run-42"
    assert meta["config_hash"] == "cafe1234"
    assert meta["input_spec"] == meta["output_spec"] == IMAGE_SPEC == "float32 NCHW RGB in [0,1]"
    assert meta["producer"] == "distillery"
    assert meta["precision"] == "fp32"


def test_batchnorm_is_folded_into_the_convolutions(exported):
    ops = {node.op_type for node in onnx.load(str(exported)).graph.node}
    assert "Conv" in ops
    assert "BatchNormalization" not in ops


def test_the_file_runs_at_other_batch_sizes_and_resolutions(exported):
    out = run_onnx(exported, images(2, 40, 56))
    assert out.shape == (2, 3, 40, 56)
    assert out.dtype == np.float32


def test_parity_with_torch_is_far_below_the_tolerance(student, exported):
    diff = check_parity(student, exported, images(3))
    assert 0.0 <= diff < 1e-5


def test_parity_fails_loudly_when_the_file_is_not_the_model(exported):
    other = trained_looking(build_student("mobile_residual", {"width": 16, "blocks": 2}), seed=7)
    with pytest.raises(ExportError, match=r"differs from the torch model by up to \d"):
        check_parity(other, exported, images(2))


def test_export_leaves_the_callers_model_as_it_was(tmp_path):
    model = trained_looking(build_student("mobile_residual", {"width": 8, "blocks": 1})).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export_onnx(model, tmp_path / "m.onnx", run_id="r", config_hash="h")
    assert model.training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_run_onnx_refuses_images_that_are_not_nchw_rgb(exported):
    with pytest.raises(ValueError, match="NCHW with 3 channels"):
        run_onnx(exported, np.zeros((1, 32, 32, 3), dtype=np.float32))


def test_sha256_file_is_the_sha256_of_the_bytes(exported):
    assert sha256_file(exported) == hashlib.sha256(exported.read_bytes()).hexdigest()


def test_the_torch_export_route_keeps_the_same_contract(student, tmp_path):
    # The route export_onnx falls back to once torch drops its TorchScript exporter.
    path = tmp_path / "dynamo.onnx"
    _export_dynamo(student, torch.rand(1, 3, 64, 64), path, 17)
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ["batch", "", "height", "width"]
    assert check_parity(student, path, images(2, 40, 48)) < 1e-4
