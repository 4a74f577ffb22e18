"""Image quality metrics: PSNR and SSIM of one image against a reference, data range 1.

SSIM follows Wang et al. (2004) exactly as scikit-image computes it with
`gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1`: an 11×11 Gaussian
window (σ 1.5, truncated at 3.5σ), reflect padding, a 5-pixel border left out of the mean, and the
per-channel values averaged. scipy does the filtering, so this module never needs torch.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

# Identical images have infinite PSNR; one inf would make every mean over a test split inf too,
# so a perfect match is reported as 100 dB (an error below 1e-10 in MSE).
PSNR_CAP_DB = 100.0

_SIGMA = 1.5
_TRUNCATE = 3.5
_PAD = int(_TRUNCATE * _SIGMA + 0.5)  # window radius: 5, i.e. an 11×11 window
_C1 = 0.01**2
_C2 = 0.03**2


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB (data range 1, capped at 100 dB); NCHW batches give the mean over images."""
    images_a, images_b = _as_hwc_batch(a, b)
    return float(np.mean([_psnr_one(x, y) for x, y in zip(images_a, images_b, strict=True)]))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM (Gaussian 11×11, σ 1.5, channel mean); NCHW batches give the mean over images."""
    images_a, images_b = _as_hwc_batch(a, b)
    return float(np.mean([_ssim_one(x, y) for x, y in zip(images_a, images_b, strict=True)]))


def _psnr_one(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a - b) ** 2))
    if mse <= 10 ** (-PSNR_CAP_DB / 10):
        return PSNR_CAP_DB
    return float(-10.0 * np.log10(mse))


def _ssim_one(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([_ssim_channel(a[..., c], b[..., c]) for c in range(a.shape[-1])]))


def _ssim_channel(x: np.ndarray, y: np.ndarray) -> float:
    def blur(img: np.ndarray) -> np.ndarray:
        return gaussian_filter(img, sigma=_SIGMA, truncate=_TRUNCATE, mode="reflect")

    ux, uy = blur(x), blur(y)
    vx = blur(x * x) - ux * ux
    vy = blur(y * y) - uy * uy
    vxy = blur(x * y) - ux * uy
    s = ((2 * ux * uy + _C1) * (2 * vxy + _C2)) / ((ux**2 + uy**2 + _C1) * (vx + vy + _C2))
    # The border where the window hangs over the edge is left out, as scikit-image does; images
    # too small to have an inside keep all their pixels rather than averaging nothing.
    if min(s.shape) > 2 * _PAD:
        s = s[_PAD:-_PAD, _PAD:-_PAD]
    return float(s.mean(dtype=np.float64))


def _as_hwc_batch(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both inputs as float64 N×H×W×C in [0, 1]; uint8 images are scaled by 1/255."""
    a, b = _to_float(a), _to_float(b)
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    if a.ndim == 2:  # one grey image
        return a[None, ..., None], b[None, ..., None]
    if a.ndim == 3:  # one H×W×C image
        return a[None], b[None]
    if a.ndim == 4:  # a batch, N×C×H×W as the models take it
        return a.transpose(0, 2, 3, 1), b.transpose(0, 2, 3, 1)
    raise ValueError(f"expected an H×W×C image or an N×C×H×W batch, got shape {a.shape}")


def _to_float(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype == np.uint8:
        return x.astype(np.float64) / 255.0
    return x.astype(np.float64, copy=False)
