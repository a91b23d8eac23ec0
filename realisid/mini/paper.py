"""The paper's claims, measured in the Mini world (issue 14): `python -m realisid.mini paper`.

RealisID claims that its local branch keeps identity as the face shrinks, that landmarks steer pose and
expression, and that several people keep their identities with a model trained on single-person data. In the
Mini world each of these has ground truth, so each is measured here, per variant, with n and a bootstrap 95%
interval in every cell:

* identity vs face side 1/4 ... 1/8: the judge's attribute match with the reference's true attributes, and the
  Mini face backend's cosine to the reference; beside them the same two figures on the **ground-truth render**
  of the requested scene (the world drawing that person in that box: the ceiling of each size);
* pose and expression with a driving face (another person, another pose and expression): the expression read is
  the driver's, the yaw error, and MultiID-Bench's copy-paste CP = (θ(g,t) − θ(g,r)) / θ(t,r) with t the ground
  truth (the identity rendered with the driver's pose and expression) and θ the angle between backend embeddings;
* one, two and three people at one face side (the model saw single-person data only): identity, binding, found;
* location: the matched face's IoU with its box.

Variants: the shipped model and its inference ablations (`behaviour.VARIANTS`: a branch switched off at
sampling, the text-only base); the committed trained variants of `models/mini/variants/` (`TRAINED`: stage 1's
command, 1,765 steps, seed 0, the same cache, with one change each: RealisID itself, an InstantID-style baseline
with and without identity tokens in the base's cross-attention (InstantID's IP-Adapter), 5 keypoints instead of 68
landmarks, one branch alone); the InstantID-style baseline run as RealisID's local
branch (crop, up-sample, relocate) at each of `TWINS` (crop frame, noise restored or not: the public-weights trick,
`local_twin`; identity at 1/4 and 1/7 only); and any
file named on the command line (`--extra NAME=FILE`). Every variant sees the same identities, boxes, captions,
references, drivers and seeds, case by case. Scoring reuses `behaviour` (the same nodes, detector, matching and
judge as the issue-13 tests).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from realisid.mini import behaviour, world
from realisid.mini.identity import random_identity
from realisid.mini.judge import attribute_match

log = logging.getLogger(__name__)

SIDES = {"1/4": 1 / 4, "1/5": 1 / 5, "1/6": 1 / 6, "1/7": 1 / 7, "1/8": 1 / 8}
POSE_SIDE = 0.25  # the driven cell's face side
PEOPLE_SIDE = 0.17  # one, two and three people at one side (three fit side by side at 0.17)
PEOPLE = (1, 2, 3)
BOOTSTRAP = 2000
GROUND_TRUTH = "ground-truth render"
EXAMPLE_TILE = 160  # px per image in examples.png (the world draws 256)


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    strengths: str  # a key of behaviour.VARIANTS (the Multi-Face Composite's two strengths)
    model: str | None = None  # a RealisID file name the loader lists; None = the shipped RealisID-Mini
    cells: tuple[str, ...] | None = None  # the cell-name prefixes it runs in (None: every cell it qualifies for)
    ip_weight: float | None = None  # its file's IP-Adapter applied to the base at this weight (None: not applied)

    def runs_in(self, cell: str) -> bool:
        return self.cells is None or cell.startswith(self.cells)


BUILTIN = (Variant("RealisID", "full"), Variant("local branch only", "local_only"),
           Variant("global branch only", "global_only"), Variant("text only (base)", "text_only"))
EQUAL_BUDGET = "1,765 steps"  # stage 1's length: every trained variant below had exactly this budget
TRAINED = {  # file key in models/mini/variants/ -> row name (`python -m realisid.mini export realisid --variant`)
    "full_1765": f"RealisID, {EQUAL_BUDGET}",
    "instantid_style": f"InstantID-style, {EQUAL_BUDGET}",
    "kps5": f"RealisID with 5 keypoints, {EQUAL_BUDGET}",
    "local_only": f"local branch trained alone, {EQUAL_BUDGET}",
    "global_only": f"global branch trained alone, {EQUAL_BUDGET}",
    "instantid_style_ip": f"InstantID-style + IP-Adapter, {EQUAL_BUDGET}",
}
# the baseline run as the local branch: (crop side / face side, restore the crop's noise level); frame 1: the face
# fills the crop, the most up-sampling, so the most noise lost (`geometry.crop_noise_deficit`)
TWINS = ((1.0, False), (2.0, False), (3.0, False), (1.0, True), (2.0, True))
# the trick is about identity on small faces against large ones: a large and a small side (three more sides and the
# other cells would cost the harness 10 min more for five twins)
TWIN_CELLS = ("identity 1/4", "identity 1/7")


def twin_name(frame: float, restore_noise: bool = False) -> str:
    return f"InstantID-style as the local branch, frame {frame:g}" + (", noise restored" if restore_noise else "")


@dataclasses.dataclass(frozen=True)
class PaperCase:
    case: behaviour.Case  # what the nodes run (its variant field picks the strengths)
    variant: Variant
    truth: world.SceneSpec  # the requested scene, faces in the target pose and expression: the ground truth


def variants_with(extras: Sequence[str] = ()) -> tuple[Variant, ...]:
    """The built-in ablations plus `NAME=FILE` trained variants (full strengths, their own RealisID file)."""
    out = list(BUILTIN)
    for spec in extras:
        name, sep, model = spec.partition("=")
        if not sep or not name or not model:
            raise ValueError(f"--extra {spec!r}: expected NAME=FILE (a RealisID file in models/realisid)")
        out.append(Variant(name, "full", model))
    return tuple(out)


def committed_variants() -> tuple[Variant, ...]:
    """The trained variants whose files are in models/mini/variants/ (full strengths, their own file; a file with
    an IP-Adapter has it applied at the weight it was trained at)."""
    from realisid.checkpoint_format import read_config
    from realisid.ip_adapter import TRAINED_WEIGHT
    from realisid.mini import files

    out = []
    for key, name in TRAINED.items():
        path = files.VARIANTS_DIR / files.variant_file(key)
        if path.is_file():
            ip_weight = TRAINED_WEIGHT if read_config(str(path)).get("ip_adapter") else None
            out.append(Variant(name, "full", path.name, ip_weight=ip_weight))
    return tuple(out)


def local_twin(source: str | Path, out: str | Path, frame: float, restore_noise: bool = False) -> None:
    """The public-weights trick on the InstantID-style baseline: its full-latent network (trained on whole images
    with the face drawing in its box) run as RealisID's local branch, on the face crop up-sampled to the crop size
    and relocated, the crop `frame` times the face box (as the InstantID path runs IdentityNet); restore_noise:
    the crop's noise topped back up to the latent's level (`control.restores_noise`)."""
    import safetensors
    import safetensors.torch

    from realisid.checkpoint_format import METADATA_KEY

    with safetensors.safe_open(str(source), framework="pt") as f:
        metadata = dict(f.metadata() or {})
    config = json.loads(metadata[METADATA_KEY])
    section = config.get("global") or {}
    if config.get("local") is not None or section.get("hint") != "face_hint":
        raise ValueError(f"{source}: a local twin needs a global-only face-hint model (the InstantID-style variant)")
    config.update(local={"hint_channels": section["hint_channels"], "unet_config": section["unet_config"]},
                  crop_frame=float(frame), restore_noise=bool(restore_noise), **{"global": None})
    tensors = {("local." + k[len("global."):] if k.startswith("global.") else k): v
               for k, v in safetensors.torch.load_file(str(source)).items()}
    safetensors.torch.save_file(tensors, str(out), metadata={**metadata, METADATA_KEY: json.dumps(config)})


def twin_variants(folder: str | Path) -> tuple[Variant, ...]:
    """The baseline's local twins written into `folder` (a scratch folder the loader lists), or none when the
    baseline is not committed."""
    from realisid.mini import files

    source = files.VARIANTS_DIR / files.variant_file("instantid_style")
    if not source.is_file():
        return ()
    out = []
    for frame, restore in TWINS:
        name = (f"realisid_mini_instantid_style_local_{str(float(frame)).replace('.', 'p')}"
                f"{'_restored' if restore else ''}.safetensors")
        local_twin(source, Path(folder) / name, frame, restore)
        out.append(Variant(twin_name(frame, restore), "full", name, TWIN_CELLS))
    return tuple(out)


def _targeted(scene: world.SceneSpec, references: Sequence[behaviour.Portrait],
              driver: behaviour.Portrait | None) -> world.SceneSpec:
    """The scene with each face in its target pose and expression: the driver's for person 1 when driven, else
    the person's reference's (what the undriven model should reproduce)."""
    people = []
    for i, (person, ref) in enumerate(zip(scene.people, references, strict=True)):
        target = driver.truth if (driver is not None and i == 0) else ref.truth
        people.append(dataclasses.replace(person, pose=target.pose, expression=target.expression))
    return dataclasses.replace(scene, people=tuple(people))


def plan(n: int, seed: int = 72, variants: Sequence[Variant] = BUILTIN, sides: dict = SIDES,
         people: Sequence[int] = PEOPLE) -> list[PaperCase]:
    """n cases per cell, deterministic in `seed`; every variant of a cell runs the same cases. People cells run
    the variants with full strengths only (the built-in full model and trained variants)."""
    rng = np.random.default_rng(seed)
    cells: list[tuple[str, tuple[behaviour.Person, ...], bool, Sequence[Variant]]] = []
    for label, side in sides.items():
        cells += [(f"identity {label}", (behaviour._single(random_identity(rng, "held_out"), side, rng),), False,
                   variants) for _ in range(n)]
    cells += [("pose", (behaviour._single(random_identity(rng, "held_out"), POSE_SIDE, rng),), True, variants)
              for _ in range(n)]
    full = [v for v in variants if v.strengths == "full"]
    for count in people:
        for _ in range(n):
            identities = [random_identity(rng, "held_out") for _ in range(count)]
            group = (behaviour._row(identities, PEOPLE_SIDE, rng) if count > 1
                     else (behaviour._single(identities[0], PEOPLE_SIDE, rng),))
            cells.append((f"people {count}", group, False, full))
    cases = []
    for cell, group, driven, cell_variants in cells:
        scene, case_seed = behaviour.scene_of(group, rng), int(rng.integers(2**31))
        for v in (v for v in cell_variants if v.runs_in(cell)):
            case = behaviour.Case(cell, v.strengths, group, world.caption(scene), case_seed, driven)
            cases.append(PaperCase(case, v, scene))
    return cases


# running and scoring ------------------------------------------------------------------------------------------------
def _embedding_rows(image: np.ndarray, case: behaviour.Case, analyzer, reference_faces, truth_faces) -> list[dict]:
    """Per requested face: the backend's cosine to its reference and, for the driven face, copy-paste."""
    from realisid.evaluate import metrics

    matches = metrics.match_faces(analyzer.analyze(image), behaviour.requested_boxes(case))
    out = []
    for m, ref, truth in zip(matches, reference_faces, truth_faces, strict=True):
        row = {"cosine": math.nan, "copy_paste": math.nan}
        if m.found:
            row["cosine"] = metrics.identity_similarity(ref, m.face)
            if case.driven and m.slot == 0 and truth is not None:
                row["copy_paste"] = metrics.copy_paste(m.face, ref, truth)
        out.append(row)
    return out


