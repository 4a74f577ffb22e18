"""The teacher-output cache: computed once, reused across caches, keyed by content."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from distill_core.cache import TeacherCache, default_cache_dir
from distill_core.datasets import ImageItem, load_rgb, open_dataset, prepare_image
from distill_core.teachers import Teacher, TeacherError, load_teacher


class CountingTeacher(Teacher):
    """A real OpenCV teacher that also counts how often, and on how many images, it runs."""

    kind = "opencv"

    def __init__(self, spec: str = "opencv:edge_preserving") -> None:
        self.inner = load_teacher(spec)
        super().__init__(spec, fingerprint=self.inner.fingerprint)
        self.calls = 0
        self.images = 0

    def _run(self, x: np.ndarray) -> np.ndarray:
        self.calls += 1
        self.images += len(x)
        return self.inner._run(x)


def test_the_teacher_runs_once_per_image_and_a_second_cache_reuses_its_files(
    image_dataset, tmp_path
):
    items = image_dataset.split("train")[:5]
    first = CountingTeacher()
    targets = TeacherCache(tmp_path / "cache", first).targets_for(items, 32)
    assert first.images == 5
    again = TeacherCache(tmp_path / "cache", first).targets_for(items, 32)
    assert first.images == 5
    second_teacher = CountingTeacher()  # a new process would load the teacher again
    cache = TeacherCache(tmp_path / "cache", second_teacher)
    reused = [cache.target_for(item, 32) for item in items]
    assert second_teacher.calls == 0 and cache.hits == 5 and cache.misses == 0
    for a, b, c in zip(targets, again, reused, strict=True):
        assert a.dtype == np.uint8 and a.shape == (32, 32, 3)
        assert np.array_equal(a, b) and np.array_equal(a, c)


def test_a_target_is_the_teacher_output_on_the_prepared_image(image_dataset, tmp_path):
    teacher = load_teacher("opencv:edge_preserving")
    item = image_dataset.items[0]
    target = TeacherCache(tmp_path, teacher).target_for(item, 40)
    prepared = prepare_image(load_rgb(item.path), 40)
    x = torch.from_numpy(prepared.transpose(2, 0, 1)[None].astype(np.float32) / 255.0)
    expected = np.round(teacher(x)[0].numpy().transpose(1, 2, 0) * 255).astype(np.uint8)
    assert np.array_equal(target, expected)
    assert np.array_equal(TeacherCache(tmp_path, teacher).input_for(item, 40), prepared)


def test_files_are_laid_out_by_fingerprint_preprocessing_and_content(image_dataset, tmp_path):
    teacher = CountingTeacher()
    item = image_dataset.items[0]
    TeacherCache(tmp_path, teacher).target_for(item, 32)
    sha = hashlib.sha256(item.path.read_bytes()).hexdigest()
    expected = tmp_path / teacher.fingerprint[:16] / "short32-center" / sha[:2] / f"{sha}.png"
    assert expected.is_file()
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


def test_misses_go_through_the_teacher_in_batches(image_dataset, tmp_path):
    teacher = CountingTeacher()
    cache = TeacherCache(tmp_path, teacher, batch_size=2)
    cache.targets_for(image_dataset.items[:5], 32)
    assert (teacher.calls, teacher.images) == (3, 5)
    cache.targets_for(image_dataset.items[:7], 32)
    assert (teacher.calls, teacher.images) == (4, 7)
    assert (cache.hits, cache.misses) == (5, 7)


def test_size_and_teacher_are_part_of_the_key(image_dataset, tmp_path):
    item = image_dataset.items[0]
    teacher = CountingTeacher()
    TeacherCache(tmp_path, teacher).target_for(item, 32)
    TeacherCache(tmp_path, teacher).target_for(item, 24)
    assert teacher.images == 2
    other = CountingTeacher("opencv:pencil")
    TeacherCache(tmp_path, other).target_for(item, 32)
    assert other.images == 1


def test_a_renamed_image_is_still_a_hit_and_an_edited_one_is_not(
    image_dir, tmp_path, make_image, write_image
):
    teacher = CountingTeacher()
    dataset = open_dataset(image_dir)
    TeacherCache(tmp_path / "c", teacher).targets_for(dataset.items, 32)
    assert teacher.images == 24
    original = dataset.items[0]
    renamed = original.path.with_name("renamed" + original.path.suffix)
    original.path.rename(renamed)
    moved = ImageItem("renamed", renamed, None, "train")
    TeacherCache(tmp_path / "c", teacher).target_for(moved, 32)
    assert teacher.images == 24
    write_image(renamed, make_image(999))
    TeacherCache(tmp_path / "c", teacher).target_for(moved, 32)
    assert teacher.images == 25


def test_a_damaged_cache_file_is_computed_again(image_dataset, tmp_path):
    teacher = CountingTeacher()
    item = image_dataset.items[0]
    good = TeacherCache(tmp_path, teacher).target_for(item, 32)
    for png in (tmp_path / teacher.fingerprint[:16]).rglob("*.png"):
        png.write_bytes(png.read_bytes()[:40])
    again = TeacherCache(tmp_path, teacher).target_for(item, 32)
    assert teacher.images == 2 and np.array_equal(good, again)


def test_the_pairs_teacher_takes_targets_from_the_dataset(paired_dataset, tmp_path):
    cache = TeacherCache(tmp_path, load_teacher("pairs"))
    item = paired_dataset.items[0]
    target = cache.target_for(item, 32)
    assert np.array_equal(target, prepare_image(load_rgb(item.target_path), 32))
    assert np.array_equal(cache.target_for(item, 32), target)
    unpaired = ImageItem("x.png", item.path, None, "train")
    with pytest.raises(TeacherError, match="needs a paired dataset"):
        cache.target_for(unpaired, 32)


def test_the_default_root_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DISTILL_CACHE_DIR", str(tmp_path / "here"))
    assert default_cache_dir() == tmp_path / "here"
    assert TeacherCache(None, load_teacher("pairs")).root == tmp_path / "here"
    monkeypatch.delenv("DISTILL_CACHE_DIR")
    assert default_cache_dir().parts[-2:] == (".cache", "distillery")
