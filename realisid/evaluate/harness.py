"""Evaluation harness after the paper's protocol: identities x prompts x face sizes x person counts x variants.

An `EvalPlan` expands into `EvalCase`s. A generator turns a case into images: any callable
`(EvalCase) -> list[RGB uint8 arrays]`, or a `WorkflowGenerator` that fills an API-format ComfyUI workflow's
inputs from the case and runs it in-process (`realisid.host.comfy_host.execute`). Each image is analysed with one face
analyzer, its faces are matched to the requested boxes, and one row per (case, image, slot) is scored.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..faces.analyzer import FaceAnalyzer
from ..faces.errors import NoFaceError
from ..faces.record import FaceRecord
from ..layout import FaceLayout, LayoutError, layout_from_numbers
from . import metrics
from .pose import pose_error

log = logging.getLogger(__name__)

PAPER_SIZES = (1 / 4, 1 / 5, 1 / 6, 1 / 7)


@dataclass(frozen=True)
class EvalCase:
    case_id: str
    variant: str
    settings: dict  # the variant's workflow overrides, "node_id.input" -> value (ablation switches)
    prompt: str
    prompt_index: int
    size: float  # face side as a fraction of the shorter image side
    persons: int
    seed: int
    references: tuple[str, ...]  # one reference image per slot
    drivers: tuple[str, ...]  # optional pose/expression target image per slot; () = the reference's own face
    layout: FaceLayout
    width: int  # the output size the case is generated at (the layout fits any)
    height: int

    def pixel_boxes(self, width: int | None = None, height: int | None = None) -> np.ndarray:
        """The layout's boxes in pixels of an image of the given size (default: the case's output size)."""
        return self.layout.pixel_boxes(width or self.width, height or self.height)

    def values(self) -> dict:
        """Everything a workflow placeholder may refer to."""
        vals = {
            "case_id": self.case_id, "variant": self.variant, "prompt": self.prompt, "seed": self.seed,
            "size": self.size, "persons": self.persons, "width": self.width, "height": self.height,
            "boxes": json.dumps(self.layout.boxes(self.width, self.height).tolist()),
            "boxes_px": json.dumps(self.pixel_boxes().round(2).tolist()),
        }
        for i, path in enumerate(self.references):
            vals[f"reference_{i}"] = path
        for i, path in enumerate(self.drivers):
            vals[f"driver_{i}"] = path
        return vals


@dataclass
class EvalPlan:
    references: list[str]
    prompts: list[str]
    sizes: list[float] = field(default_factory=lambda: list(PAPER_SIZES))
    persons: list[int] = field(default_factory=lambda: [1])
    variants: dict[str, dict] = field(default_factory=lambda: {"full": {}})
    seeds: list[int] = field(default_factory=lambda: [0])
    width: int = 1024
    height: int = 1024
    drivers: list[str] = field(default_factory=list)
    face_y: float = 0.4  # vertical centre of the row of faces (fraction of the height)

    @classmethod
    def from_dict(cls, data: dict, base_dir: str | Path = ".") -> EvalPlan:
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known - {"mapping"}
        if unknown:
            raise ValueError(f"unknown plan keys {sorted(unknown)}; known: {sorted(known)} (+ 'mapping')")
        if not data.get("references") or not data.get("prompts"):
            raise ValueError("a plan needs non-empty 'references' (image paths) and 'prompts'")
        base = Path(base_dir)
        fields = {k: v for k, v in data.items() if k in known}
        for key in ("references", "drivers"):
            fields[key] = [str((base / p).resolve()) for p in fields.get(key, [])]
        return cls(**fields)

    @classmethod
    def from_json(cls, path: str | Path) -> EvalPlan:
        path = Path(path)
        return cls.from_dict(json.loads(path.read_text()), base_dir=path.parent)

    def cases(self) -> list[EvalCase]:
        """All cases. Multi-person groups rotate through the references (group k = refs k, k+1, ...), so each
        identity leads once per person count."""
        out = []
        refs = list(self.references)
        for persons in self.persons:
            if persons < 1:
                raise ValueError(f"persons must be >= 1, got {persons}")
            for size in self.sizes:
                layout = self.row_layout(persons, size)
                for k in range(len(refs)):
                    group = tuple(refs[(k + i) % len(refs)] for i in range(persons))
                    drivers = tuple(self.drivers[(k + i) % len(self.drivers)] for i in range(persons)) if self.drivers else ()
                    for p_idx, prompt in enumerate(self.prompts):
                        for seed in self.seeds:
                            for variant, settings in self.variants.items():
                                case_id = f"{variant}_p{persons}_s{_size_label(size, True)}_id{k}_t{p_idx}_seed{seed}"
                                out.append(EvalCase(case_id, variant, dict(settings), prompt, p_idx, float(size),
                                                    persons, int(seed), group, drivers, layout, self.width,
                                                    self.height))
        return out

    def row_layout(self, persons: int, size: float) -> FaceLayout:
        """`persons` faces of side `size` (fraction of the shorter side) spread evenly along one row."""
        side_frac_w = size * min(self.width, self.height) / self.width
        if persons * side_frac_w > 1.0:
            raise LayoutError(f"{persons} faces of size {size:.3f} do not fit side by side in {self.width} px")
        faces = [((i + 0.5) / persons, self.face_y, size) for i in range(persons)]
        return layout_from_numbers(faces)


def _size_label(size: float, filename: bool = False) -> str:
    inv = 1.0 / size if size > 0 else 0
    if inv and abs(inv - round(inv)) < 1e-3:
        return f"1-{round(inv)}" if filename else f"1/{round(inv)}"
    return f"{size:.3f}"


Generator = Callable[[EvalCase], Sequence[np.ndarray]]


class WorkflowGenerator:
    """Runs an API-format workflow per case. `mapping` is {"node_id.input": "case value name"} (names from
    `EvalCase.values()`, e.g. "prompt", "seed", "reference_0", "boxes"); each variant's settings are
    {"node_id.input": literal} applied afterwards. Reference/driver images are copied into ComfyUI's input folder
    (content-hashed names) so LoadImage-style nodes can take them."""

    def __init__(self, template: dict, mapping: dict[str, str]):
        self.template = template
        self.mapping = dict(mapping)
        for target in self.mapping:
            _split_target(target, template)

    def prompt_for(self, case: EvalCase) -> dict:
        values = case.values()
        for target, name in self.mapping.items():  # check before staging any file
            if name not in values:
                raise ValueError(f"mapping {target} -> '{name}': no such case value; known: {sorted(values)}")
        for key in list(values):
            if key.startswith(("reference_", "driver_")) and key in self.mapping.values():
                values[key] = _stage_input(values[key])
        prompt = copy.deepcopy(self.template)
        for target, name in self.mapping.items():
            node, inp = _split_target(target, prompt)
            prompt[node]["inputs"][inp] = values[name]
        for target, literal in case.settings.items():
            node, inp = _split_target(target, prompt)
            prompt[node]["inputs"][inp] = literal
        return prompt

    def __call__(self, case: EvalCase) -> list[np.ndarray]:
        from ..host import comfy_host

        result = comfy_host.execute(self.prompt_for(case))
        images = read_output_images(result.outputs)
        if not images:
            raise RuntimeError(f"case {case.case_id}: the workflow saved no images (add a SaveImage node)")
        return images


def _split_target(target: str, prompt: dict) -> tuple[str, str]:
    node, sep, inp = target.partition(".")
    if not sep or not inp:
        raise ValueError(f"workflow target '{target}' must be 'node_id.input_name'")
    if node not in prompt:
        raise ValueError(f"workflow target '{target}': the workflow has no node '{node}' (nodes: {sorted(prompt)})")
    return node, inp


def _stage_input(path: str) -> str:
    """Copy an image into ComfyUI's input folder; returns the name LoadImage expects."""
    import folder_paths

    src = Path(path)
    digest = hashlib.sha1(src.read_bytes()).hexdigest()[:12]
    name = f"realisid_eval_{digest}{src.suffix.lower() or '.png'}"
    dst = Path(folder_paths.get_input_directory()) / name
    if not dst.exists():
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    return name