def _first_face(analyzer, image: np.ndarray, box=None):
    """The face the backend finds in a render (in `box` when given), or None."""
    from realisid.evaluate import metrics

    faces = analyzer.analyze(image)
    if box is None:
        return faces[0] if faces else None
    match = metrics.match_faces(faces, np.asarray([box], np.float64))[0]
    return match.face


class _Truths:
    """Ground-truth renders per case seed (shared by every variant of a case), read like generated images."""

    def __init__(self, analyzer, judge):
        self.analyzer, self.judge, self._cache = analyzer, judge, {}

    def get(self, pc: PaperCase, references, driver) -> dict:
        key = (pc.case.cell, pc.case.seed)
        if key not in self._cache:
            scene = world.render_scene(_targeted(pc.truth, references, driver))
            boxes = [f.box for f in scene.faces]
            readings = self.judge.read([scene.image] * len(boxes), boxes)
            faces = [_first_face(self.analyzer, scene.image, b) for b in boxes]
            self._cache[key] = {"image": scene.image, "faces": faces, "readings": readings,
                                "references": [_first_face(self.analyzer, r.image) for r in references]}
        return self._cache[key]


def run(cases: Sequence[PaperCase], analyzer, judge, steps: int | None = None,
        examples: dict | None = None) -> list[dict]:
    """Generate and score every case; one row per requested face (plus one ground-truth row per face and case),
    each tagged with its case's position in `cases` ("case"). examples: filled with {(cell, variant name): image}
    for the first case of each cell."""
    truths, rows, done_truth = _Truths(analyzer, judge), [], set()
    for position, pc in enumerate(tqdm(cases, desc="mini paper", unit="image")):
        case = pc.case
        references = behaviour.references_for(case)
        driver = behaviour.driver_for(case, references[0]) if case.driven else None
        truth = truths.get(pc, references, driver)
        prompt = behaviour.case_prompt(case, [behaviour.stage_image(r.image) for r in references],
                                       behaviour.stage_image(driver.image) if driver else None,
                                       model_name=pc.variant.model, steps=steps, ip_weight=pc.variant.ip_weight)
        image = behaviour.generate(prompt)
        scored = behaviour.score_case(case, image, references, driver, analyzer, judge)
        extra = _embedding_rows(image, case, analyzer, truth["references"], truth["faces"])
        rows += [{**r, **e, "variant": pc.variant.name, "case": position} for r, e in zip(scored, extra, strict=True)]
        if examples is not None and (case.cell, pc.variant.name) not in examples:
            examples[(case.cell, pc.variant.name)] = {"image": image, "reference": references[0].image,
                                                      "truth": truth["image"], "boxes": behaviour.requested_boxes(case),
                                                      "case": position}
        if (case.cell, case.seed) not in done_truth:
            done_truth.add((case.cell, case.seed))
            rows += [{**r, "case": position} for r in _truth_rows(case, truth)]
    return rows


