"""Shared fixtures for distill_core tests: tiny generated image folders and teachers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from distill_core.datasets import ImageDataset, open_dataset
from distill_core.teachers import Teacher, load_teacher

# Names chosen so the 7:2:1 hash split leaves every split non-empty (checked in test_datasets).
IMAGE_NAMES = [f"img_{i:02d}.{'jpg' if i % 3 == 0 else 'png'}" for i in range(16)] + [
    f"more/img_{i:02d}.png" for i in range(16, 24)
]
PAIR_STEMS = [f"frame_{i:02d}" for i in range(12)]


def _make_image(index: int, size: int = 48) -> np.ndarray:
    """A uint8 size x size x 3 image whose content differs with `index` (gradients, discs,
    stripes, noise), so teachers and students see edges, flat areas and texture."""
    rng = np.random.default_rng(index)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    base = rng.uniform(0, 255, size=3).astype(np.float32)
    other = rng.uniform(0, 255, size=3).astype(np.float32)
    kind = index % 4
    if kind == 0:
        mix = (xx * np.cos(index) + yy * np.sin(index)) % 1.0
    elif kind == 1:
        cy, cx, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.15, 0.4)
        mix = (((yy - cy) ** 2 + (xx - cx) ** 2) < r * r).astype(np.float32)
    elif kind == 2:
        mix = (np.sin((xx + yy * 0.5) * rng.uniform(6, 20)) > 0).astype(np.float32)
    else:
        blocks = rng.uniform(0, 1, size=(size // 8 + 1, size // 8 + 1))
        mix = np.kron(blocks, np.ones((8, 8)))[:size, :size].astype(np.float32)
    image = base * (1 - mix[..., None]) + other * mix[..., None]
    image += rng.normal(0, 6, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _write_image(path: Path, image: np.ndarray) -> Path:
    """Save as PNG or JPEG (quality 95) by the file extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        Image.fromarray(image).save(path, quality=95)
    else:
        Image.fromarray(image).save(path)
    return path


@pytest.fixture(scope="session")
def make_image():
    """`make_image(index, size=48)`: a varied uint8 RGB test image, the same for the same index."""
    return _make_image


@pytest.fixture(scope="session")
def write_image():
    """`write_image(path, image)`: save as PNG or JPEG by extension, creating folders."""
    return _write_image


@pytest.fixture(scope="session")
def image_names() -> list[str]:
    """Relative paths of the images in `image_dir`."""
    return list(IMAGE_NAMES)


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    """24 varied 48x48 images (PNG and JPEG, some in a subfolder) in a fresh folder."""
    root = tmp_path / "images"
    for index, name in enumerate(IMAGE_NAMES):
        _write_image(root / name, _make_image(index))
    return root


@pytest.fixture
def paired_dir(tmp_path: Path) -> Path:
    """12 pairs: input/frame_NN.png and target/frame_NN.jpg (the input's colours inverted)."""
    root = tmp_path / "pairs"
    for index, stem in enumerate(PAIR_STEMS):
        image = _make_image(100 + index)
        _write_image(root / "input" / f"{stem}.png", image)
        _write_image(root / "target" / f"{stem}.jpg", 255 - image)
    return root


@pytest.fixture
def image_dataset(image_dir: Path) -> ImageDataset:
    """The opened `image_dir` dataset."""
    return open_dataset(image_dir)


@pytest.fixture
def paired_dataset(paired_dir: Path) -> ImageDataset:
    """The opened `paired_dir` dataset."""
    return open_dataset(paired_dir)


@pytest.fixture(scope="session")
def opencv_teacher() -> Teacher:
    """A fast built-in teacher (OpenCV's edge-preserving filter)."""
    return load_teacher("opencv:edge_preserving")
