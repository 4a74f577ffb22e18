"""Teacher outputs cached on disk, so the teacher runs once per image and preprocessing.

Files live at `<root>/<teacher fingerprint[:16]>/<prep key>/<sha[:2]>/<sha>.png`, where `sha` is
the sha256 of the image file's bytes: a renamed file is still a hit, an edited one is not, and a
changed teacher file or OpenCV version gets a new folder. PNGs are lossless uint8 and written
atomically (temporary file, then rename), so runs sharing a cache never read half a file.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from distill_core.datasets import ImageItem, load_rgb, prep_key, prepare_image
from distill_core.teachers import Teacher, TeacherError

INPUTS_DIR = "_inputs"


def default_cache_dir() -> Path:
    """`$DISTILL_CACHE_DIR`, else `~/.cache/distillery`."""
    configured = os.environ.get("DISTILL_CACHE_DIR")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "distillery"


class TeacherCache:
    """Teacher outputs (and prepared inputs) for dataset items, computed once and kept on disk."""

    def __init__(self, root: Path | None, teacher: Teacher, batch_size: int = 8) -> None:
        self.root = Path(root).expanduser() if root else default_cache_dir()
        self.teacher = teacher
        self.batch_size = batch_size
        self.hits = 0
        self.misses = 0
        self._hashes: dict[Path, tuple[int, int, str]] = {}

    def target_for(self, item: ImageItem, size: int) -> np.ndarray:
        """The teacher's output for the item's prepared image: uint8 size x size x 3."""
        return self.targets_for([item], size)[0]

    def targets_for(self, items: Sequence[ImageItem], size: int) -> list[np.ndarray]:
        """Teacher outputs for several items; the misses go through the teacher in batches."""
        if self.teacher.kind == "pairs":
            return [self._paired_target(item, size) for item in items]
        results: list[np.ndarray | None] = []
        missing: list[tuple[int, Path]] = []
        for index, item in enumerate(items):
            path = self._target_path(item.path, size)
            cached = _read_png(path, size)
            if cached is None:
                missing.append((index, path))
            else:
                self.hits += 1
            results.append(cached)
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start : start + self.batch_size]
            inputs = np.stack([self.input_for(items[i], size) for i, _ in chunk])
            batch = torch.from_numpy(inputs.transpose(0, 3, 1, 2).astype(np.float32) / 255.0)
            outputs = self.teacher(batch).cpu().numpy()
            for (index, path), out in zip(chunk, outputs, strict=True):
                image = np.round(out.transpose(1, 2, 0) * 255.0).astype(np.uint8)
                _write_png(path, image)
                results[index] = image
                self.misses += 1
        return results  # type: ignore[return-value]  # every slot is filled above

    def input_for(self, item: ImageItem, size: int) -> np.ndarray:
        """The item's prepared input (`prepare_image(load_rgb(path), size)`), cached too."""
        path = self._entry(self.root / INPUTS_DIR, item.path, size)
        cached = _read_png(path, size)
        if cached is None:
            cached = prepare_image(load_rgb(item.path), size)
            _write_png(path, cached)
        return cached

    def _paired_target(self, item: ImageItem, size: int) -> np.ndarray:
        if item.target_path is None:
            raise TeacherError(
                f"{item.relpath} has no target image: the pairs teacher needs a paired dataset "
                "(input/ and target/ folders with matching names)"
            )
        path = self._entry(self.root / INPUTS_DIR, item.target_path, size)
        cached = _read_png(path, size)
        if cached is None:
            cached = prepare_image(load_rgb(item.target_path), size)
            _write_png(path, cached)
        return cached

    def _target_path(self, image: Path, size: int) -> Path:
        return self._entry(self.root / self.teacher.fingerprint[:16], image, size)

    def _entry(self, base: Path, image: Path, size: int) -> Path:
        sha = self._content_sha(image)
        return base / prep_key(size) / sha[:2] / f"{sha}.png"

    def _content_sha(self, path: Path) -> str:
        # Hash each file once per process unless it changes (size or mtime).
        st = path.stat()
        known = self._hashes.get(path)
        if known and known[:2] == (st.st_size, st.st_mtime_ns):
            return known[2]
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        self._hashes[path] = (st.st_size, st.st_mtime_ns, digest)
        return digest


def _read_png(path: Path, size: int) -> np.ndarray | None:
    try:
        with Image.open(path, formats=("PNG",)) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError, SyntaxError):
        return None  # missing or damaged: computed again and rewritten
    return arr if arr.shape == (size, size, 3) else None


def _write_png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem[:16]}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            Image.fromarray(image).save(fh, format="PNG", compress_level=1)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