# running in parallel ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class WorkerSetup:
    """What a spawned worker needs to run cases as the parent would: the ComfyUI folder, the folders its RealisID
    loader lists (the committed variants, the twins' scratch folder), a scratch root (each worker stages its
    references and outputs in its own sub-folder) and its torch threads."""

    comfyui: str
    model_folders: tuple[str, ...]
    scratch: str
    threads: int = 1


def stage_host(root: str, model_folders: Sequence[str] = ()) -> None:
    """Point the booted host's input and output folders into `root` (references and outputs stay out of the
    user's ComfyUI folders) and list `model_folders` in its RealisID loader (the committed variants, the twins)."""
    import folder_paths

    folder_paths.set_input_directory(f"{root}/input")
    folder_paths.set_output_directory(f"{root}/output")
    for folder in model_folders:
        folder_paths.add_model_folder_path("realisid", str(folder))


def split_cases(cases: Sequence[PaperCase], workers: int) -> list[list[int]]:
    """Case positions per worker: every variant of a case (one cell and seed) stays in one worker, so its
    ground-truth render and staged references are made once; cases are dealt in turn, so each worker gets every
    kind of cell."""
    groups: dict[tuple[str, int], list[int]] = {}
    for position, pc in enumerate(cases):
        groups.setdefault((pc.case.cell, pc.case.seed), []).append(position)
    shares: list[list[int]] = [[] for _ in range(max(1, workers))]
    for k, positions in enumerate(groups.values()):
        shares[k % len(shares)] += positions
    return [share for share in shares if share]


