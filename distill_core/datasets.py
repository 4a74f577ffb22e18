"""Image datasets: a folder or a zip of images, checked file by file, split 7:2:1 by name.

Every image is decoded once when the dataset is opened, so a broken file is reported up front
("cat.png: truncated image (…): skipped") instead of failing a run halfway through. The split is
decided by a hash of each file's relative path alone, so adding or removing files never moves
the others between train, val and test.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import warnings
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from distill_core.checksums import sha256_file

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
# Only these decoders may run: a file named .png that is really an EPS or a PSD is refused rather
# than handed to a plugin nobody asked for (EPS would start Ghostscript).
PIL_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "DIB", "TIFF")  # JPEG includes MPO
DEFAULT_MAX_PIXELS = 50_000_000
DEFAULT_MIN_IMAGES = 10
SPLITS = ("train", "val", "test")
# Zip-bomb guards: refuse archives that would unpack to more than this, or hold too many entries.
DEFAULT_MAX_ZIP_BYTES = 4 * 1024**3
DEFAULT_MAX_ZIP_ENTRIES = 100_000
_ZIP_MARKER = ".distillery-unzipped.json"
_IGNORED_NAMES = ("__MACOSX", "Thumbs.db", "desktop.ini")

Progress = Callable[[int, int], None]


class DatasetError(ValueError):
    """The dataset cannot be used; the message says why and what to do."""


class ImageError(ValueError):
    """One image cannot be used; `reason` is the short text shown in skip lists."""

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path.name}: {reason}")


@dataclass(frozen=True)
class ImageItem:
    """One usable image (and, in a paired dataset, its target)."""

    relpath: str
    path: Path
    target_path: Path | None
    split: str


@dataclass(frozen=True)
class SkippedFile:
    """A file left out of the dataset, with the reason in the user's terms."""

    relpath: str
    reason: str

    def __str__(self) -> str:
        return f"{self.relpath}: {self.reason}: skipped"


