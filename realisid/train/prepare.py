"""Build the training cache: one face analysis per image, the single-person filter, one file per kept sample.

Cache layout (CACHE/):
  manifest.jsonl   one line per kept sample: {"id", "key", "caption", "file", "box", "space", "score"}
  skipped.jsonl    one line per skipped sample: {"key", "reason"} (so --resume does not analyse it again)
  stats.json       {"seen", "written", "skipped": {reason: n}, ...} for the whole cache (all runs)
  samples/<id>.safetensors with
    image        (S, S, 3) uint8   the training image (a square crop that keeps the face, resized to --size)
    mask         (S, S) uint8      1 inside the square face box (c_loc), 0 elsewhere
    box          (4,) float32      the square face box as fractions of the image (x0, y0, x1, y1)
    landmarks    (68|5, 2) float32 landmarks in unit crop coordinates ([0, 1] over the square box)
    hint         (H, H, 3) uint8   landmarks drawn in crop coordinates (the local branch's hint), H = --hint-size
    face_crop    (224, 224, 3) uint8 the identity encoder input (masked face crop)
    embedding    (D,) float32      the backend's face embedding (ArcFace for insightface), when it has one
face_crop and embedding come from the sample's reference photo when the source names one (manifest field
"reference": "other" in the cache manifest), else from the training image itself (the paper's recipe: "self").
A compact cache (--compact) stores image and face_crop PNG-encoded (`image_png`, `face_crop_png`: lossless) and
neither mask nor hint: `CachedFaceDataset` derives them from box and landmarks, so its items are the same.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import safetensors.numpy

from realisid.faces.identity_input import masked_face_crop
from realisid.faces.record import FaceRecord
from realisid.faces.render import render_face_hint, to_crop_coords
from realisid.train.data import box_mask_uint8
from realisid.train.sources import RawSample

log = logging.getLogger(__name__)

SKIP_REASONS = ("corrupt", "no_caption", "no_face", "multiple_faces", "face_too_small", "error")
FACE_CROP_SIZE = 224


@dataclass
class PrepareOptions:
    size: int = 512  # training image side (pixels)
    detect_size: int = 512  # faces are analysed at max(size, detect_size)
    min_face: int = 64  # minimum side of the square face box, pixels of the training image
    min_score: float = 0.9  # faces below this detector score are ignored (neither counted nor used)
    box_expand: float = 1.0  # square box side = longer detection side * box_expand
    hint_size: int = 512  # landmark hint side (local branch crop size * 8)
    compact: bool = False  # PNG-encoded images, no mask or hint (derived when read): a fraction of the disk
    require_caption: bool = True
    resume: bool = False


@dataclass
class PrepareStats:
    seen: int = 0
    written: int = 0
    skipped: Counter = field(default_factory=Counter)
    already_done: int = 0

    def to_dict(self) -> dict:
        return {"seen": self.seen, "written": self.written, "already_done": self.already_done,
                "skipped": {r: int(self.skipped.get(r, 0)) for r in SKIP_REASONS}}


class SkipSample(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def sample_id(key: str) -> str:
    return hashlib.sha1(key.encode("utf-8")).hexdigest()[:20]


def decode_image(data: bytes) -> np.ndarray:
    """Bytes -> RGB uint8; SkipSample('corrupt') when it does not decode."""
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    if arr is None or arr.ndim != 3 or min(arr.shape[:2]) < 8:
        raise SkipSample("corrupt", "not a decodable image")
    return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)


def centre_square(rgb: np.ndarray, size: int) -> np.ndarray:
    """Centre crop to a square, resize to size x size (area filter when shrinking)."""
    h, w = rgb.shape[:2]
    side = min(h, w)
    y0, x0 = (h - side) // 2, (w - side) // 2
    crop = rgb[y0:y0 + side, x0:x0 + side]
    interp = cv2.INTER_AREA if side > size else cv2.INTER_CUBIC
    return np.ascontiguousarray(cv2.resize(crop, (size, size), interpolation=interp))


def single_face(records: list[FaceRecord], min_score: float, what: str = "image") -> FaceRecord:
    """The only confident face of the image (or of its reference), or SkipSample(no_face | multiple_faces)."""
    faces = [r for r in records if r.score >= min_score]
    if not faces:
        raise SkipSample("no_face", f"in the {what}")
    if len(faces) > 1:
        raise SkipSample("multiple_faces", f"{len(faces)} faces in the {what}")
    return faces[0]


def landmarks_in_crop(record: FaceRecord, square_px: np.ndarray) -> np.ndarray:
    points = record.landmarks68 if record.landmarks68 is not None else record.kps
    return to_crop_coords(points, square_px, 1).astype(np.float32)


def short_side_resize(rgb: np.ndarray, side: int) -> np.ndarray:
    """The whole photo resized so its shorter side is `side` (area filter when shrinking)."""
    h, w = rgb.shape[:2]
    scale = side / min(h, w)
    size = (max(side, round(w * scale)), max(side, round(h * scale)))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    return np.ascontiguousarray(cv2.resize(rgb, size, interpolation=interp))


def face_square_offset(length: int, side: int, lo: float, hi: float) -> int:
    """Start of a `side`-long window on an axis of `length` that holds [lo, hi] (the face box), moved as little
    as possible from the centre: the centre crop when it already holds the face, so face locations stay varied.
    A face larger than the window is centred in it."""
    centre = (length - side) // 2
    if hi - lo > side:
        start = round((lo + hi - side) / 2)
    else:
        start = min(max(centre, int(np.ceil(hi)) - side), int(np.floor(lo)))
    return int(min(max(start, 0), length - side))


def face_square(rgb: np.ndarray, record: FaceRecord, expand: float) -> tuple[np.ndarray, FaceRecord]:
    """The square crop (side = the shorter image side) holding the face's location box, and the record in its
    coordinates. A centre crop would cut the head off a full-body portrait: the small faces the method needs."""
    h, w = rgb.shape[:2]
    side = min(h, w)
    box = record.square_box(expand)
    x0 = face_square_offset(w, side, max(float(box[0]), 0.0), min(float(box[2]), w))
    y0 = face_square_offset(h, side, max(float(box[1]), 0.0), min(float(box[3]), h))
    shift = np.array([x0, y0], np.float32)
    moved = record.replace(box=record.box - np.tile(shift, 2), kps=record.kps - shift, image_size=(side, side),
                           landmarks68=None if record.landmarks68 is None else record.landmarks68 - shift)
    return np.ascontiguousarray(rgb[y0:y0 + side, x0:x0 + side]), moved


def build_sample(rgb: np.ndarray, analyzer, opts: PrepareOptions,
                 reference_rgb: np.ndarray | None = None) -> tuple[dict, dict]:
    """One training image -> (tensors, manifest fields). Raises SkipSample.

    Faces are analysed on the whole photo with its shorter side at `detect_size` (>= size), so small faces of a
    low training resolution are still found and the identity crop keeps its detail; the single-person filter
    applies to the whole photo. The training image is the square crop that keeps the face (face_square); box and
    landmarks are scale free."""
    detect_size = max(opts.size, opts.detect_size)
    photo = short_side_resize(rgb, detect_size)
    found = single_face(analyzer.analyze(photo), opts.min_score)
    detect, record = face_square(photo, found, opts.box_expand)
    image = detect if detect_size == opts.size else centre_square(detect, opts.size)
    square = record.square_box(opts.box_expand)
    box = (square / detect_size).astype(np.float32)
    side = float(box[2] - box[0]) * opts.size
    if side < opts.min_face:
        raise SkipSample("face_too_small", f"{side:.0f} px < {opts.min_face}")
    landmarks = landmarks_in_crop(record, square)
    tensors = {
        "image": image,
        "mask": box_mask_uint8(box, opts.size),  # pixel centres in the box
        "box": box,
        "landmarks": landmarks,
    }
    identity_photo, identity_record = photo, found
    if reference_rgb is not None:
        identity_photo = short_side_resize(reference_rgb, detect_size)
        identity_record = single_face(analyzer.analyze(identity_photo), opts.min_score, what="reference")
    # the identity crop is the record's own square box of the whole photo, as at inference
    # (identity_sources.encode_person); box_expand widens the location box and the hint crop only
    tensors["face_crop"] = masked_face_crop(identity_photo, identity_record, FACE_CROP_SIZE)
    if opts.hint_size > 0:
        tensors["hint"] = np.round(render_face_hint(landmarks * opts.hint_size, opts.hint_size) * 255).astype(np.uint8)
    if identity_record.embedding is not None:
        tensors["embedding"] = np.asarray(identity_record.embedding, np.float32)
    if opts.compact:
        tensors = compact_tensors(tensors)
    fields = {"box": [round(float(v), 6) for v in box], "space": record.space, "score": round(record.score, 4),
              "reference": "self" if reference_rgb is None else "other",
              # what inference must reproduce: how the box was squared and which landmark layout the hint draws
              "box_expand": opts.box_expand, "hint": "landmarks68" if len(landmarks) == 68 else "kps5"}
    return tensors, fields


def compact_tensors(tensors: dict) -> dict:
    """A sample's tensors for a compact cache: images as PNG bytes, nothing derivable from box and landmarks."""
    out = {k: v for k, v in tensors.items() if k not in ("image", "face_crop", "mask", "hint")}
    for key in ("image", "face_crop"):
        ok, png = cv2.imencode(".png", cv2.cvtColor(tensors[key], cv2.COLOR_RGB2BGR))
        if not ok:
            raise RuntimeError(f"PNG encoding of the sample's {key} failed")
        out[f"{key}_png"] = png.reshape(-1)
    return out


