"""The evaluation harness end to end: plan expansion, a paste 'generator' with known answers, the reports, and one
run through ComfyUI's real executor (LoadImage -> SaveImage)."""

import csv
import json

import numpy as np
import pytest
from PIL import Image

from realisid.evaluate import EvalPlan, WorkflowGenerator, harness, run_evaluation
from realisid.layout import LayoutError
from tests.test_evaluate_metrics import astronaut, face_patch, paste_faces, t1_face


@pytest.fixture(scope="module")
def analyzer():
    from realisid.faces.embedded import EmbeddedAnalyzer

    return EmbeddedAnalyzer()


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    folder = tmp_path_factory.mktemp("refs")
    Image.fromarray(astronaut()).save(folder / "astronaut.png")
    Image.fromarray(t1_face()).save(folder / "other.png")
    return [str(folder / "astronaut.png"), str(folder / "other.png")]


def test_plan_expands_the_protocol_grid(references):
    plan = EvalPlan(references=references, prompts=["a", "b", "c"], persons=[1, 2], seeds=[0, 1],
                    variants={"full": {}, "no_local": {"5.strength": 0.0}}, width=1024, height=768)
    cases = plan.cases()
    assert len(cases) == 2 * 4 * 2 * 3 * 2 * 2  # persons x sizes x identities x prompts x seeds x variants
    assert len({c.case_id for c in cases}) == len(cases)
    two = [c for c in cases if c.persons == 2 and c.size == pytest.approx(1 / 7)]
    assert {c.references for c in two} == {tuple(references), tuple(references[::-1])}
    boxes = two[0].pixel_boxes()
    assert np.allclose(boxes[:, 2] - boxes[:, 0], 768 / 7) and np.allclose(boxes[:, 3] - boxes[:, 1], 768 / 7)
    assert next(c for c in cases if c.variant == "no_local").settings == {"5.strength": 0.0}
    with pytest.raises(LayoutError, match="do not fit"):
        EvalPlan(references=references, prompts=["a"], persons=[5], sizes=[1 / 4]).cases()


def test_plan_from_json_resolves_paths_and_rejects_unknown_keys(tmp_path):
    (tmp_path / "plan.json").write_text(json.dumps({"references": ["r.png"], "prompts": ["x"], "mapping": {}}))
    plan = EvalPlan.from_json(tmp_path / "plan.json")
    assert plan.references == [str((tmp_path / "r.png").resolve())] and plan.sizes == list(harness.PAPER_SIZES)
    with pytest.raises(ValueError, match="unknown plan keys"):
        EvalPlan.from_dict({"references": ["r"], "prompts": ["x"], "size": [0.2]})


def make_paste_generator(analyzer):
    """Pastes each slot's reference face at its box; variant settings: 'swap' pastes the other identity,
    'drop_last' leaves the last slot empty."""
    faces = {}

    def face_of(path):
        if path not in faces:
            img = np.asarray(Image.open(path).convert("RGB"))
            faces[path] = (img, max(analyzer.analyze(img), key=lambda f: f.area))
        return faces[path]

    def generate(case):
        boxes = case.pixel_boxes()
        refs = list(case.references)
        if case.settings.get("swap"):
            refs = [r for r in refs[::-1]] if len(refs) > 1 else refs
        patches, keep = [], []
        for i, (box, ref) in enumerate(zip(boxes, refs, strict=True)):
            if case.settings.get("drop_last") and i == len(boxes) - 1:
                continue
            img, face = face_of(ref)
            patches.append(face_patch(img, face.square_box(), int(round(box[2] - box[0]))))
            keep.append(box)
        return [paste_faces(case.width, case.height, keep, patches)]

    return generate