def read_output_images(outputs: dict) -> list[np.ndarray]:
    """RGB uint8 arrays of every image a prompt saved (UI outputs of SaveImage / PreviewImage)."""
    import folder_paths

    images = []
    for node_id in sorted(outputs, key=str):
        for item in outputs[node_id].get("images", []):
            folder = folder_paths.get_temp_directory() if item.get("type") == "temp" else folder_paths.get_output_directory()
            images.append(load_rgb(Path(folder) / item.get("subfolder", "") / item["filename"]))
    return images


def load_rgb(path: str | Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


# scoring ----------------------------------------------------------------------------------------------------------
class ReferenceFaces:
    """The largest face of each reference/driver image, analysed once."""

    def __init__(self, analyzer: FaceAnalyzer):
        self.analyzer = analyzer
        self._cache: dict[str, tuple[FaceRecord, np.ndarray]] = {}

    def get(self, path: str) -> tuple[FaceRecord, np.ndarray]:
        if path not in self._cache:
            image = load_rgb(path)
            faces = self.analyzer.analyze(image)
            if not faces:
                raise NoFaceError(f"no face found in reference image {path}; use a clear, frontal photo")
            self._cache[path] = (max(faces, key=lambda f: f.area), image)
        return self._cache[path]


def score_image(case: EvalCase, image: np.ndarray, image_index: int, analyzer: FaceAnalyzer,
                refs: ReferenceFaces, clip: metrics.ClipScorer | None = None) -> list[dict]:
    """One row per requested face of one generated image."""
    h, w = image.shape[:2]
    faces = analyzer.analyze(image, image_index=image_index)
    matches = metrics.match_faces(faces, case.pixel_boxes(w, h))
    extra = metrics.extra_faces(faces, matches)
    clip_t = _safe(lambda: clip.text_similarity(case.prompt, image)) if clip is not None and clip.clip else math.nan
    rows = []
    for m in matches:
        ref_path = case.references[m.slot]
        ref, ref_image = refs.get(ref_path)
        driver = refs.get(case.drivers[m.slot])[0] if case.drivers else None
        row = {
            "case_id": case.case_id, "variant": case.variant, "persons": case.persons, "size": case.size,
            "size_label": _size_label(case.size), "prompt_index": case.prompt_index, "prompt": case.prompt,
            "seed": case.seed, "image_index": image_index, "slot": m.slot, "reference": Path(ref_path).name,
            "found": int(m.found), "iou": m.iou, "location_error": m.location_error, "extra_faces": extra,
            "identity_space": ref.space, "pose_target": "driver" if driver is not None else "reference",
            "clip_space": clip.space if clip is not None else "", "clip_t": clip_t,
        }
        row.update(_face_scores(m.face, ref, driver, image, ref_image, clip))
        rows.append(row)
    return rows


FACE_SCORE_KEYS = ("identity_cos", "yaw_err", "pitch_err", "roll_err", "pose_l1_deg", "pose_l1_norm",
                   "expression_error", "copy_paste", "clip_i")


def _face_scores(face, ref, driver, image, ref_image, clip) -> dict:
    scores = dict.fromkeys(FACE_SCORE_KEYS, math.nan)
    if face is None:
        return scores
    scores["identity_cos"] = metrics.identity_similarity(ref, face)
    target = driver if driver is not None else ref
    if face.landmarks68 is not None and target.landmarks68 is not None:
        scores.update(_safe(lambda: pose_error(face.landmarks68, target.landmarks68), default={}))
        scores["expression_error"] = _safe(lambda: metrics.expression_error(face.landmarks68, target.landmarks68))
    if driver is not None:
        scores["copy_paste"] = metrics.copy_paste(face, ref, driver)
    if clip is not None:
        scores["clip_i"] = _safe(lambda: clip.image_similarity(metrics.crop_face(ref_image, ref.box),
                                                               metrics.crop_face(image, face.box)))
    return scores


def _safe(fn, default=math.nan):
    """A metric that cannot be computed for one face (degenerate landmarks, ...) is NaN, not a failed run."""
    try:
        return fn()
    except ValueError as exc:
        log.warning("metric skipped: %s", exc)
        return default


def run_evaluation(plan: EvalPlan, generator: Generator, analyzer: FaceAnalyzer, out_dir: str | Path,
                   clip: metrics.ClipScorer | None = None, save_images: bool = True) -> list[dict]:
    """Generate, score and report every case of `plan`; writes results.csv, summary.md and
    identity_vs_size.png (plus images/ when `save_images`) under `out_dir`. Returns the rows."""
    from . import report

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    refs = ReferenceFaces(analyzer)
    cases = plan.cases()
    rows: list[dict] = []
    for n, case in enumerate(tqdm(cases, desc="evaluate", unit="case"), 1):
        log.debug("case %d/%d: %s", n, len(cases), case.case_id)
        images = list(generator(case))
        for i, image in enumerate(images):
            image = _as_rgb_uint8(image, case.case_id)
            if save_images:
                _save_png(image, out / "images" / f"{case.case_id}_{i}.png")
            rows.extend(score_image(case, image, i, analyzer, refs, clip))
    report.write_all(rows, out)
    return rows


def _as_rgb_uint8(image, case_id: str) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"case {case_id}: a generator must return RGB uint8 HxWx3 images, got {arr.shape} {arr.dtype}")
    return arr


def _save_png(image: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
