"""Losses: the article's errors are not made, every term trains the student, extractors load."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity
from torchvision.models import vgg

from distill_core.config import ConfigError, DistillConfig
from distill_core.losses import (
    LOSSES,
    LossSet,
    build_losses,
    channel_wise_kl,
    random_extractor,
    ssim,
    vgg16_extractor,
)
from distill_core.students import build_student
from distill_core.teachers import load_teacher


@pytest.fixture(scope="module")
def torch_teacher(tmp_path_factory):
    """A small johnson net saved as TorchScript: a teacher whose layers can be read."""
    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    net = build_student("johnson", {"channels": [8, 16, 24], "blocks": 1}).eval()
    torch.jit.script(net).save(str(path))
    return load_teacher(f"torchscript:{path}")


def _losses(teacher, weights: dict, family: str = "mobile_residual", **cfg) -> tuple:
    config = DistillConfig(student_family=family, losses=weights, **cfg)
    config.validate()
    torch.manual_seed(0)
    student = build_student(family, {})
    return build_losses(config, teacher, student), student


def _batch(n: int = 2, size: int = 32) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(n * size))


# -- the article's KL error -----------------------------------------------------------------------
def test_channel_wise_kl_is_zero_for_identical_features_and_positive_otherwise() -> None:
    feats = torch.randn(2, 8, 6, 5)
    assert float(channel_wise_kl(feats, feats.clone(), 4.0)) == pytest.approx(0.0, abs=1e-6)
    other = channel_wise_kl(torch.randn(2, 8, 6, 5), feats, 4.0)
    assert torch.isfinite(other) and float(other) > 0


def test_channel_wise_kl_is_finite_on_maps_with_exact_zeros_where_log_would_fail() -> None:
    zeros = torch.zeros(1, 3, 4, 4)
    ones = torch.ones(1, 3, 4, 4)
    # The article's F.kl_div(out.log(), target) is NaN/inf here; ours is a proper divergence.
    value = channel_wise_kl(zeros, ones, 1.0)
    assert torch.isfinite(value) and float(value) == pytest.approx(0.0, abs=1e-6)
    spiky = torch.zeros(1, 3, 4, 4)
    spiky[..., 0, 0] = 5.0
    assert 0 < float(channel_wise_kl(zeros, spiky, 1.0)) < float("inf")


def test_channel_wise_kl_averages_over_images_and_channels() -> None:
    s, t = torch.randn(1, 1, 4, 4), torch.randn(1, 1, 4, 4)
    one = channel_wise_kl(s, t, 2.0)
    many = channel_wise_kl(s.repeat(3, 5, 1, 1), t.repeat(3, 5, 1, 1), 2.0)
    assert float(many) == pytest.approx(float(one), rel=1e-5)


def test_kl_term_is_finite_for_outputs_with_exact_zeros(opencv_teacher) -> None:
    loss_set, _ = _losses(opencv_teacher, {"kl": 1.0})
    black = torch.zeros(2, 3, 32, 32)
    _, terms = loss_set(black, _batch(), _batch())
    assert torch.isfinite(terms["kl"]) and float(terms["kl"]) >= 0
    _, same = loss_set(black, black.clone(), _batch())
    assert float(same["kl"]) == pytest.approx(0.0, abs=1e-6)


# -- the article's pixel error --------------------------------------------------------------------
@pytest.mark.parametrize("name", ["pixel_l1", "pixel_mse", "ssim"])
def test_pixel_terms_are_zero_for_the_teachers_output_not_the_input(name, opencv_teacher) -> None:
    loss_set, _ = _losses(opencv_teacher, {name: 1.0})
    inputs = _batch()
    teacher_out = opencv_teacher(inputs)
    _, at_teacher = loss_set(teacher_out.clone(), teacher_out, inputs)
    _, at_input = loss_set(inputs.clone(), teacher_out, inputs)
    assert float(at_teacher[name]) == pytest.approx(0.0, abs=1e-6)
    assert float(at_input[name]) > 1e-4


# -- every term trains the student ----------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_term_gives_the_student_a_gradient_on_32px_batches(name, torch_teacher) -> None:
    loss_set, student = _losses(torch_teacher, {name: 1.0}, feature_extractor="random")
    inputs = _batch()
    out, feats = loss_set.run_student(student, inputs)
    total, terms = loss_set(out, torch_teacher(inputs), inputs, feats)
    assert set(terms) == {name} and torch.isfinite(total)
    total.backward()
    grads = [p.grad for p in student.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)


@pytest.mark.parametrize("name", ["pixel_l1", "pixel_mse", "ssim", "style", "kl", "tv"])
def test_terms_that_need_no_teacher_layers_work_with_an_opencv_teacher(name, opencv_teacher):
    loss_set, student = _losses(opencv_teacher, {name: 1.0})
    inputs = _batch()
    out, feats = loss_set.run_student(student, inputs)
    total, _ = loss_set(out, opencv_teacher(inputs), inputs, feats)
    total.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())


def test_feature_term_with_a_teacher_that_has_no_layers_is_refused_at_build(opencv_teacher):
    with pytest.raises(ConfigError, match="losses.feature needs the teacher's intermediate"):
        _losses(opencv_teacher, {"feature": 1.0})
    with pytest.raises(ConfigError, match="feature_extractor=teacher needs"):
        _losses(opencv_teacher, {"style": 1.0}, feature_extractor="teacher")


def test_kl_and_feature_use_the_teachers_layers_through_trainable_adapters(torch_teacher):
    loss_set, student = _losses(torch_teacher, {"kl": 0.5, "feature": 0.5, "pixel_l1": 1.0})
    assert loss_set.needs_student_features
    # mobile_residual maps have 32 channels, the teacher's 24/24/16: every pair needs a 1x1 conv.
    names = [n for n, _ in loss_set.named_parameters()]
    assert names and all(".adapters." in n for n in names)
    assert set(loss_set.state_dict()) == set(names)
    before = [p.detach().clone() for p in loss_set.parameters()]
    optimizer = torch.optim.Adam([*student.parameters(), *loss_set.parameters()], lr=1e-2)
    inputs = _batch()
    out, feats = loss_set.run_student(student, inputs)
    total, terms = loss_set(out, torch_teacher(inputs), inputs, feats)
    total.backward()
    optimizer.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, loss_set.parameters(), strict=True))
    expected = sum(loss_set.weights[k] * v for k, v in terms.items())
    assert float(total) == pytest.approx(float(expected))


def test_student_features_are_computed_when_not_handed_in(torch_teacher) -> None:
    loss_set, student = _losses(torch_teacher, {"kl": 1.0})
    inputs = _batch()
    out, feats = loss_set.run_student(student, inputs)
    with torch.no_grad():
        given = loss_set(out, torch_teacher(inputs), inputs, feats)[1]["kl"]
        computed = loss_set(out, torch_teacher(inputs), inputs)[1]["kl"]
    assert float(given) == pytest.approx(float(computed), rel=1e-5)


def test_zero_weight_terms_are_not_built(opencv_teacher) -> None:
    loss_set, _ = _losses(opencv_teacher, {"pixel_l1": 1.0, "style": 0.0})
    assert list(loss_set.terms) == ["pixel_l1"]
    assert loss_set.extractor is None


# -- extractors -----------------------------------------------------------------------------------
def test_the_random_extractor_is_the_same_in_every_run_and_frozen() -> None:
    a, b = random_extractor(), random_extractor()
    x = _batch(1)
    assert all(torch.equal(fa, fb) for fa, fb in zip(a(x), b(x), strict=True))
    assert not any(p.requires_grad for p in a.parameters())
    a.train()
    assert not a.training


def test_frozen_extractor_follows_the_loss_set_but_is_not_saved(opencv_teacher) -> None:
    loss_set, _ = _losses(opencv_teacher, {"style": 1.0})
    assert isinstance(loss_set, LossSet)
    assert list(loss_set.parameters()) == [] and loss_set.state_dict() == {}
    loss_set.double()
    assert next(loss_set.extractor.parameters()).dtype == torch.float64


def test_vgg16_weights_load_from_a_local_file_only(tmp_path) -> None:
    # The conv part of torchvision's VGG16, saved as a whole model's state_dict would name it.
    features = vgg.make_layers(vgg.cfgs["D"])
    path = tmp_path / "vgg16.pth"
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    extractor = vgg16_extractor(path)
    maps = extractor(_batch(1))
    assert [m.shape[1] for m in maps] == [64, 128, 256, 512]
    assert torch.equal(extractor.body[0].weight, features[0].weight)


def test_missing_or_wrong_vgg16_weights_say_how_to_make_them(tmp_path) -> None:
    with pytest.raises(ConfigError, match="no such file; save them on a machine"):
        vgg16_extractor(tmp_path / "missing.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="not a weights file torch can load safely"):
        vgg16_extractor(junk)
    other = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(3)}, other)
    with pytest.raises(ConfigError, match="these are not VGG16 weights"):
        vgg16_extractor(other)


# -- ssim -----------------------------------------------------------------------------------------
def test_ssim_matches_scikit_image_with_a_gaussian_window() -> None:
    a = _batch(1, 40)
    b = (a + 0.1 * torch.randn(a.shape, generator=torch.Generator().manual_seed(2))).clamp(0, 1)
    want = structural_similarity(
        a[0].permute(1, 2, 0).numpy(),
        b[0].permute(1, 2, 0).numpy(),
        channel_axis=2,
        data_range=1.0,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
    )
    assert float(ssim(a, b)) == pytest.approx(float(want), abs=1e-4)
    assert np.isfinite(float(ssim(_batch(1, 8), _batch(1, 8))))
