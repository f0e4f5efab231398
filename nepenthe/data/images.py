"""Image files → an in-memory uint8 :class:`ImageSplit` at a fixed size, cached next to the data.

Folder datasets (Tiny-ImageNet, PACS, VLCS, Flowers-102, DTD, FGVC-Aircraft, ImageNet) are decoded once with PIL:
the shorter side is resized to ``image_size`` and the centre ``image_size`` square kept (the usual evaluation
transform). The decoded tensor is cached under ``<root>/.nepenthe-cache/`` (keyed by the file list and size, written
atomically), so later runs load in seconds. Training augmentation is the batch crop/flip of the loader.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm

from ..errors import DataError
from .loader import ImageSplit

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".tif", ".tiff", ".webp"}
CACHE_DIR = ".nepenthe-cache"
MAX_BYTES = 24 * 1024**3  # refuse to decode more than this into memory


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []


def read_image(path: Path, size: int) -> torch.Tensor:
    """``uint8 [3, size, size]``: RGB, shorter side resized to ``size``, centre crop."""
    try:
        with Image.open(path) as opened:
            img: Image.Image = opened.convert("RGB")
            w, h = img.size
            scale = size / min(w, h)
            img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BILINEAR)
            w, h = img.size
            left, top = (w - size) // 2, (h - size) // 2
            img = img.crop((left, top, left + size, top + size))
            data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read image {path} ({exc}); delete or replace it") from exc
    return data.view(size, size, 3).permute(2, 0, 1).contiguous()


def _cache_key(root: Path, files: list[Path], labels: list[int], size: int) -> str:
    digest = hashlib.sha256(str(size).encode())
    for f, y in zip(files, labels):
        digest.update(f"{f.relative_to(root)}:{f.stat().st_size}:{y}\n".encode())
    return digest.hexdigest()[:20]


def load_split(root: str | Path, files: list[Path], labels: list[int], size: int, *, desc: str = "decoding",
               progress: bool = True) -> ImageSplit:
    """Decode ``files`` (cached) into an :class:`ImageSplit` with ``labels``."""
    root = Path(root)
    if not files:
        raise DataError(f"no image files found for {desc} under {root}")
    needed = len(files) * 3 * size * size
    if needed > MAX_BYTES:
        raise DataError(f"{desc}: {len(files)} images at {size}x{size} need {needed / 1024**3:.1f} GiB in memory "
                        f"(limit {MAX_BYTES / 1024**3:.0f} GiB); lower dataset.kwargs.image_size or use train_subset")
    cache = root / CACHE_DIR / f"{_cache_key(root, files, labels, size)}.pt"
    if cache.is_file():
        try:
            stored = torch.load(cache, weights_only=True)
            return ImageSplit(stored["images"], stored["labels"])
        except Exception:
            cache.unlink(missing_ok=True)  # a damaged cache is rebuilt, never trusted
    images = torch.empty(len(files), 3, size, size, dtype=torch.uint8)
    for i, path in enumerate(tqdm(files, desc=desc, disable=not progress, leave=False)):
        images[i] = read_image(path, size)
    split = ImageSplit(images, torch.tensor(labels, dtype=torch.long))
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache.parent, suffix=".pt")
        os.close(fd)
        torch.save({"images": split.images, "labels": split.labels}, tmp)
        os.replace(tmp, cache)
    except OSError:
        pass  # a read-only data folder: work without a cache
    return split


def class_folders(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def folder_samples(folder: Path, classes: list[str]) -> tuple[list[Path], list[int]]:
    """Files of ``folder/<class>/*`` (ImageFolder layout) with labels by ``classes`` order."""
    files, labels = [], []
    for index, name in enumerate(classes):
        found = image_files(folder / name)
        files += found
        labels += [index] * len(found)
    return files, labels
