"""Every bundled workflow: runs end to end on tiny models; its UI twin matches the nodes and its API twin."""

import json
import pathlib

import pytest

from realisid.host import workflow_format
from tests.helpers.host import REPO

API = sorted((REPO / "workflows" / "api").glob("*.json"))
REALISID_API = [p for p in API if p.name.startswith("realisid_")]


def shrink_for_cpu(prompt: dict, factor: int = 8, steps: int = 2) -> dict:
    """The same graph at 1/8 of the resolution with 2 steps: tiny models on a CPU in seconds."""
    prompt = json.loads(json.dumps(prompt))
    for node in prompt.values():
        inputs = node["inputs"]
        for key in ("width", "height"):
            if isinstance(inputs.get(key), int):
                inputs[key] = max(64, inputs[key] // factor // 8 * 8)
        if isinstance(inputs.get("steps"), int):
            inputs["steps"] = steps
    return prompt


def test_workflows_are_bundled():
    names = {p.stem for p in API}
    assert {"realisid_single_person", "realisid_two_people", "realisid_three_people", "realisid_small_face",
            "realisid_pose_from_photo", "instantid_small_face", "instantid_two_people",
            "instantid_three_people", "mini_two_people", "mini_single_person", "mini_three_people",
            "mini_small_face", "mini_pose_from_photo"} <= names
    assert {p.name for p in (REPO / "workflows" / "ui").glob("*.json")} == {p.name for p in API}


@pytest.mark.parametrize("path", REALISID_API, ids=lambda p: p.stem)
def test_workflow_runs_end_to_end(path, run_prompt):
    result = run_prompt(shrink_for_cpu(json.loads(path.read_text())))
    saved = [img for ui in result.outputs.values() for img in ui.get("images", []) if img["type"] == "output"]
    assert len(saved) == 1 and saved[0]["filename"].startswith("realisid")
    out_dir = pathlib.Path(__import__("folder_paths").get_output_directory())
    from PIL import Image

    width = max(n["inputs"]["width"] for n in json.loads(path.read_text()).values() if n["class_type"] ==
                "EmptyLatentImage")
    assert Image.open(out_dir / saved[0]["subfolder"] / saved[0]["filename"]).size[0] == max(64, width // 64 * 8)


@pytest.mark.parametrize("path", API, ids=lambda p: p.stem)
def test_ui_twin_matches_nodes_and_api(path, pack_node_ids):
    info = workflow_format.object_info()
    ui = json.loads((REPO / "workflows" / "ui" / path.name).read_text())
    assert workflow_format.check_ui_workflow(ui, info) == []
    api = json.loads(path.read_text())
    back = workflow_format.ui_to_api(ui, info)
    assert {k: (v["class_type"], v["inputs"]) for k, v in back.items()} == \
        {k: (v["class_type"], v["inputs"]) for k, v in api.items()}


def test_realisid_workflows_are_up_to_date(pack_node_ids):
    import sys

    sys.path.insert(0, str(REPO / "workflows"))
    import build

    for name, prompt in {**build.realisid_workflows(), **build.mini_workflows()}.items():
        committed = json.loads((REPO / "workflows" / "api" / f"{name}.json").read_text())
        assert committed == json.loads(json.dumps(prompt)), f"{name}: run workflows/build.py"


UI = sorted((REPO / "workflows" / "ui").glob("*.json"))


@pytest.mark.parametrize("path", UI, ids=lambda p: p.stem)
def test_ui_workflow_lists_its_model_files_with_their_sources(path):
    """What ComfyUI's Missing Models dialog reads: each model widget's file with its public URL on its node,
    insightface packs at the workflow level; a file with no public source stays out (the frontend requires a URL)
    and the Note explains it."""
    from realisid import model_files

    ui = json.loads(path.read_text())
    api = json.loads((REPO / "workflows" / "api" / path.name).read_text())
    note = next(n for n in ui["nodes"] if n["type"] == "Note")["widgets_values"][0]
    for node in ui["nodes"]:
        if node["type"] == "Note":
            continue
        inputs = api[str(node["id"])]["inputs"]
        expected = []
        for (kind, name), folder in model_files.MODEL_INPUTS.items():
            if node["type"] == kind and isinstance(inputs.get(name), str):
                entry = model_files.lookup(folder, inputs[name])
                assert entry is not None, (path.stem, inputs[name])  # every bundled file is in the catalogue
                assert f"models/{folder}/{entry.name}" in note
                if entry.url:
                    expected.append({"name": entry.name, "url": entry.url, "directory": folder})
                elif entry.bundled:
                    assert f"ships with the pack ({entry.note}), nothing to download" in note
                else:
                    assert "train it" in note and "RealisID-Mini needs no download" in note
        assert node["properties"].get("models", []) == expected, (path.stem, node["title"])
        for entry in expected:
            assert entry["url"].startswith("https://") and entry["name"] in node["widgets_values"]
    packs = [model_files.insightface_pack(api[str(n["id"])]["inputs"]["backend"]) for n in ui["nodes"]
             if n["type"] == "RealisIDFaceAnalysis"]
    wanted = [{"name": model_files.INSIGHTFACE_PACKS[p].name, "url": model_files.INSIGHTFACE_PACKS[p].url,
               "directory": "insightface"} for p in packs if p]
    assert ui.get("models", []) == wanted
    if path.stem.startswith("instantid"):
        assert wanted and "models/insightface/models/antelopev2/" in note


@pytest.mark.parametrize("path", UI, ids=lambda p: p.stem)
def test_ui_workflow_has_groups_a_note_and_titles_counted_from_1(path):
    import re

    ui = json.loads(path.read_text())
    titles = [g["title"] for g in ui["groups"]]
    assert [t.split(":")[0] for t in titles] == ["1. Identity", "2. Layout", "3. Sampling"], titles
    (note,) = [n for n in ui["nodes"] if n["type"] == "Note"]
    text = note["widgets_values"][0]
    for node in ui["nodes"]:
        if node["type"] == "LoadImage" or node["type"].startswith("RealisIDLayoutFrom"):
            assert f"'{node['title']}'" in text, node["title"]
    counted: dict[str, list[int]] = {}
    for node in ui["nodes"]:
        match = re.fullmatch(r"(Person|Face|Encode person) (\d+)", node["title"])
        if match:
            counted.setdefault(match.group(1), []).append(int(match.group(2)))
        match = re.fullmatch(r"People (\d+)-(\d+)", node["title"])
        if match:
            assert match.group(1) == "1" and int(match.group(2)) >= 2, node["title"]
    assert counted and all(sorted(v) == list(range(1, len(v) + 1)) for v in counted.values()), counted


def _extent(node: dict) -> tuple[float, float, float, float]:
    """A node's box with its title bar and the room the frontend's badges take above it (file coordinates)."""
    from realisid.host import workflow_format as wf

    x, y = node["pos"]
    w, h = node["size"]
    top = wf.TITLE_HEIGHT + (0 if node["type"] == "Note" else wf.BADGE_SPACE)
    return x, y - top, w, h + top


@pytest.mark.parametrize("path", UI, ids=lambda p: p.stem)
def test_ui_workflow_nodes_do_not_overlap_and_open_in_view(path):
    from realisid.host import workflow_format as wf

    ui = json.loads(path.read_text())
    boxes = [(n["title"], _extent(n)) for n in ui["nodes"]]
    for i, (a, (ax, ay, aw, ah)) in enumerate(boxes):
        for b, (bx, by, bw, bh) in boxes[i + 1:]:
            assert not (ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah), (a, b)
    for node in ui["nodes"]:
        if node["type"] == "Note":
            continue
        x, y, w, h = _extent(node)
        assert sum(gx <= x and gy <= y and x + w <= gx + gw and y + h <= gy + gh
                   for gx, gy, gw, gh in (g["bounding"] for g in ui["groups"])) == 1, node["title"]
    ds = ui["extra"]["ds"]
    left = min(b[0] for _, b in boxes)
    top = min([b[1] for _, b in boxes] + [g["bounding"][1] for g in ui["groups"]])
    screen = ((left + ds["offset"][0]) * ds["scale"], (top + ds["offset"][1]) * ds["scale"])
    assert screen[0] >= wf.VIEW_MARGIN_LEFT - 1 and screen[1] >= wf.VIEW_MARGIN_TOP - 1, screen
    assert screen[0] < 200 and screen[1] < 200, screen  # and not pushed off into empty canvas


def test_node_width_fits_the_longest_widget_text(pack_node_ids):
    """The rule the layout sizes nodes by; the browser test measures the real text against the real widths."""
    info = workflow_format.object_info()
    node = {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"},
            "_meta": {"title": "CLIP vision"}}
    width = workflow_format.node_width(node, info["CLIPVisionLoader"])
    assert width >= workflow_format.WIDGET_CHAR * len("clip_nameCLIP-ViT-H-14-laion2B-s32B-b79K.safetensors") + 60
    short = workflow_format.node_width({**node, "inputs": {"clip_name": "a.safetensors"}}, info["CLIPVisionLoader"])
    assert short == workflow_format.MIN_NODE_WIDTH < width
