"""Demo data: varied images from bundled photos, reproducible and built once."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest
from PIL import Image

from distill_core.datasets import open_dataset
from distill_core.demo_data import SOURCES, available_sources, build_demo_data


def test_the_default_build_makes_at_least_1000_images_of_256_pixels():
    params = inspect.signature(build_demo_data).parameters
    assert params["count"].default >= 1000
    assert params["size"].default == 256


def test_every_bundled_photo_is_found_without_a_download():
    assert [s.name for s in available_sources()] == [s.name for s in SOURCES]


def test_it_builds_varied_images_from_the_bundled_photos(tmp_path):
    assert build_demo_data(tmp_path, count=30, size=64) == 30
    files = sorted(tmp_path.glob("demo_*.jpg"))
    assert len(files) == 30
    images = [np.asarray(Image.open(f)) for f in files]
    assert all(im.shape == (64, 64, 3) and im.dtype == np.uint8 for im in images)
    assert len({im.tobytes() for im in images}) == 30
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["count"] == 30 and manifest["size"] == 64
    assert len({entry["source"] for entry in manifest["images"]}) >= 15
    dataset = open_dataset(tmp_path)
    assert len(dataset) == 30 and dataset.skipped == []


def test_it_is_deterministic(tmp_path):
    build_demo_data(tmp_path / "a", count=12, size=48)
    build_demo_data(tmp_path / "b", count=12, size=48)
    for path in sorted((tmp_path / "a").iterdir()):
        assert path.read_bytes() == (tmp_path / "b" / path.name).read_bytes(), path.name
    build_demo_data(tmp_path / "c", count=12, size=48, seed=1)
    same = (tmp_path / "a" / "demo_0003.jpg").read_bytes()
    assert same != (tmp_path / "c" / "demo_0003.jpg").read_bytes()


def test_a_second_call_reuses_the_files_and_a_new_count_adjusts_them(tmp_path):
    build_demo_data(tmp_path, count=10, size=48)
    stamps = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    assert build_demo_data(tmp_path, count=10, size=48) == 10
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == stamps
    first = (tmp_path / "demo_0004.jpg").read_bytes()
    build_demo_data(tmp_path, count=14, size=48)
    assert (tmp_path / "demo_0004.jpg").stat().st_mtime_ns == stamps["demo_0004.jpg"]
    assert len(list(tmp_path.glob("demo_*.jpg"))) == 14
    build_demo_data(tmp_path, count=6, size=48)
    assert len(list(tmp_path.glob("demo_*.jpg"))) == 6
    (tmp_path / "demo_0004.jpg").unlink()
    build_demo_data(tmp_path, count=6, size=48)
    assert (tmp_path / "demo_0004.jpg").read_bytes() == first


def test_it_refuses_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="count must be at least 1"):
        build_demo_data(tmp_path, count=0)
    with pytest.raises(ValueError, match="size must be at least 8"):
        build_demo_data(tmp_path, count=1, size=4)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is not a folder"):
        build_demo_data(tmp_path / "file", count=1)