def _worker(setup: WorkerSetup, index: int, cases: list[PaperCase], steps: int | None) -> tuple[list[dict], dict]:
    """One spawned process: boot the host like the command does, then `run` its share."""
    import sys

    import torch

    from realisid.host import comfy_host

    # spawn hands over the parent's sys.path, where ComfyUI's nodes.py put its comfy/ folder first; a fresh
    # process must see ComfyUI's own `utils` package first again (comfy_host.boot claims it)
    comfy_dir = os.path.join(os.path.realpath(setup.comfyui), "comfy")
    sys.path[:] = [p for p in sys.path if os.path.realpath(p) != comfy_dir]
    torch.set_num_threads(setup.threads)
    comfy_host.boot(setup.comfyui, cpu=not torch.cuda.is_available())
    comfy_host.load_core_extras()
    comfy_host.load_pack()
    from realisid.mini import backend, family, judge

    family.register()
    stage_host(f"{setup.scratch}/worker{index}", setup.model_folders)
    examples: dict = {}
    rows = run(cases, backend.MiniFaceAnalyzer(), judge.MiniJudge(), steps=steps, examples=examples)
    return rows, examples


def run_in_workers(cases: Sequence[PaperCase], setup: WorkerSetup, workers: int, steps: int | None = None,
                   examples: dict | None = None) -> list[dict]:
    """`run` shared between `workers` spawned processes (`split_cases`); the rows come back in plan order with
    each case's position in `cases`, as one process would give them, and the examples of each cell's first case.
    On a small CPU several one-thread processes beat one process's threads: the Mini networks' layers are too
    small to split across cores."""
    import concurrent.futures
    import multiprocessing

    shares = split_cases(cases, workers)
    context = multiprocessing.get_context("spawn")
    results = []
    with concurrent.futures.ProcessPoolExecutor(len(shares), mp_context=context) as pool:
        futures = [pool.submit(_worker, setup, k, [cases[p] for p in share], steps) for k, share in enumerate(shares)]
        for share, future in zip(shares, futures, strict=True):
            results.append((share, future.result()))
    rows = []
    for share, (part, found) in results:
        rows += [{**r, "case": share[r["case"]]} for r in part]
        for key, example in found.items():
            example = {**example, "case": share[example["case"]]}
            if examples is not None and (key not in examples or example["case"] < examples[key]["case"]):
                examples[key] = example
    return sorted(rows, key=lambda r: r["case"])  # stable: a case's rows keep their order


def _truth_rows(case: behaviour.Case, truth: dict) -> list[dict]:
    from realisid.evaluate import metrics

    out = []
    for slot, (person, reading, face, ref) in enumerate(zip(case.people, truth["readings"], truth["faces"],
                                                             truth["references"], strict=True)):
        out.append({"cell": case.cell, "variant": GROUND_TRUTH, "persons": len(case.people), "slot": slot,
                    "seed": case.seed, "found": face is not None, "iou": 1.0,
                    "identity": attribute_match(reading, person.identity),
                    "cosine": metrics.identity_similarity(ref, face) if face is not None else math.nan,
                    "copy_paste": math.nan, "driven": case.driven and slot == 0})
    return out


