"""The headless runner: overrides, UI/API workflows, missing-model guidance, and the CLI end to end."""

import json
import os
import subprocess
import sys

import pytest

from realisid import runner, workflow_format
from tests.helpers.host import REPO, comfyui_dir

LAYOUT_PROMPT = {
    "1": {"class_type": "RealisIDLayoutFromNumbers", "_meta": {"title": "Face"},
          "inputs": {"width": 128, "height": 96, "x": 0.5, "y": 0.5, "size": 0.5}},
    "2": {"class_type": "RealisIDLayoutPreview", "inputs": {"layout": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "runner"}},
}


def test_parse_set_reads_json_or_strings():
    assert runner.parse_set(["Face.size=0.2", "12.text=a photo", "3.flag=true"]) == [
        ("Face", "size", 0.2), ("12", "text", "a photo"), ("3", "flag", True)]
    with pytest.raises(SystemExit, match="expected <node id or title>"):
        runner.parse_set(["size=0.2"])


def test_overrides_by_title_and_id_leave_the_original_alone():
    prompt = runner.apply_overrides(LAYOUT_PROMPT, [("Face", "size", 0.2), ("3", "filename_prefix", "x")])
    assert prompt["1"]["inputs"]["size"] == 0.2 and prompt["3"]["inputs"]["filename_prefix"] == "x"
    assert LAYOUT_PROMPT["1"]["inputs"]["size"] == 0.5
    with pytest.raises(SystemExit, match="no node with id or title 'Nope'"):
        runner.apply_overrides(LAYOUT_PROMPT, [("Nope", "x", 1)])


def test_missing_models_are_listed_with_their_folder(pack_node_ids, models_dir):
    prompt = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "not_installed.safetensors"}},
              "2": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "tiny_sdxl_controlnet.safetensors"}}}
    missing = runner.missing_models(prompt)
    assert missing == [("not_installed.safetensors", "checkpoints")]
    assert "not_installed.safetensors  ->  " in runner.describe_missing(missing)


def test_ui_round_trip_is_the_same_prompt(pack_node_ids):
    info = workflow_format.object_info()
    ui = workflow_format.api_to_ui(LAYOUT_PROMPT, info)
    assert workflow_format.check_ui_workflow(ui, info) == []
    back = workflow_format.ui_to_api(ui, info)
    assert {k: v["inputs"] for k, v in back.items()} == {k: v["inputs"] for k, v in LAYOUT_PROMPT.items()}
    broken = json.loads(json.dumps(ui))
    broken["nodes"][0]["widgets_values"].pop()
    broken["links"][0][5] = "IMAGE"
    problems = workflow_format.check_ui_workflow(broken, info)
    assert any("4 widget values, the node has 5" in p for p in problems)
    assert any("type IMAGE but the output is REALISID_LAYOUT" in p for p in problems)


def test_cli_runs_a_ui_workflow_and_writes_the_image(tmp_path, pack_node_ids):
    info = workflow_format.object_info()
    workflow = tmp_path / "layout.json"
    workflow.write_text(json.dumps(workflow_format.api_to_ui(LAYOUT_PROMPT, info)))
    out = tmp_path / "out"
    env = {**os.environ, "COMFYUI_DIR": str(comfyui_dir())}
    # no --cpu: the runner must notice that this torch has no GPU and fall back by itself
    proc = subprocess.run([sys.executable, "-m", "realisid", "run", str(workflow), "--output", str(out),
                           "--set", "Face.size=0.25"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    images = list(out.glob("runner*.png"))
    assert len(images) == 1
    from PIL import Image

    assert Image.open(images[0]).size == (128, 96)


def test_cli_lists_missing_models_and_exits_2(tmp_path):
    workflow = tmp_path / "needs_models.json"
    workflow.write_text(json.dumps({
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "x"}}}))
    env = {**os.environ, "COMFYUI_DIR": str(comfyui_dir())}
    proc = subprocess.run([sys.executable, "-m", "realisid", "run", str(workflow), "--cpu", "--output",
                           str(tmp_path / "o")], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "sd_xl_base_1.0.safetensors  ->  " in proc.stderr and "checkpoints" in proc.stderr


def test_example_inputs_are_staged_into_the_input_folder(tmp_path, pack_node_ids):
    import folder_paths

    previous = folder_paths.get_input_directory()
    folder_paths.set_input_directory(str(tmp_path))
    try:
        prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": "astronaut.jpg"}},
                  "2": {"class_type": "LoadImage", "inputs": {"image": "not_bundled.png"}}}
        assert runner.stage_example_inputs(prompt) == ["astronaut.jpg"]
        assert (tmp_path / "astronaut.jpg").read_bytes() == (REPO / "workflows" / "inputs" / "astronaut.jpg").read_bytes()
        assert runner.stage_example_inputs(prompt) == []  # already there: nothing copied twice
    finally:
        folder_paths.set_input_directory(previous)
