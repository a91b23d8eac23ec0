"""Where training pairs come from: a folder (image + .txt caption), a JSONL manifest, or WebDataset-style tar shards.

Every source yields `RawSample(key, caption, read)`: `read()` returns the image bytes (or raises). Reading is
deferred so a corrupt or missing file is a per-sample skip, never an abort. A manifest line may also name a
`reference`: another photo of the same person, whose face then gives the identity (the target still gives the
pose, expression and location).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
CAPTION_EXTS = (".txt", ".caption")


@dataclass
class RawSample:
    key: str  # stable across runs: the resume key
    caption: str | None
    read: Callable[[], bytes]
    read_reference: Callable[[], bytes] | None = None  # another photo of the person: the identity's source


def from_folder(folder: str | Path) -> Iterator[RawSample]:
    """Images in `folder` (recursively, sorted) with a caption in the sidecar `<stem>.txt` (None when absent)."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"--images: {root} is not a folder")
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTS):
        caption = None
        for ext in CAPTION_EXTS:
            side = path.with_suffix(ext)
            if side.is_file():
                caption = side.read_text(encoding="utf-8", errors="replace").strip()
                break
        yield RawSample(str(path.relative_to(root)), caption, path.read_bytes)


def from_manifest(manifest: str | Path) -> Iterator[RawSample]:
    """JSONL lines {"image": path (relative to the manifest's folder or absolute), "caption": str}."""
    manifest = Path(manifest)
    if not manifest.is_file():
        raise FileNotFoundError(f"--manifest: {manifest} does not exist")
    with manifest.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                image = Path(row["image"])
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                yield RawSample(f"{manifest.name}:{number}", None, _raiser(ValueError(f"bad manifest line: {e}")))
                continue
            reference = row.get("reference")
            yield RawSample(str(row["image"]), row.get("caption"), _resolve(manifest, image).read_bytes,
                            None if reference is None else _resolve(manifest, Path(reference)).read_bytes)


def _resolve(manifest: Path, path: Path) -> Path:
    return path if path.is_absolute() else manifest.parent / path


def shard_of(samples: Iterable[RawSample], num_shards: int, index: int) -> Iterator[RawSample]:
    """The samples of part `index` of `num_shards`, by a stable hash of the key: parallel prepare processes over
    the same input take disjoint parts that together are all of it, whatever the input order (resume keeps
    working per part)."""
    if num_shards == 1:
        yield from samples
        return
    for raw in samples:
        if int(hashlib.sha1(raw.key.encode("utf-8")).hexdigest()[:12], 16) % num_shards == index:
            yield raw


def _raiser(exc: Exception) -> Callable[[], bytes]:
    def read() -> bytes:
        raise exc
    return read


def from_shards(pattern: str) -> Iterator[RawSample]:
    """WebDataset shards (`x-{000..099}.tar`, local paths or URLs the `webdataset` library opens), streamed: the
    members sharing a key form one sample (`jpg|png|...` + `txt`/`json`). A shard that cannot be read is skipped
    with a warning (the samples read before its damage are kept), as a 2 M-image run must not stop for one."""
    import webdataset as wds

    def warn(exc: Exception) -> bool:
        log.warning("WebDataset shard problem, skipping the rest of that shard: %s", exc)
        return True

    dataset = wds.WebDataset(pattern, shardshuffle=False, handler=warn, empty_check=False)
    for sample in dataset:
        group = {k.lower(): v for k, v in sample.items() if not k.startswith("__") and isinstance(v, bytes)}
        yield _group_sample(Path(str(sample["__url__"])).name, sample["__key__"], group)


def _group_sample(shard_name: str, key: str, group: dict[str, bytes]) -> RawSample:
    caption = None
    if "txt" in group:
        caption = group["txt"].decode("utf-8", errors="replace").strip()
    elif "json" in group:
        try:
            caption = json.loads(group["json"]).get("caption")
        except (json.JSONDecodeError, AttributeError):
            caption = None
    image = next((group[ext] for ext in ("jpg", "jpeg", "png", "webp", "bmp") if ext in group), None)
    read = (lambda: image) if image is not None else _raiser(ValueError("no image member in the sample"))
    return RawSample(f"{shard_name}/{key}", caption, read)