# summaries ----------------------------------------------------------------------------------------------------------
def interval(values, seed: int = 0, n_boot: int = BOOTSTRAP) -> dict:
    """Mean, percentile-bootstrap 95% interval and n of the finite values (NaN figures when there are none)."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], np.float64)
    if not len(v):
        return {"n": 0, "mean": math.nan, "lo": math.nan, "hi": math.nan}
    means = np.random.default_rng(seed).choice(v, size=(n_boot, len(v)), replace=True).mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"n": int(len(v)), "mean": float(v.mean()), "lo": float(lo), "hi": float(hi)}


def summarise(rows: Sequence[dict], seed: int = 0) -> dict:
    """Every table's cells: {table: {row label: {column: interval}}}."""
    def cell(name, variant):
        return [r for r in rows if r["cell"] == name and r["variant"] == variant]

    variants = list(dict.fromkeys(r["variant"] for r in rows))
    sides = [c.split(" ", 1)[1] for c in dict.fromkeys(r["cell"] for r in rows) if c.startswith("identity ")]
    out: dict = {"identity": {}, "cosine": {}, "pose": {}, "people": {}, "location": {}}
    for v in variants:
        for table, key in (("identity", "identity"), ("cosine", "cosine")):  # cosine: over the faces found
            figures = {s: interval([r[key] for r in cell(f"identity {s}", v)], seed) for s in sides}
            if any(cell(f"identity {s}", v) for s in sides):
                out[table][v] = figures
        driven = [r for r in cell("pose", v) if r["driven"]]
        if driven and v != GROUND_TRUTH:
            out["pose"][v] = {
                "expression = driver": interval([float(r["expression"] == r["target_expression"]) for r in driven], seed),
                "yaw error (deg)": interval([abs(r["yaw"] - r["target_yaw"]) for r in driven], seed),
                "copy-paste CP": interval([r["copy_paste"] for r in driven], seed)}
        people = {}
        for count in PEOPLE:
            members = cell(f"people {count}", v)
            if members:
                people[f"{count} identity"] = interval([r["identity"] for r in members], seed)
                if v != GROUND_TRUTH:
                    people[f"{count} bound"] = interval([float(r["bound"]) for r in members], seed)
                    people[f"{count} found"] = interval([float(r["found"]) for r in members], seed)
        if people:
            out["people"][v] = people
        located = [r for r in rows if r["variant"] == v and v != GROUND_TRUTH]
        if located:
            out["location"][v] = {
                "IoU >= 0.6": interval([float(r["iou"] >= behaviour.THRESHOLDS["location_iou"]) for r in located], seed),
                "mean IoU": interval([r["iou"] for r in located], seed),
                "found": interval([float(r["found"]) for r in located], seed)}
    return out


def _fmt(f: dict) -> str:
    if not f["n"]:
        return "–"
    return f"{f['mean']:.3f} [{f['lo']:.3f}, {f['hi']:.3f}] (n={f['n']})"


