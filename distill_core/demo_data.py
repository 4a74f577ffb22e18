"""Demo training images made offline from photos that ship inside scikit-image and scikit-learn.

Each image is a square crop at a random scale (log-uniform, from half the output size up to the
whole short side) of one bundled photo, resized, maybe flipped (and rotated, for photos with no
natural "up" such as the Hubble deep field or the retina), with a small brightness, contrast and
colour jitter. Image `i` depends only on (seed, i, size), so a build is reproducible and a
second call reuses the files already there. Nothing is downloaded: the photos are read from the
installed packages' own folders.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image

DEMO_VERSION = 1
MANIFEST = "manifest.json"
JPEG_QUALITY = 95


@dataclass(frozen=True)
class Source:
    """One bundled photo: where it comes from and how it may be transformed."""

    name: str
    package: str  # "skimage" or "sklearn"
    filename: str
    weight: int = 2  # how often it is drawn, relative to the others
    any_orientation: bool = False  # rotations keep it natural (no sky, no gravity)


SOURCES = (
    Source("astronaut", "skimage", "astronaut.png"),
    Source("chelsea", "skimage", "chelsea.png"),
    Source("coffee", "skimage", "coffee.png"),
    Source("rocket", "skimage", "rocket.jpg"),
    Source("motorcycle_left", "skimage", "motorcycle_left.png"),
    Source("motorcycle_right", "skimage", "motorcycle_right.png", weight=1),
    Source("hubble_deep_field", "skimage", "hubble_deep_field.jpg", any_orientation=True),
    Source("retina", "skimage", "retina.jpg", weight=1, any_orientation=True),
    Source("immunohistochemistry", "skimage", "ihc.png", any_orientation=True),
    Source("china", "sklearn", "china.jpg"),
    Source("flower", "sklearn", "flower.jpg"),
    # Grey photos add texture and tonal variety; drawn less often.
    Source("camera", "skimage", "camera.png", weight=1),
    Source("coins", "skimage", "coins.png", weight=1),
    Source("moon", "skimage", "moon.png", weight=1, any_orientation=True),
    Source("grass", "skimage", "grass.png", weight=1, any_orientation=True),
    Source("gravel", "skimage", "gravel.png", weight=1, any_orientation=True),
    Source("brick", "skimage", "brick.png", weight=1, any_orientation=True),
)


def _folder(package: str) -> Path:
    # Located without importing the packages: importing sklearn.datasets alone takes seconds.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return Path("/nonexistent")
    base = Path(next(iter(spec.submodule_search_locations)))
    return base / "data" if package == "skimage" else base / "datasets" / "images"


def available_sources() -> list[Source]:
    """The bundled photos present in the installed package versions."""
    return [s for s in SOURCES if (_folder(s.package) / s.filename).is_file()]


@cache
def _photo(source: Source) -> np.ndarray:
    # Pillow reads these files as skimage.io.imread would (it is imageio's backend here), without
    # the second-long import of skimage.io.
    with Image.open(_folder(source.package) / source.filename) as im:
        return np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8))


def _make(source: Source, rng: np.random.Generator, size: int) -> tuple[np.ndarray, dict]:
    photo = _photo(source)
    height, width = photo.shape[:2]
    short = min(height, width)
    smallest = min(short, max(64, size // 2))
    side = int(round(np.exp(rng.uniform(np.log(smallest), np.log(short)))))
    side = int(np.clip(side, smallest, short))
    top = int(rng.integers(0, height - side + 1))
    left = int(rng.integers(0, width - side + 1))
    crop = Image.fromarray(photo[top : top + side, left : left + side])
    image = np.asarray(crop.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)
    hflip = bool(rng.random() < 0.5)
    rot90 = int(rng.integers(0, 4)) if source.any_orientation else 0
    if hflip:
        image = image[:, ::-1]
    image = np.rot90(image, rot90)
    brightness = rng.uniform(0.92, 1.08)
    contrast = rng.uniform(0.9, 1.1)
    channel_gain = rng.uniform(0.96, 1.04, size=3)
    mean = image.mean()
    image = ((image - mean) * contrast + mean) * brightness * channel_gain
    out = np.ascontiguousarray(np.clip(np.round(image), 0, 255).astype(np.uint8))
    recipe = {"source": source.name, "crop": [left, top, side], "hflip": hflip, "rot90": rot90}
    return out, recipe


def build_demo_data(out_dir: Path, count: int = 1000, size: int = 256, *, seed: int = 0) -> int:
    """Write `count` demo images (JPEG, quality 95) of size x size into out_dir; returns count.

    Reuses the images already written by an earlier call with the same size and seed, and
    writes `manifest.json` listing each image's source photo and crop.
    """
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    if size < 8:
        raise ValueError(f"size must be at least 8 pixels, got {size}")
    out_dir = Path(out_dir).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir} exists and is not a folder; choose another place")
    sources = available_sources()
    if len(sources) < 3:
        raise RuntimeError(
            "too few bundled photos found in scikit-image/scikit-learn; reinstall them "
            "(pip install scikit-image scikit-learn)"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    recipe_key = {
        "version": DEMO_VERSION,
        "size": size,
        "seed": seed,
        "sources": [s.name for s in sources],
    }
    old = _read_manifest(out_dir)
    reusable = old is not None and all(old.get(k) == v for k, v in recipe_key.items())
    if reusable and old.get("count") == count and _all_present(out_dir, old):
        return count
    # Drawing the photo by a weighted round-robin keeps every photo represented at any count.
    order = [s for s in sources for _ in range(s.weight)]
    images = []
    for index in range(count):
        name = f"demo_{index:04d}.jpg"
        rng = np.random.default_rng([seed, index, size])
        old_entry = old["images"][index] if reusable and index < len(old["images"]) else None
        if old_entry and old_entry["file"] == name and (out_dir / name).is_file():
            images.append(old_entry)
            continue
        image, recipe = _make(order[index % len(order)], rng, size)
        _save_jpeg(out_dir / name, image)
        images.append({"file": name, **recipe})
    if old:
        keep = {entry["file"] for entry in images}
        for entry in old.get("images", []):
            if entry.get("file") not in keep and str(entry.get("file", "")).startswith("demo_"):
                (out_dir / entry["file"]).unlink(missing_ok=True)
    manifest = {**recipe_key, "count": count, "format": f"jpeg q{JPEG_QUALITY}", "images": images}
    _atomic_write(out_dir / MANIFEST, json.dumps(manifest, indent=1).encode())
    return count


def _read_manifest(out_dir: Path) -> dict | None:
    try:
        data = json.loads((out_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("images"), list) else None


def _all_present(out_dir: Path, manifest: dict) -> bool:
    return all((out_dir / entry["file"]).is_file() for entry in manifest["images"])


def _save_jpeg(path: Path, image: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    # 4:4:4 chroma: the teachers' colour edges should not be blurred by subsampling.
    Image.fromarray(image).save(tmp, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
    os.replace(tmp, path)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