class CacheWriter:
    """Appends to the manifests of an (optionally resumed) cache folder."""

    def __init__(self, out: str | Path, resume: bool):
        self.out = Path(out)
        self.samples = self.out / "samples"
        self.manifest = self.out / "manifest.jsonl"
        self.skipped = self.out / "skipped.jsonl"
        if self.manifest.exists() and not resume:
            raise FileExistsError(f"{self.out} already holds a cache (manifest.jsonl); pass --resume to continue it "
                                  f"or choose another --out")
        self.samples.mkdir(parents=True, exist_ok=True)
        self.done_keys = _keys(self.manifest) | _keys(self.skipped) if resume else set()
        self.previous = _load_stats(self.out / "stats.json") if resume else None
        mode = "a" if resume else "w"
        self._manifest_f = self.manifest.open(mode, encoding="utf-8")
        self._skipped_f = self.skipped.open(mode, encoding="utf-8")

    def write(self, raw: RawSample, tensors: dict, fields: dict) -> None:
        sid = sample_id(raw.key)
        rel = f"samples/{sid}.safetensors"
        tmp = self.out / (rel + ".tmp")
        safetensors.numpy.save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp))
        tmp.replace(self.out / rel)  # the manifest line is written only once the file is complete
        row = {"id": sid, "key": raw.key, "caption": raw.caption or "", "file": rel, **fields}
        self._manifest_f.write(json.dumps(row) + "\n")
        self._manifest_f.flush()

    def skip(self, raw: RawSample, reason: str) -> None:
        self._skipped_f.write(json.dumps({"key": raw.key, "reason": reason}) + "\n")
        self._skipped_f.flush()

    def close(self, stats: PrepareStats) -> dict:
        self._manifest_f.close()
        self._skipped_f.close()
        total = stats.to_dict()
        if self.previous:  # a resumed run: the cache's totals add up over all runs
            total["seen"] += self.previous.get("seen", 0)
            total["written"] += self.previous.get("written", 0)
            for r, n in self.previous.get("skipped", {}).items():
                total["skipped"][r] = total["skipped"].get(r, 0) + int(n)
        total["run"] = stats.to_dict()
        (self.out / "stats.json").write_text(json.dumps(total, indent=2))
        return total