@dataclass
class ImageDataset:
    """The usable images of a folder or zip, with their splits and the files that were skipped."""

    root: Path
    paired: bool
    items: list[ImageItem]
    skipped: list[SkippedFile] = field(default_factory=list)
    source: Path | None = None  # what the user gave: the zip file, or the folder itself

    def split(self, name: str) -> list[ImageItem]:
        """Items of one split: "train", "val" or "test"."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; choose train, val or test")
        return [item for item in self.items if item.split == name]

    def counts(self) -> dict[str, int]:
        """Number of images per split."""
        counts = Counter(item.split for item in self.items)
        return {name: counts.get(name, 0) for name in SPLITS}

    def __len__(self) -> int:
        return len(self.items)


# -- splitting ---------------------------------------------------------------------------------
def split_for(relpath: str) -> str:
    """Train/val/test (7:2:1) from the sha256 of the POSIX relative path; never changes."""
    key = PurePosixPath(relpath.replace("\\", "/")).as_posix()
    bucket = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") % 10
    if bucket <= 6:
        return "train"
    return "val" if bucket <= 8 else "test"


# -- one image ---------------------------------------------------------------------------------
def load_rgb(path: Path | str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an image file to uint8 HxWx3 RGB; raises ImageError saying what is wrong with it.

    EXIF orientation is applied; palette images are expanded; transparency is composited on
    white; CMYK, 16-bit and grayscale images are converted. Colour profiles are not applied
    (pixels are taken as sRGB).
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ImageError(path, f"cannot be read ({exc.strerror or exc})") from exc
    if size == 0:
        raise ImageError(path, "empty file (0 bytes)")
    # Our own pixel limit decides; Pillow's global warning would otherwise fire at its own limit.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(path, formats=PIL_FORMATS) as im:
                width, height = im.size
                if width * height > max_pixels:
                    raise ImageError(path, _too_large(width, height, max_pixels))
                im.load()
                return _to_rgb_array(_orient(im), path)
        except ImageError:
            raise
        except Image.DecompressionBombError as exc:
            raise ImageError(path, f"too large to decode safely ({exc})") from exc
        except UnidentifiedImageError as exc:
            raise ImageError(
                path, "not a readable image (unknown format or damaged header)"
            ) from exc
        except OSError as exc:
            text = str(exc)
            if "truncated" in text.lower():
                raise ImageError(path, f"truncated image ({text})") from exc
            raise ImageError(path, f"damaged image data ({text})") from exc
        except (SyntaxError, ValueError, TypeError, IndexError, EOFError) as exc:
            # Pillow's decoders report malformed headers with these.
            raise ImageError(path, f"damaged image data ({exc})") from exc


def _too_large(width: int, height: int, max_pixels: int) -> str:
    return (
        f"too large ({width}x{height} = {width * height / 1e6:.1f} megapixels; the limit is "
        f"{max_pixels / 1e6:g} megapixels)"
    )


def _orient(im: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(im)
    except Exception:  # a broken EXIF block should not cost the user the image
        return im


def _to_rgb_array(im: Image.Image, path: Path) -> np.ndarray:
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(im).astype(np.float64)
        if mode == "I" and arr.max(initial=0) <= 255:
            arr = np.clip(arr, 0, 255)
        else:
            arr = np.clip(arr, 0, 65535) / 257.0
        return _gray_to_rgb(np.round(arr).astype(np.uint8))
    if mode == "F":
        arr = np.asarray(im).astype(np.float64)
        arr = arr * 255.0 if arr.max(initial=0) <= 1.0 else arr
        return _gray_to_rgb(np.round(np.clip(arr, 0, 255)).astype(np.uint8))
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode in ("PA", "LA", "La", "RGBa"):
        im = im.convert("RGBA")
    elif mode == "1":
        im = im.convert("L")
    if im.mode == "L":
        return _gray_to_rgb(np.asarray(im, dtype=np.uint8))
    if im.mode == "RGBA":
        return _on_white(np.asarray(im, dtype=np.uint8))
    if im.mode != "RGB":
        try:
            im = im.convert("RGB")
        except ValueError as exc:
            raise ImageError(path, f"unsupported colour mode {mode} ({exc})") from exc
    return np.ascontiguousarray(np.asarray(im, dtype=np.uint8)[:, :, :3])


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))


def _on_white(rgba: np.ndarray) -> np.ndarray:
    # Transparent areas become white (what a viewer shows), not whatever colour they hold.
    alpha = rgba[:, :, 3:4].astype(np.uint32)
    rgb = rgba[:, :, :3].astype(np.uint32)
    out = (rgb * alpha + 255 * (255 - alpha) + 127) // 255
    return np.ascontiguousarray(out.astype(np.uint8))


def prep_key(size: int) -> str:
    """Name of the preprocessing `prepare_image(…, size)` applies, used in cache keys."""
    return f"short{size}-center"


def prepare_image(arr: np.ndarray, size: int) -> np.ndarray:
    """Resize so the short side is `size` (bicubic, antialiased), then crop the centre square."""
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"expected a uint8 HxWx3 image, got {arr.dtype} {arr.shape}")
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    height, width = arr.shape[:2]
    scale = size / min(height, width)
    new_w = max(size, round(width * scale))
    new_h = max(size, round(height * scale))
    if (new_w, new_h) != (width, height):
        resized = Image.fromarray(arr).resize((new_w, new_h), Image.Resampling.BICUBIC)
        arr = np.asarray(resized, dtype=np.uint8)
    top = (arr.shape[0] - size) // 2
    left = (arr.shape[1] - size) // 2
    return np.ascontiguousarray(arr[top : top + size, left : left + size])


# -- a whole dataset ---------------------------------------------------------------------------
def open_dataset(
    path: str | Path,
    paired: bool | None = None,
    min_images: int = DEFAULT_MIN_IMAGES,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: Progress | None = None,
    extract_to: Path | None = None,
    max_zip_bytes: int = DEFAULT_MAX_ZIP_BYTES,
    max_zip_entries: int = DEFAULT_MAX_ZIP_ENTRIES,
) -> ImageDataset:
    """Open a folder (searched recursively) or a .zip of images and check every image.

    `paired=None` means paired when the folder holds `input/` and `target/`. A zip is unpacked
    beside it into `<name>.unzipped/` (or `extract_to`), once. `progress(done, total)` is called
    as images are checked. Raises DatasetError when the dataset cannot be used.
    """
    source = Path(path).expanduser()
    if not source.exists():
        raise DatasetError(f"{source} does not exist; give a folder of images or a .zip file")
    skipped: list[SkippedFile] = []
    if source.is_file():
        if not zipfile.is_zipfile(source):
            raise DatasetError(
                f"{source.name} is neither a folder nor a zip file; give a folder of images "
                "or a .zip of one"
            )
        root, zip_skipped = _unpacked_zip(
            source, extract_to, max_bytes=max_zip_bytes, max_entries=max_zip_entries
        )
        skipped.extend(zip_skipped)
        root = _unwrap_single_folder(root)
    else:
        root = source
    if paired is None:
        paired = (root / "input").is_dir() and (root / "target").is_dir()
    if paired:
        items, more_skipped, ignored = _paired_items(root, max_pixels, progress)
    else:
        items, more_skipped, ignored = _single_items(root, max_pixels, progress)
    skipped.extend(more_skipped)
    dataset = ImageDataset(root=root, paired=paired, items=items, skipped=skipped, source=source)
    _check_usable(dataset, source, min_images, ignored)
    return dataset


def _check_usable(dataset: ImageDataset, source: Path, min_images: int, ignored: int) -> None:
    usable = len(dataset.items)
    what = "image pairs" if dataset.paired else "images"
    if usable < min_images:
        reasons = Counter(s.reason.split(" (")[0] for s in dataset.skipped)
        details = ", ".join(f"{n} {reason}" for reason, n in reasons.most_common())
        message = f"{source.name} has {usable} usable {what}; at least {min_images} are needed."
        if dataset.skipped:
            message += f" {len(dataset.skipped)} files were skipped ({details})."
        if ignored:
            message += (
                f" {ignored} other files were ignored: only {', '.join(IMAGE_EXTENSIONS)} "
                "files are read."
            )
        if dataset.paired:
            message += " A paired dataset needs input/ and target/ files with matching names."
        raise DatasetError(message + " Add more images and try again.")
    counts = dataset.counts()
    empty = [name for name in SPLITS if counts[name] == 0]
    if empty:
        raise DatasetError(
            f"{source.name}: the 7:2:1 split by file name left {' and '.join(empty)} empty "
            f"({counts['train']} train, {counts['val']} val, {counts['test']} test of {usable} "
            f"{what}); add a few more images (20 or more make this unlikely)."
        )


def _is_ignored(name: str) -> bool:
    return name.startswith(".") or name in _IGNORED_NAMES


def _scan(folder: Path) -> tuple[list[Path], int]:
    """Image files under `folder` (sorted, recursive) and the number of other files ignored."""
    found: list[Path] = []
    ignored = 0
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not _is_ignored(d))
        for name in sorted(filenames):
            if _is_ignored(name):
                continue
            if name.lower().endswith(IMAGE_EXTENSIONS):
                found.append(Path(dirpath) / name)
            else:
                ignored += 1
    return found, ignored


def _relpath(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _check(path: Path, max_pixels: int) -> str | None:
    try:
        load_rgb(path, max_pixels=max_pixels)
    except ImageError as exc:
        return exc.reason
    return None


def _single_items(
    root: Path, max_pixels: int, progress: Progress | None
) -> tuple[list[ImageItem], list[SkippedFile], int]:
    paths, ignored = _scan(root)
    items: list[ImageItem] = []
    skipped: list[SkippedFile] = []
    for done, path in enumerate(paths, start=1):
        rel = _relpath(path, root)
        reason = _check(path, max_pixels)
        if reason:
            skipped.append(SkippedFile(rel, reason))
        else:
            items.append(ImageItem(rel, path, None, split_for(rel)))
        if progress:
            progress(done, len(paths))
    return items, skipped, ignored


def _by_stem(folder: Path, root: Path, skipped: list[SkippedFile]) -> tuple[dict[str, Path], int]:
    """Map 'sub/name' (no extension) -> file; a second file with the same stem is skipped."""
    paths, ignored = _scan(folder)
    stems: dict[str, Path] = {}
    for path in paths:
        stem = path.relative_to(folder).with_suffix("").as_posix()
        if stem in stems:
            skipped.append(
                SkippedFile(
                    _relpath(path, root),
                    f"another file has the same name ({_relpath(stems[stem], root)})",
                )
            )
        else:
            stems[stem] = path
    return stems, ignored


def _paired_items(
    root: Path, max_pixels: int, progress: Progress | None
) -> tuple[list[ImageItem], list[SkippedFile], int]:
    input_dir, target_dir = root / "input", root / "target"
    if not input_dir.is_dir() or not target_dir.is_dir():
        raise DatasetError(
            f"{root.name}: a paired dataset needs an input/ and a target/ folder with files of "
            "matching names (input/cat.jpg and target/cat.png)"
        )
    skipped: list[SkippedFile] = []
    inputs, ignored_in = _by_stem(input_dir, root, skipped)
    targets, ignored_out = _by_stem(target_dir, root, skipped)
    for stem in sorted(set(targets) - set(inputs)):
        skipped.append(SkippedFile(_relpath(targets[stem], root), "no matching file in input/"))
    matched = sorted(set(inputs) & set(targets))
    for stem in sorted(set(inputs) - set(targets)):
        skipped.append(
            SkippedFile(_relpath(inputs[stem], root), f"no matching file in target/ ({stem}.*)")
        )
    items: list[ImageItem] = []
    total = 2 * len(matched)
    for index, stem in enumerate(matched):
        src, dst = inputs[stem], targets[stem]
        rel, target_rel = _relpath(src, root), _relpath(dst, root)
        reason = _check(src, max_pixels)
        if progress:
            progress(2 * index + 1, total)
        target_reason = _check(dst, max_pixels)
        if progress:
            progress(2 * index + 2, total)
        if reason:
            skipped.append(SkippedFile(rel, reason))
        if target_reason:
            skipped.append(SkippedFile(target_rel, target_reason))
            if not reason:
                skipped.append(SkippedFile(rel, f"its target {target_rel} is not usable"))
        if not reason and not target_reason:
            items.append(ImageItem(rel, src, dst, split_for(rel)))
    return items, skipped, ignored_in + ignored_out


# -- zip files ---------------------------------------------------------------------------------


def _unwrap_single_folder(root: Path) -> Path:
    # Zips made by "compress folder" hold one top folder; look inside it.
    entries = [p for p in root.iterdir() if not _is_ignored(p.name)]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return root


def _unpacked_zip(
    zip_path: Path, extract_to: Path | None, *, max_bytes: int, max_entries: int
) -> tuple[Path, list[SkippedFile]]:
    """Unpack once into a folder beside the zip; reuse it while the zip is unchanged."""
    target = extract_to or zip_path.with_name(zip_path.stem + ".unzipped")
    sha = sha256_file(zip_path)
    marker = target / _ZIP_MARKER
    if target.exists():
        if not marker.is_file():
            raise DatasetError(
                f"{target} already exists and was not unpacked by Distillery; move it away so "
                f"{zip_path.name} can be unpacked there"
            )
        if _marker_sha(marker) == sha:
            info = json.loads(marker.read_text())
            return target, [SkippedFile(**s) for s in info.get("skipped", [])]
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
    except OSError as exc:
        raise DatasetError(
            f"cannot unpack {zip_path.name} into {target.parent} ({exc.strerror or exc}); "
            "unpack it yourself and give the folder"
        ) from exc
    try:
        skipped = _extract(zip_path, tmp, max_bytes=max_bytes, max_entries=max_entries)
        meta = {"sha256": sha, "source": zip_path.name, "skipped": [vars(s) for s in skipped]}
        (tmp / _ZIP_MARKER).write_text(json.dumps(meta, indent=1))
        if target.exists():
            shutil.rmtree(target)  # ours (marker checked above) and stale
        try:
            os.replace(tmp, target)
        except OSError:
            # Another process unpacked the same zip meanwhile: use its copy if it is this zip.
            if _marker_sha(marker) != sha:
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target, skipped


def _marker_sha(marker: Path) -> str | None:
    try:
        return json.loads(marker.read_text()).get("sha256")
    except (OSError, ValueError, AttributeError):
        return None


def _safe_member_path(name: str) -> PurePosixPath | None:
    """The member's relative path, or None when it would land outside the folder (zip-slip)."""
    name = name.replace("\\", "/")
    pure = PurePosixPath(name)
    if name.startswith("/") or (pure.parts and ":" in pure.parts[0]):
        return None
    if any(part == ".." for part in pure.parts):
        return None
    return pure


