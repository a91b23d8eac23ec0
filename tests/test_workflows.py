"""Every bundled workflow: runs end to end on tiny models; its UI twin matches the nodes and its API twin."""

import json
import pathlib

import pytest

from realisid import workflow_format
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
            "instantid_three_people"} <= names
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

    for name, prompt in build.realisid_workflows().items():
        committed = json.loads((REPO / "workflows" / "api" / f"{name}.json").read_text())
        assert committed == json.loads(json.dumps(prompt)), f"{name}: run workflows/build.py"