def _keys(path: Path) -> set[str]:
    if not path.exists():
        return set()
    keys = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            keys.add(json.loads(line)["key"])
        except (json.JSONDecodeError, KeyError):
            continue  # a line cut short by an interrupted run: that sample is redone
    return keys


def _load_stats(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def process_one(raw: RawSample, analyzer, opts: PrepareOptions) -> tuple[dict, dict]:
    if opts.require_caption and not (raw.caption or "").strip():
        raise SkipSample("no_caption")
    try:
        data = raw.read()
    except Exception as e:  # unreadable file, bad manifest line: this sample only
        raise SkipSample("corrupt", str(e)) from e
    reference = None
    if raw.read_reference is not None:
        try:
            reference = decode_image(raw.read_reference())
        except Exception as e:
            raise SkipSample("corrupt", f"reference: {e}") from e
    return build_sample(decode_image(data), analyzer, opts, reference)


def prepare_cache(samples: Iterable[RawSample], analyzer, out: str | Path, opts: PrepareOptions | None = None,
                  progress: bool = True) -> dict:
    """Analyse every sample once and write the cache; returns the stats (also written to stats.json)."""
    from tqdm import tqdm

    opts = opts or PrepareOptions()
    writer = CacheWriter(out, opts.resume)
    stats = PrepareStats()
    bar = tqdm(samples, desc="prepare", unit="img", disable=not progress)
    try:
        for raw in bar:
            if raw.key in writer.done_keys:
                stats.already_done += 1
                continue
            stats.seen += 1
            try:
                tensors, fields = process_one(raw, analyzer, opts)
            except SkipSample as s:
                _skip(writer, stats, raw, s.reason, str(s))
                continue
            except Exception as e:  # a backend failure on one odd image must not end a multi-day run
                log.exception("unexpected error on %s", raw.key)
                _skip(writer, stats, raw, "error", repr(e))
                continue
            writer.write(raw, tensors, fields)
            writer.done_keys.add(raw.key)
            stats.written += 1
            bar.set_postfix(kept=stats.written, skipped=sum(stats.skipped.values()))
    finally:
        total = writer.close(stats)
    log.info("prepare: %d seen, %d written, %d already done; skipped %s", stats.seen, stats.written,
             stats.already_done, dict(stats.skipped))
    return total


def _skip(writer: CacheWriter, stats: PrepareStats, raw: RawSample, reason: str, detail: str) -> None:
    stats.skipped[reason] += 1
    writer.skip(raw, reason)
    writer.done_keys.add(raw.key)
    log.debug("skip %s (%s)", raw.key, detail)


def make_analyzer(backend: str, insightface_root: str | None = None, min_score: float = 0.9, provider: str = "CPU"):
    if backend == "embedded":
        from realisid.faces.embedded import EmbeddedAnalyzer

        return EmbeddedAnalyzer(min_confidence=min_score)
    if backend == "insightface":
        if not insightface_root:
            raise ValueError("--backend insightface needs --insightface-root (the folder holding models/<pack>)")
        from realisid.faces.insightface_backend import InsightFaceAnalyzer

        return InsightFaceAnalyzer(insightface_root, provider=provider)
    if backend == "mini":  # RealisID-Mini scenes: the bundled Mini detector and face net
        from realisid.mini.backend import get_mini_analyzer

        return get_mini_analyzer()
    raise ValueError(f"unknown face backend {backend!r}; use embedded, insightface or mini")