def _extract(zip_path: Path, dest: Path, *, max_bytes: int, max_entries: int) -> list[SkippedFile]:
    skipped: list[SkippedFile] = []
    dest_resolved = dest.resolve()
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DatasetError(f"{zip_path.name} is not a readable zip file ({exc})") from exc
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir()]
        if len(members) > max_entries:
            raise DatasetError(
                f"{zip_path.name} holds {len(members)} files, more than the limit of "
                f"{max_entries}; split it into smaller zips"
            )
        declared = sum(m.file_size for m in members)
        if declared > max_bytes:
            raise DatasetError(
                f"{zip_path.name} would unpack to {declared / 1e9:.1f} GB, more than the limit "
                f"of {max_bytes / 1e9:.1f} GB; use a smaller dataset or a folder"
            )
        for member in members:
            display = member.filename.replace("\\", "/")
            rel = _safe_member_path(member.filename)
            if rel is None or not (dest_resolved / rel).resolve().is_relative_to(dest_resolved):
                skipped.append(
                    SkippedFile(display, "unsafe path in zip (it points outside the dataset)")
                )
                continue
            if any(_is_ignored(part) for part in rel.parts):
                continue
            if not rel.name.lower().endswith(IMAGE_EXTENSIONS):
                continue
            if stat.S_ISLNK(member.external_attr >> 16):
                skipped.append(SkippedFile(display, "symbolic link in zip"))
                continue
            if member.flag_bits & 0x1:
                skipped.append(SkippedFile(display, "encrypted zip entry"))
                continue
            reason = _extract_member(archive, member, dest / rel)
            if reason:
                skipped.append(SkippedFile(display, reason))
    return skipped


def _extract_member(archive: zipfile.ZipFile, member: zipfile.ZipInfo, out: Path) -> str | None:
    out.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    try:
        with archive.open(member) as src, open(out, "wb") as dst:
            for chunk in iter(lambda: src.read(1 << 20), b""):
                written += len(chunk)
                # The header's size was counted against the limit; never write more than it says.
                if written > member.file_size:
                    raise zipfile.BadZipFile("entry is larger than its header says")
                dst.write(chunk)
    except (
        zipfile.BadZipFile,
        zlib.error,
        NotImplementedError,
        OSError,
        EOFError,
        ValueError,
    ) as exc:
        out.unlink(missing_ok=True)
        return f"damaged zip entry ({exc})"
    except RuntimeError as exc:  # zipfile raises RuntimeError for password-protected entries
        out.unlink(missing_ok=True)
        return f"unreadable zip entry ({exc})"
    return None