def table_markdown(table: dict) -> str:
    """Rows = variants, columns = the cells' keys in first-seen order."""
    columns = list(dict.fromkeys(k for figures in table.values() for k in figures))
    lines = ["| variant | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for variant, figures in table.items():
        lines.append(f"| {variant} | " + " | ".join(_fmt(figures[c]) if c in figures else "–" for c in columns) + " |")
    return "\n".join(lines)


# figures ------------------------------------------------------------------------------------------------------------
def plot_groups(names: Sequence[str]) -> list[tuple[str, list[str]]]:
    """The variants split into the plot's panels (each also shows the ground-truth render): the shipped model and
    its inference ablations, the variants trained at the equal budget, and the public-weights trick."""
    twins = [n for n in names if n.startswith("InstantID-style as the local branch")]
    equal = [n for n in names if n in TRAINED.values()]
    shipped = [n for n in names if n not in twins and n not in equal and n != GROUND_TRUTH]
    groups = [("the shipped model and its inference ablations", shipped),
              (f"trained at an equal budget ({EQUAL_BUDGET}, seed 0)", equal),
              ("the baseline's network as the local branch", [TRAINED["instantid_style"], *twins]
               if TRAINED["instantid_style"] in names else twins)]
    return [(title, group) for title, group in groups if group]


def plot_identity_vs_size(summary: dict, path: str | Path) -> None:
    """Attribute match against face size, one panel per group of variants (`plot_groups`), one line per variant,
    95% intervals as bars (lines offset a little along x so the bars stay apart)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    table = summary["identity"]
    groups = plot_groups(list(table))
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4.4), dpi=100, sharey=True, squeeze=False)
    try:
        for ax, (title, names) in zip(axes[0], groups, strict=True):
            shown = [*names, GROUND_TRUTH] if GROUND_TRUTH in table else names
            for k, variant in enumerate(shown):
                figures = table[variant]
                sides = [s for s in figures if figures[s]["n"]]
                x = np.array([float(s.split("/")[1]) for s in sides]) + 0.06 * (k - (len(shown) - 1) / 2)
                mean = np.array([figures[s]["mean"] for s in sides])
                err = np.array([[mean[i] - figures[s]["lo"], figures[s]["hi"] - mean[i]] for i, s in enumerate(sides)]).T
                truth = variant == GROUND_TRUTH
                ax.errorbar(x, mean, yerr=err, marker="o", capsize=3, label=variant, linestyle="--" if truth else "-",
                            **({"color": "black"} if truth else {}))
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("face side: 1 / (fraction of the image side)")
            ax.set_ylim(0.0, 1.05)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, 0.93))  # the empty band under the truth
        axes[0][0].set_ylabel("attribute match (the judge, 9 attributes)")
        fig.suptitle("RealisID-Mini: identity vs face size (held-out identities, 95% bootstrap intervals)")
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)


def examples_grid(examples: dict, cells: Sequence[str], variants: Sequence[str], path: str | Path) -> None:
    """One row per cell: reference, layout (the requested boxes on the ground truth), then each variant's output."""
    import cv2

    tiles = []
    for cell in cells:
        first = next((examples[(cell, v)] for v in variants if (cell, v) in examples), None)
        if first is None:
            continue
        layout = first["truth"].copy()
        for x0, y0, x1, y1 in np.round(first["boxes"]).astype(int):
            cv2.rectangle(layout, (x0, y0), (x1, y1), (255, 0, 0), 2)
        row = [first["reference"], layout] + [examples[(cell, v)]["image"] if (cell, v) in examples
                                              else np.zeros_like(layout) for v in variants]
        tiles.append(np.concatenate([cv2.resize(t, (EXAMPLE_TILE, EXAMPLE_TILE), interpolation=cv2.INTER_AREA)
                                     for t in row], axis=1))
    if tiles:
        cv2.imwrite(str(path), cv2.cvtColor(np.concatenate(tiles, axis=0), cv2.COLOR_RGB2BGR))


def measure(n: int, out_dir: str | Path, seed: int = 72, extras: Sequence[str] = (), sides: dict = SIDES,
            people: Sequence[int] = PEOPLE, steps: int | None = None, trained: Sequence[Variant] = (),
            workers: int = 1, setup: WorkerSetup | None = None) -> dict:
    """Run the protocol with the shipped Mini files (plus `trained` variants, e.g. committed_variants() and
    twin_variants()); writes rows.json, summary.json, identity_vs_size.png and examples.png into out_dir and
    returns the summary. workers > 1: in that many spawned processes set up by `setup` (`run_in_workers`)."""
    from realisid.mini import backend, family, judge

    family.register()
    variants = variants_with(extras) + tuple(trained)
    cases = plan(n, seed, variants, sides, people)
    examples: dict = {}
    if workers > 1:
        if setup is None:
            raise ValueError("measure(workers > 1) needs the workers' WorkerSetup")
        rows = run_in_workers(cases, setup, workers, steps, examples)
    else:
        rows = run(cases, backend.MiniFaceAnalyzer(), judge.MiniJudge(), steps=steps, examples=examples)
    summary = summarise(rows, seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "rows.json").write_text(json.dumps(rows, indent=0, default=_json))
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    plot_identity_vs_size(summary, out / "identity_vs_size.png")
    shown = [f"identity {s}" for s in ("1/4", "1/7") if s in sides]
    examples_grid(examples, shown, [v.name for v in variants], out / "examples.png")
    return summary


def _json(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON: {type(value).__name__}")


# the report ---------------------------------------------------------------------------------------------------------
PAPER = {  # the paper's figures (FaceNet cosine, its own benchmark), quoted for the reading
    "identity": "RealisID 0.791 -> 0.748 from face side 1/4 to 1/7, InstantID 0.765 -> 0.664",
    "people": "0.788 with several people vs 0.791 alone at 1/4",
    "pose": "pose L1 0.019-0.023 with 68 landmarks vs 0.031-0.034 with 5 keypoints",
}


def _separated(a: dict, b: dict) -> str:
    """How two intervals compare: 'above', 'below' or 'overlapping' (a relative to b)."""
    if not (a["n"] and b["n"]):
        return "not measured"
    if a["lo"] > b["hi"]:
        return "above"
    if a["hi"] < b["lo"]:
        return "below"
    return "overlapping"


def reading(summary: dict) -> list[str]:
    """Plain statements of what the figures say about each claim (computed, so they follow the numbers)."""
    out = []
    ident = summary["identity"]
    full, gt = ident.get("RealisID"), ident.get(GROUND_TRUTH)
    if full and "1/4" in full and "1/7" in full:
        drop = full["1/4"]["mean"] - full["1/7"]["mean"]
        text = f"Identity as the face shrinks (paper: {PAPER['identity']}): RealisID-Mini's attribute match " \
               f"{full['1/4']['mean']:.3f} at 1/4 and {full['1/7']['mean']:.3f} at 1/7 (a drop of {drop:.3f})"
        if gt:
            text += f"; the ground-truth renders {gt['1/4']['mean']:.3f} and {gt['1/7']['mean']:.3f}, so the model " \
                    f"reaches {full['1/4']['mean'] / gt['1/4']['mean']:.0%} and {full['1/7']['mean'] / gt['1/7']['mean']:.0%} of them"
        base = ident.get("text only (base)")
        if base:
            text += f"; against the text-only base it is {_separated(full['1/4'], base['1/4'])} at 1/4 and " \
                    f"{_separated(full['1/7'], base['1/7'])} at 1/7 (95% intervals)"
        steps = _shipped_steps()
        out.append(text + (f" (the shipped model, {steps:,} training steps)." if steps else "."))
    local, glob = ident.get("local branch only"), ident.get("global branch only")
    if full and local and glob:
        out.append("Which branch carries identity: at 1/7 the local branch alone scores "
                   f"{local['1/7']['mean']:.3f}, the global branch alone {glob['1/7']['mean']:.3f} (local "
                   f"{_separated(local['1/7'], glob['1/7'])} global), both together {full['1/7']['mean']:.3f}.")
    people = summary["people"].get("RealisID")
    if people and "1 identity" in people:
        parts = [f"{k.split()[0]}: {people[k]['mean']:.3f}" for k in people if k.endswith("identity")]
        worst = min((people[k] for k in people if k.endswith("identity") and not k.startswith("1 ")),
                    key=lambda f: f["mean"], default=None)
        verdict = "" if worst is None else (f"; the lowest multi-person cell is {_separated(worst, people['1 identity'])}"
                                            " the single-person one")
        out.append(f"Several people (paper: {PAPER['people']}): attribute match by people count at side "
                   f"{PEOPLE_SIDE} ({', '.join(parts)}){verdict}.")
    pose = summary["pose"].get("RealisID")
    if pose:
        out.append(f"Pose and expression from a driving face: the driver's expression in "
                   f"{pose['expression = driver']['mean']:.0%} of faces, yaw error "
                   f"{pose['yaw error (deg)']['mean']:.1f} deg, copy-paste CP {pose['copy-paste CP']['mean']:+.3f} "
                   f"(> 0: closer to the reference than to the ground truth).")
    return out + _equal_budget_reading(summary)


def _shipped_steps() -> int | None:
    """The shipped RealisID-Mini's training steps, all stages (from its file's record)."""
    from realisid.mini import files

    path = files.REALISID_DIR / files.REALISID_FILE
    if not path.is_file():
        return None
    return sum(int(r.get("steps", 0)) for r in files.read_info(path, "realisid").get("training", {}).values())


def _sizes(figures: dict) -> str:
    a, b = figures["1/4"]["mean"], figures["1/7"]["mean"]
    return f"{a:.3f} -> {b:.3f} (keeps {b / a:.0%})" if a > 0 else f"{a:.3f} -> {b:.3f}"


def _equal_budget_reading(summary: dict) -> list[str]:
    """The trained variants against RealisID at the same budget (the paper's comparisons proper)."""
    ident, pose, out = summary["identity"], summary["pose"], []
    full_name = TRAINED["full_1765"]
    full = ident.get(full_name)
    if not (full and "1/4" in full and "1/7" in full):
        out.append("No trained variant is in this run, so the paper's comparisons at an equal budget (an "
                   "InstantID-style baseline, 5 keypoints, one branch alone) are not measured.")
        return out
    baseline = ident.get(TRAINED["instantid_style"])
    if baseline:
        out.append(f"At an equal budget ({EQUAL_BUDGET}, seed 0, the same scenes; paper: {PAPER['identity']}): "
                   f"attribute match from 1/4 to 1/7, RealisID {_sizes(full)}, InstantID-style baseline "
                   f"{_sizes(baseline)}; at 1/7 RealisID is {_separated(full['1/7'], baseline['1/7'])} the baseline "
                   f"(95% intervals).")
    with_ip = ident.get(TRAINED["instantid_style_ip"])
    if baseline and with_ip:
        location = summary["location"]
        placed = {k: location[TRAINED[k]]["IoU >= 0.6"]["mean"] for k in ("instantid_style", "instantid_style_ip")
                  if TRAINED[k] in location}
        text = (f"InstantID's other half, identity tokens in the base's own cross-attention (an IP-Adapter trained "
                f"with the baseline): {_sizes(with_ip)} against {_sizes(baseline)} without it; at 1/7 "
                f"{_separated(with_ip['1/7'], baseline['1/7'])} the baseline without it and "
                f"{_separated(with_ip['1/7'], full['1/7'])} RealisID")
        if len(placed) == 2:
            text += (f"; faces in their box (IoU >= 0.6) {placed['instantid_style_ip']:.2f} with it, "
                     f"{placed['instantid_style']:.2f} without")
        out.append(text + ".")
    twins = [(f, r, ident[twin_name(f, r)]) for f, r in TWINS if twin_name(f, r) in ident]
    if baseline and twins:
        parts = [f"frame {f:g}{', noise restored' if r else ''}: {_sizes(t)}, "
                 f"{_separated(t['1/7'], baseline['1/7'])} the baseline itself at 1/7" for f, r, t in twins]
        out.append("The public-weights trick (the baseline's network run as the local branch: crop, up-sample, "
                   f"relocate; no retraining): {'; '.join(parts)}.")
        paired = [(f, ident[twin_name(f)], ident[twin_name(f, True)]) for f, r in TWINS
                  if r and twin_name(f) in ident and twin_name(f, True) in ident]
        if paired:
            out.append("Restoring the crop's noise level (fresh noise where up-sampling lowered it), at 1/7: " + "; ".join(
                f"frame {f:g} {plain['1/7']['mean']:.3f} without, {restored['1/7']['mean']:.3f} with "
                f"({_separated(restored['1/7'], plain['1/7'])})" for f, plain, restored in paired) + ".")
    kps5_pose, full_pose = pose.get(TRAINED["kps5"]), pose.get(full_name)
    if kps5_pose and full_pose:
        e, y = "expression = driver", "yaw error (deg)"
        out.append(f"68 landmarks vs 5 keypoints (paper: {PAPER['pose']}): yaw error {full_pose[y]['mean']:.1f} vs "
                   f"{kps5_pose[y]['mean']:.1f} deg ({_separated(full_pose[y], kps5_pose[y])}), the driver's "
                   f"expression in {full_pose[e]['mean']:.0%} vs {kps5_pose[e]['mean']:.0%} of faces; identity at "
                   f"1/7 {full['1/7']['mean']:.3f} vs {ident[TRAINED['kps5']]['1/7']['mean']:.3f}.")
    alone = [(name, ident[TRAINED[key]]) for key, name in (("local_only", "local branch alone"),
                                                          ("global_only", "global branch alone"))
             if TRAINED[key] in ident]
    if alone:
        parts = [f"{name} {_sizes(f)}" for name, f in alone]
        location = summary["location"]
        placed = [f"{name} {location[TRAINED[key]]['IoU >= 0.6']['mean']:.2f}"
                  for key, name in (("local_only", "local alone"), ("global_only", "global alone"))
                  if TRAINED[key] in location]
        out.append(f"Each branch trained alone at the same budget: identity {'; '.join(parts)} (both: "
                   f"{_sizes(full)}); faces in their box (IoU >= 0.6): {', '.join(placed)}, both "
                   f"{location[full_name]['IoU >= 0.6']['mean']:.2f}.")
    return out


def write_doc(summary: dict, path: str | Path, figures_dir: str, command: str, seed: int, n: int,
              seconds: float, workers: int = 1) -> None:
    """docs/results-mini.md: the tables, the plots, the command, the seeds and the computed reading."""
    sections = [
        "# The paper's claims, measured on RealisID-Mini",
        "",
        "RealisID-Mini is a cartoon world (`models/mini/README.md`): nothing here says anything about photographs "
        "or SDXL. Every figure is on held-out identities, with n and a percentile-bootstrap 95% interval "
        f"({BOOTSTRAP} resamples); every variant ran the same cases. Seed {seed}, {n} cases per cell, "
        f"{seconds / 60:.0f} min on {_machine(workers)}.",
        "",
        "```bash",
        command,
        "```",
        "",
        "## Reading",
        "",
        *[f"* {line}" for line in reading(summary)],
        "",
        "## Identity vs face side: attribute match (the judge, 9 attributes)",
        "",
        f"![identity vs face size]({figures_dir}/identity_vs_size.png)",
        "",
        table_markdown(summary["identity"]),
        "",
        "## Identity vs face side: cosine to the reference (Mini face backend, 64-d)",
        "",
        table_markdown(summary["cosine"]),
        "",
        f"## Pose and expression with a driving face (face side {POSE_SIDE})",
        "",
        table_markdown(summary["pose"]),
        "",
        f"## One, two and three people (face side {PEOPLE_SIDE}; trained on single-person scenes)",
        "",
        table_markdown(summary["people"]),
        "",
        "## Location (all cells)",
        "",
        table_markdown(summary["location"]),
        "",
        "## Examples (reference, requested box on the ground truth, then each variant)",
        "",
        f"![examples]({figures_dir}/examples.png)",
        "",
    ]
    Path(path).write_text("\n".join(sections))


def _machine(workers: int = 1) -> str:
    from realisid.machine import description

    info = description()
    threads = (f"{workers} worker processes of 1 torch thread each" if workers > 1
               else f"{info['torch_threads']} torch threads")
    return f"{info['cpu']}, {info['affinity']} cores, {threads}"