def test_harness_end_to_end_with_a_paste_generator(tmp_path, analyzer, references):
    plan = EvalPlan(references=references, prompts=["a portrait"], sizes=[1 / 4, 1 / 6], persons=[1, 2],
                    variants={"full": {}, "swap": {"swap": True}, "drop": {"drop_last": True}}, width=640, height=512)
    rows = run_evaluation(plan, make_paste_generator(analyzer), analyzer, tmp_path)
    # per variant: persons 1 -> 2 sizes x 2 ids x 1 face; persons 2 -> 2 x 2 x 2 faces  => 12 rows
    assert len(rows) == 3 * 12
    full = [r for r in rows if r["variant"] == "full"]
    assert all(r["found"] == 1 and r["iou"] > 0.5 for r in full)
    assert all(r["identity_cos"] > 0.93 and r["identity_space"] == "dlib-resnet-128" for r in full)
    assert all(r["pose_l1_deg"] < 5.0 and r["expression_error"] < 0.1 for r in full)  # pose target = the reference
    swap_2p = [r for r in rows if r["variant"] == "swap" and r["persons"] == 2]
    assert max(r["identity_cos"] for r in swap_2p) < min(r["identity_cos"] for r in full) - 0.03
    drop = [r for r in rows if r["variant"] == "drop"]
    assert sum(1 - r["found"] for r in drop) == 8  # 4 one-person cases lose their face, 4 two-person their second
    assert all(r["location_error"] == 1.0 and np.isnan(r["identity_cos"]) for r in drop if not r["found"])

    with open(tmp_path / "results.csv") as fh:
        csv_rows = list(csv.DictReader(fh))
    assert len(csv_rows) == 36
    assert {"case_id", "variant", "size", "persons", "slot", "found", "iou", "location_error", "identity_cos",
            "identity_space", "pose_l1_deg", "pose_l1_norm", "expression_error", "copy_paste", "clip_i",
            "clip_t"} <= set(csv_rows[0])
    summary = (tmp_path / "summary.md").read_text()
    table = [line for line in summary.splitlines() if line.startswith("| ") and "variant" not in line]
    assert len(table) == 3 * 2 * 2  # variants x persons x sizes
    assert "dlib-resnet-128" in summary
    drop_1p = next(line for line in table if line.startswith("| drop | 1 | 1/4 |"))
    assert "| 0.0000 |" in drop_1p  # found rate 0
    with Image.open(tmp_path / "identity_vs_size.png") as png:
        assert png.format == "PNG" and png.size == (600, 400)
    assert len(list((tmp_path / "images").glob("*.png"))) == 24


def test_workflow_generator_fills_placeholders_and_checks_targets(tmp_path, references):
    import folder_paths

    template = {"1": {"class_type": "LoadImage", "inputs": {"image": "x.png"}},
                "2": {"class_type": "Foo", "inputs": {"text": "", "strength": 1.0, "seed": 0}}}
    gen = WorkflowGenerator(template, {"1.image": "reference_0", "2.text": "prompt", "2.seed": "seed"})
    case = EvalPlan(references=references[:1], prompts=["hello"], sizes=[0.25], seeds=[7],
                    variants={"ablate": {"2.strength": 0.0}}).cases()[0]
    old_input = folder_paths.get_input_directory()
    folder_paths.set_input_directory(str(tmp_path))
    try:
        prompt = gen.prompt_for(case)
    finally:
        folder_paths.set_input_directory(old_input)
    assert prompt["2"]["inputs"] == {"text": "hello", "strength": 0.0, "seed": 7}
    staged = prompt["1"]["inputs"]["image"]
    assert (tmp_path / staged).read_bytes() == open(references[0], "rb").read()
    assert template["2"]["inputs"]["text"] == ""  # the template itself is untouched
    with pytest.raises(ValueError, match="no node '9'"):
        WorkflowGenerator(template, {"9.text": "prompt"})
    with pytest.raises(ValueError, match="no such case value"):
        WorkflowGenerator(template, {"2.text": "promt"}).prompt_for(case)


def test_harness_through_comfyui_executor(run_prompt, tmp_path, analyzer, references):
    """LoadImage -> SaveImage 'generates' the astronaut photo itself; the layout asks for her face's spot."""
    import folder_paths

    ref_face = analyzer.analyze(astronaut())[0]
    x0, y0, x1, y1 = (float(v) for v in ref_face.square_box())
    plan = EvalPlan(references=references[:1], prompts=["p"], sizes=[(x1 - x0) / 512], width=512, height=512,
                    face_y=(y0 + y1) / 2 / 512)
    workflow = {"1": {"class_type": "LoadImage", "inputs": {"image": "x.png"}},
                "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "eval"}}}
    old_input = folder_paths.get_input_directory()
    folder_paths.set_input_directory(str(tmp_path / "input"))
    try:
        rows = run_evaluation(plan, WorkflowGenerator(workflow, {"1.image": "reference_0"}), analyzer,
                              tmp_path / "out", save_images=False)
    finally:
        folder_paths.set_input_directory(old_input)
    assert len(rows) == 1 and rows[0]["found"] == 1
    requested = plan.cases()[0].pixel_boxes()[0]
    from realisid.evaluate import box_iou

    assert rows[0]["iou"] == pytest.approx(box_iou(requested, ref_face.square_box()), abs=1e-6)
    assert rows[0]["identity_cos"] == pytest.approx(1.0, abs=1e-4)
    assert rows[0]["pose_l1_deg"] == pytest.approx(0.0, abs=1e-6)
