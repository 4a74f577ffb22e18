"""PSNR and SSIM against scikit-image, the reference implementation."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from distill_core.metrics import PSNR_CAP_DB, psnr, ssim


def _pair(shape: tuple[int, ...], noise: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.random(shape)
    return a, np.clip(a + rng.normal(0, noise, shape), 0, 1)


@pytest.mark.parametrize("shape", [(32, 48, 3), (64, 64, 3), (17, 23, 3)])
@pytest.mark.parametrize("noise", [0.02, 0.2])
def test_ssim_matches_scikit_image_gaussian_ssim(shape, noise):
    a, b = _pair(shape, noise)
    expected = structural_similarity(
        a,
        b,
        channel_axis=2,
        data_range=1,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
    )
    assert ssim(a, b) == pytest.approx(expected, abs=1e-3)


def test_psnr_matches_scikit_image_with_data_range_one():
    a, b = _pair((40, 40, 3), 0.05)
    assert psnr(a, b) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=1), abs=1e-9)


def test_identical_images_score_the_cap_not_infinity():
    a, _ = _pair((16, 16, 3), 0.1)
    assert psnr(a, a) == PSNR_CAP_DB == 100.0
    assert ssim(a, a) == pytest.approx(1.0)
    assert np.isfinite(np.mean([psnr(a, a), psnr(a, 1 - a)]))


def test_an_nchw_batch_gives_the_mean_of_its_images():
    a, b = _pair((3, 3, 24, 24), 0.1)
    pairs = [(x.transpose(1, 2, 0), y.transpose(1, 2, 0)) for x, y in zip(a, b, strict=True)]
    assert psnr(a, b) == pytest.approx(np.mean([psnr(x, y) for x, y in pairs]))
    assert ssim(a, b) == pytest.approx(np.mean([ssim(x, y) for x, y in pairs]))


def test_uint8_images_are_read_as_zero_to_255():
    a, b = _pair((20, 20, 3), 0.1)
    a8, b8 = (np.round(a * 255).astype(np.uint8), np.round(b * 255).astype(np.uint8))
    assert psnr(a8, b8) == pytest.approx(psnr(a8 / 255.0, b8 / 255.0))


def test_images_of_different_shapes_are_refused():
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(np.zeros((8, 8, 3)), np.zeros((8, 9, 3)))
