"""Datasets: folders and zips, the 7:2:1 split, skipped files and colour conversions."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from distill_core.datasets import (
    DatasetError,
    ImageError,
    load_rgb,
    open_dataset,
    prep_key,
    prepare_image,
    split_for,
)


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels, with no pixel data to speak of."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


def reasons(dataset) -> dict[str, str]:
    return {s.relpath: s.reason for s in dataset.skipped}


# -- folders and splits ------------------------------------------------------------------------
def test_it_reads_a_folder_recursively_and_splits_it_7_2_1(image_dir, image_names):
    dataset = open_dataset(image_dir)
    assert not dataset.paired
    assert sorted(item.relpath for item in dataset.items) == sorted(image_names)
    assert dataset.skipped == []
    counts = dataset.counts()
    assert sum(counts.values()) == 24
    assert all(counts[name] > 0 for name in ("train", "val", "test"))
    for item in dataset.items:
        assert item.split == split_for(item.relpath)
        assert item.path.is_file() and item.target_path is None
    assert {i.relpath for i in dataset.split("val")} == {
        i.relpath for i in dataset.items if i.split == "val"
    }


def test_split_is_a_pure_function_of_the_relative_path():
    assert split_for("a/b/cat.png") == split_for("a\\b\\cat.png")
    names = [f"photo_{i}.jpg" for i in range(20000)]
    splits = [split_for(n) for n in names]
    assert splits == [split_for(n) for n in names]
    share = {s: splits.count(s) / len(splits) for s in ("train", "val", "test")}
    assert share["train"] == pytest.approx(0.7, abs=0.02)
    assert share["val"] == pytest.approx(0.2, abs=0.02)
    assert share["test"] == pytest.approx(0.1, abs=0.02)


def test_adding_files_never_moves_existing_ones_between_splits(image_dir, make_image, write_image):
    before = {i.relpath: i.split for i in open_dataset(image_dir).items}
    for index in range(30):
        write_image(image_dir / "added" / f"new_{index}.png", make_image(500 + index, 16))
    after = {i.relpath: i.split for i in open_dataset(image_dir).items}
    assert len(after) == len(before) + 30
    assert {k: after[k] for k in before} == before


def test_it_ignores_other_files_and_hidden_ones(image_dir, make_image, write_image):
    (image_dir / "README.txt").write_text("notes")
    (image_dir / "manifest.json").write_text("{}")
    (image_dir / ".DS_Store").write_bytes(b"\0\1")
    write_image(image_dir / ".hidden" / "x.png", make_image(1))
    dataset = open_dataset(image_dir)
    assert len(dataset) == 24 and dataset.skipped == []


def test_it_reports_progress_while_checking_images(image_dir):
    calls = []
    open_dataset(image_dir, progress=lambda done, total: calls.append((done, total)))
    assert calls[0] == (1, 24) and calls[-1] == (24, 24) and len(calls) == 24


# -- skipped files -----------------------------------------------------------------------------
def test_it_skips_unreadable_empty_and_truncated_files_with_reasons(image_dir):
    (image_dir / "garbage.png").write_bytes(b"this is not an image at all" * 4)
    (image_dir / "empty.jpg").write_bytes(b"")
    png = (image_dir / "img_01.png").read_bytes()
    (image_dir / "cut.png").write_bytes(png[: len(png) // 2])
    jpg = (image_dir / "img_00.jpg").read_bytes()
    (image_dir / "cut.jpg").write_bytes(jpg[: len(jpg) // 2])
    dataset = open_dataset(image_dir)
    skipped = reasons(dataset)
    assert skipped["garbage.png"].startswith("not a readable image")
    assert skipped["empty.jpg"] == "empty file (0 bytes)"
    assert skipped["cut.png"].startswith("truncated image (")
    assert skipped["cut.jpg"].startswith("truncated image (")
    assert len(dataset) == 24
    assert str(dataset.skipped[0]).endswith(": skipped")
    assert any(str(s).startswith("cut.png: truncated image (") for s in dataset.skipped)


def test_it_skips_images_over_the_pixel_limit(image_dir, make_image, write_image):
    write_image(image_dir / "big.png", make_image(7, 120))  # 14,400 pixels
    dataset = open_dataset(image_dir, max_pixels=48 * 48)
    assert reasons(dataset)["big.png"].startswith("too large (120x120")
    assert len(dataset) == 24


def test_it_skips_a_decompression_bomb_header_without_decoding_it(image_dir):
    (image_dir / "bomb.png").write_bytes(png_header_only(40000, 40000))  # 1.6 gigapixels
    dataset = open_dataset(image_dir)
    assert reasons(dataset)["bomb.png"].startswith("too large")
    with pytest.raises(ImageError, match=r"bomb\.png: too large"):
        load_rgb(image_dir / "bomb.png")


def test_it_refuses_other_formats_behind_an_image_extension(image_dir, make_image):
    buffer = io.BytesIO()
    Image.fromarray(make_image(3)).save(buffer, format="GIF")
    (image_dir / "really_a_gif.png").write_bytes(buffer.getvalue())
    assert reasons(open_dataset(image_dir))["really_a_gif.png"].startswith("not a readable image")


def test_it_refuses_too_few_usable_images_naming_the_counts(tmp_path, make_image, write_image):
    for index in range(5):
        write_image(tmp_path / f"ok_{index}.png", make_image(index))
    (tmp_path / "bad_1.png").write_bytes(b"")
    (tmp_path / "bad_2.png").write_bytes(b"nope")
    with pytest.raises(DatasetError) as info:
        open_dataset(tmp_path)
    message = str(info.value)
    assert "5 usable images" in message and "at least 10" in message
    assert "2 files were skipped" in message and "empty file" in message
    assert "Add more images" in message


def test_it_refuses_a_split_left_empty_by_the_hash(tmp_path, make_image, write_image):
    names = [f"x{i}.png" for i in range(200) if split_for(f"x{i}.png") != "test"][:12]
    for index, name in enumerate(names):
        write_image(tmp_path / name, make_image(index, 16))
    with pytest.raises(DatasetError, match="left test empty.*add a few more images"):
        open_dataset(tmp_path)


def test_it_refuses_a_missing_path_and_a_file_that_is_not_a_zip(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        open_dataset(tmp_path / "nowhere")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DatasetError, match="neither a folder nor a zip"):
        open_dataset(tmp_path / "notes.txt")


# -- colour conversions ------------------------------------------------------------------------
def test_palette_images_with_transparency_are_composited_on_white(tmp_path):
    im = Image.new("P", (4, 4), 1)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    im.putpixel((0, 0), 0)
    im.save(tmp_path / "p.png", transparency=0)
    arr = load_rgb(tmp_path / "p.png")
    assert arr.shape == (4, 4, 3) and arr.dtype == np.uint8
    assert arr[0, 0].tolist() == [255, 255, 255]
    assert arr[1, 1].tolist() == [255, 0, 0]
    Image.new("P", (4, 4), 1).save(tmp_path / "plain.png")  # no transparency: default palette
    assert load_rgb(tmp_path / "plain.png").shape == (4, 4, 3)


def test_alpha_is_composited_on_white(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[0, 0, 3], rgba[0, 1, 3], rgba[1, 0, 3] = 0, 255, 128
    Image.fromarray(rgba).save(tmp_path / "a.png")
    arr = load_rgb(tmp_path / "a.png")
    assert arr[0, 0].tolist() == [255, 255, 255]
    assert arr[0, 1].tolist() == [200, 0, 0]
    assert arr[1, 0].tolist() == [227, 127, 127]
    Image.fromarray(rgba[..., [0, 3]]).save(tmp_path / "la.png")
    assert load_rgb(tmp_path / "la.png")[0, 0].tolist() == [255, 255, 255]


def test_cmyk_images_are_converted_to_rgb(tmp_path):
    Image.new("CMYK", (16, 16), (0, 255, 0, 0)).save(tmp_path / "c.jpg", quality=100)
    arr = load_rgb(tmp_path / "c.jpg")
    assert arr.shape == (16, 16, 3)
    assert np.abs(arr[8, 8].astype(int) - [255, 0, 255]).max() <= 3


def test_16_bit_images_are_scaled_to_8_bit(tmp_path):
    gray = np.array([[0, 32896], [65535, 257 * 10]], np.uint16)
    Image.fromarray(gray).save(tmp_path / "g16.png")
    assert load_rgb(tmp_path / "g16.png")[..., 0].tolist() == [[0, 128], [255, 10]]
    Image.fromarray(gray).save(tmp_path / "g16.tif")
    assert load_rgb(tmp_path / "g16.tif")[..., 1].tolist() == [[0, 128], [255, 10]]
    rgb16 = np.zeros((2, 2, 3), np.uint16)
    rgb16[..., 2] = 65535  # red channel in OpenCV's BGR order
    cv2.imwrite(str(tmp_path / "rgb16.png"), rgb16)
    assert load_rgb(tmp_path / "rgb16.png")[0, 0].tolist() == [255, 0, 0]


def test_grayscale_and_other_formats_become_rgb(tmp_path, make_image):
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    Image.fromarray(gray).save(tmp_path / "g.bmp")
    arr = load_rgb(tmp_path / "g.bmp")
    assert arr.shape == (8, 8, 3) and (arr[..., 0] == gray).all() and (arr[..., 2] == gray).all()
    image = make_image(9, 16)
    for name in ("x.webp", "x.tiff", "x.tif"):
        Image.fromarray(image).save(
            tmp_path / name, **({"lossless": True} if "webp" in name else {})
        )
        assert (load_rgb(tmp_path / name) == image).all(), name


def test_exif_orientation_is_applied(tmp_path):
    stored = np.zeros((20, 30, 3), np.uint8)  # 30 wide, 20 tall as stored
    stored[:5, :5] = [255, 0, 0]  # red mark at the stored top-left
    im = Image.fromarray(stored)
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    im.save(tmp_path / "rotated.png", exif=exif)
    arr = load_rgb(tmp_path / "rotated.png")
    assert arr.shape == (30, 20, 3)
    assert arr[0, -1].tolist() == [255, 0, 0]  # now at the top-right
    assert arr[0, 0].tolist() == [0, 0, 0]


# -- preprocessing -----------------------------------------------------------------------------
def test_prepare_image_resizes_the_short_side_and_crops_the_centre(make_image):
    image = np.zeros((40, 80, 3), np.uint8)
    image[:, 30:50] = 255  # a white band in the middle
    out = prepare_image(image, 20)
    assert out.shape == (20, 20, 3) and out.dtype == np.uint8
    assert out[10, 10].tolist() == [255, 255, 255] and out[10, 0].tolist() == [0, 0, 0]
    assert prepare_image(make_image(1, 48), 48).tolist() == make_image(1, 48).tolist()
    assert prepare_image(make_image(1, 16), 64).shape == (64, 64, 3)
    assert prep_key(256) == "short256-center"
    with pytest.raises(ValueError, match="uint8 HxWx3"):
        prepare_image(np.zeros((4, 4), np.uint8), 4)


# -- zips --------------------------------------------------------------------------------------
def zip_folder(folder: Path, zip_path: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, prefix + path.relative_to(folder).as_posix())
    return zip_path


def test_a_zip_is_unpacked_beside_it_once_and_reads_like_the_folder(
    image_dir, tmp_path, image_names
):
    zip_path = zip_folder(image_dir, tmp_path / "photos.zip")
    dataset = open_dataset(zip_path)
    assert dataset.source == zip_path
    assert dataset.root == tmp_path / "photos.unzipped"
    assert sorted(i.relpath for i in dataset.items) == sorted(image_names)
    assert dataset.counts() == open_dataset(image_dir).counts()
    marker = dataset.root / ".distillery-unzipped.json"
    stamp = marker.stat().st_mtime_ns
    assert len(open_dataset(zip_path)) == 24
    assert marker.stat().st_mtime_ns == stamp  # not unpacked again


def test_a_zip_with_one_top_folder_is_looked_into(paired_dir, tmp_path):
    zip_path = zip_folder(paired_dir, tmp_path / "pairs.zip", prefix="my pairs/")
    dataset = open_dataset(zip_path)
    assert dataset.paired and len(dataset) == 12
    assert dataset.root.name == "my pairs"


def test_zip_slip_entries_are_refused(image_dir, tmp_path, make_image):
    zip_path = zip_folder(image_dir, tmp_path / "evil.zip")
    payload = png_bytes(make_image(5))
    with zipfile.ZipFile(zip_path, "a") as archive:
        archive.writestr("../escaped.png", payload)
        archive.writestr("/abs/escaped2.png", payload)
        archive.writestr("sub/../../escaped3.png", payload)
    dataset = open_dataset(zip_path, extract_to=tmp_path / "out" / "x")
    skipped = reasons(dataset)
    for name in ("../escaped.png", "/abs/escaped2.png", "sub/../../escaped3.png"):
        assert skipped[name].startswith("unsafe path in zip")
    assert not list(tmp_path.rglob("escaped*"))
    assert len(dataset) == 24


def test_a_zip_that_would_unpack_too_large_is_refused(image_dir, tmp_path):
    zip_path = zip_folder(image_dir, tmp_path / "big.zip")
    with pytest.raises(DatasetError, match="would unpack to .* more than the limit"):
        open_dataset(zip_path, max_zip_bytes=10_000)
    with pytest.raises(DatasetError, match="holds 24 files, more than the limit of 5"):
        open_dataset(zip_path, max_zip_entries=5)
    assert not (tmp_path / "big.unzipped").exists()


def test_it_does_not_unpack_over_a_folder_it_did_not_make(image_dir, tmp_path):
    zip_path = zip_folder(image_dir, tmp_path / "photos.zip")
    (tmp_path / "photos.unzipped").mkdir()
    with pytest.raises(DatasetError, match="was not unpacked by Distillery"):
        open_dataset(zip_path)


# -- paired datasets ---------------------------------------------------------------------------
def test_paired_datasets_match_inputs_and_targets_by_stem(paired_dir):
    dataset = open_dataset(paired_dir)
    assert dataset.paired and len(dataset) == 12 and dataset.skipped == []
    for item in dataset.items:
        assert item.relpath.startswith("input/frame_")
        assert item.target_path.parent.name == "target"
        assert item.target_path.stem == item.path.stem and item.target_path.suffix == ".jpg"
    assert all(n > 0 for n in dataset.counts().values())


def test_unmatched_and_broken_pairs_are_skipped_with_reasons(paired_dir, make_image, write_image):
    write_image(paired_dir / "input" / "lonely.png", make_image(1))
    write_image(paired_dir / "target" / "orphan.png", make_image(2))
    (paired_dir / "target" / "frame_03.jpg").write_bytes(b"")
    write_image(paired_dir / "input" / "frame_04.jpg", make_image(4))  # same stem twice
    dataset = open_dataset(paired_dir)
    skipped = reasons(dataset)
    assert skipped["input/lonely.png"].startswith("no matching file in target/")
    assert skipped["target/orphan.png"] == "no matching file in input/"
    assert skipped["target/frame_03.jpg"] == "empty file (0 bytes)"
    assert skipped["input/frame_03.png"] == "its target target/frame_03.jpg is not usable"
    assert skipped["input/frame_04.png"].startswith("another file has the same name")
    assert len(dataset) == 11


def test_paired_inputs_and_targets_may_differ_in_size(paired_dir, make_image, write_image):
    write_image(paired_dir / "target" / "frame_00.jpg", make_image(0, 96))
    item = next(i for i in open_dataset(paired_dir).items if i.path.stem == "frame_00")
    assert load_rgb(item.target_path).shape == (96, 96, 3)
    assert prepare_image(load_rgb(item.target_path), 32).shape == (32, 32, 3)


def test_paired_can_be_forced_off_or_required(paired_dir, image_dir):
    assert len(open_dataset(paired_dir, paired=False)) == 24
    with pytest.raises(DatasetError, match="needs an input/ and a target/ folder"):
        open_dataset(image_dir, paired=True)
