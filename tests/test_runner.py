"""The headless runner: overrides, UI/API workflows, missing-model guidance, and the CLI end to end."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from realisid.host import runner, workflow_format
from tests.helpers.host import REPO, comfyui_dir

LAYOUT_PROMPT = {
    "1": {"class_type": "RealisIDLayoutFromNumbers", "_meta": {"title": "Face"},
          "inputs": {"x": 0.5, "y": 0.5, "size": 0.5}},
    "2": {"class_type": "RealisIDLayoutPreview", "inputs": {"layout": ["1", 0], "image": ["4", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "runner"}},
    "4": {"class_type": "EmptyImage", "inputs": {"width": 128, "height": 96, "batch_size": 1, "color": 0}},
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
    known = {k: {n: v for n, v in node["inputs"].items() if n in info[node["class_type"]]["input"]["required"]
                 or n in info[node["class_type"]]["input"].get("optional", {})} for k, node in LAYOUT_PROMPT.items()}
    assert {k: v["inputs"] for k, v in back.items()} == known  # inputs the node does not declare are dropped
    broken = json.loads(json.dumps(ui))
    count = len(broken["nodes"][0]["widgets_values"])
    broken["nodes"][0]["widgets_values"].pop()
    broken["links"][0][5] = "IMAGE"
    problems = workflow_format.check_ui_workflow(broken, info)
    assert any(f"{count - 1} widget values, the node has {count}" in p for p in problems)
    assert any("type IMAGE but the output is REALISID_LAYOUT" in p for p in problems)


def test_a_ui_graph_saved_before_an_optional_widget_existed_still_loads(pack_node_ids):
    """The bundled InstantID UI workflow without its last (optional) widget values, as saved before restore_noise
    and crop_frame existed: no problem reported, and the prompt omits those inputs (so the node's defaults apply);
    a missing required widget is still a problem."""
    info = workflow_format.object_info()
    ui = json.loads((REPO / "workflows" / "ui" / "instantid_two_people.json").read_text())
    loader = next(n for n in ui["nodes"] if n["type"] == "RealisIDInstantIDLoader")
    assert len(loader["widgets_values"]) == 5 and workflow_format.check_ui_workflow(ui, info) == []
    loader["widgets_values"].pop()  # restore_noise
    assert workflow_format.check_ui_workflow(ui, info) == []
    inputs = workflow_format.ui_to_api(ui, info)[str(loader["id"])]["inputs"]
    assert inputs["crop_frame"] == 2.0 and "restore_noise" not in inputs
    loader["widgets_values"].pop()  # crop_frame
    assert workflow_format.check_ui_workflow(ui, info) == []
    inputs = workflow_format.ui_to_api(ui, info)[str(loader["id"])]["inputs"]
    assert inputs["crop_size"] == 128 and "crop_frame" not in inputs
    loader["widgets_values"].pop()  # crop_size: required
    assert any("2 widget values, the node has 5" in p for p in workflow_format.check_ui_workflow(ui, info))


def saved_with_the_old_layout_size(ui: dict) -> tuple[dict, int]:
    """The graph as the pack before the layouts lost their output size saved it: width and height first."""
    old = json.loads(json.dumps(ui))
    layouts = [n for n in old["nodes"] if n["type"] == "RealisIDLayoutFromNumbers"]
    for node in layouts:
        node["widgets_values"] = [1024, 1024, *node["widgets_values"]]
    return old, len(layouts)


def test_a_layout_saved_with_the_old_output_size_widgets_keeps_its_values(pack_node_ids):
    """A UI graph saved before the layout nodes dropped width/height (5 widget values, now 3) is migrated by the
    rules of web/legacy_widgets.json, which the frontend extension applies too: no problem, the same prompt."""
    info = workflow_format.object_info()
    ui = json.loads((REPO / "workflows" / "ui" / "realisid_two_people.json").read_text())
    old, count = saved_with_the_old_layout_size(ui)
    assert count == 2
    assert workflow_format.check_ui_workflow(old, info) == []
    assert workflow_format.ui_to_api(old, info) == workflow_format.ui_to_api(ui, info)
    assert [len(n["widgets_values"]) for n in old["nodes"] if n["type"] == "RealisIDLayoutFromNumbers"] == [5, 5]
    shifted = json.loads(json.dumps(old))  # 4 values match no rule: reported, not guessed
    next(n for n in shifted["nodes"] if n["type"] == "RealisIDLayoutFromNumbers")["widgets_values"].pop()
    assert any("4 widget values, the node has 3" in p for p in workflow_format.check_ui_workflow(shifted, info))


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
    assert "running Face (RealisIDLayoutFromNumbers)" in proc.stderr  # nodes by title, not "running node 1"
    assert "Traceback" not in proc.stderr and "No module named 'torchaudio'" not in proc.stderr, proc.stderr[-3000:]
    assert sum("torchaudio" in line for line in proc.stderr.splitlines()) <= 1  # ComfyUI's audio noise: one line
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
    assert "https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/" in proc.stderr  # where it comes from


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


def _fake_comfyui(root):
    (root / "comfy").mkdir(parents=True)
    (root / "comfy" / "model_management.py").write_text("")
    (root / "custom_nodes" / "ComfyUI-RealisID").mkdir(parents=True)
    return root


def test_find_comfyui_from_inside_custom_nodes(tmp_path, monkeypatch):
    from realisid.host import comfy_host

    comfy = _fake_comfyui(tmp_path / "ComfyUI")
    monkeypatch.delenv("COMFYUI_DIR", raising=False)
    monkeypatch.setenv("REALISID_HOME", str(tmp_path / "no-setup"))
    assert comfy_host.find_comfyui(cwd=comfy / "custom_nodes" / "ComfyUI-RealisID" / "workflows") == comfy
    with pytest.raises(SystemExit, match="ComfyUI not found: run this from the pack inside ComfyUI/custom_nodes"):
        comfy_host.find_comfyui(cwd=tmp_path)
    monkeypatch.setenv("COMFYUI_DIR", str(tmp_path))
    with pytest.raises(SystemExit, match="is not a ComfyUI folder"):
        comfy_host.find_comfyui(cwd=comfy / "custom_nodes")
    (tmp_path / "no-setup").mkdir()
    (tmp_path / "no-setup" / "comfyui-dir").write_text(str(comfy))
    monkeypatch.delenv("COMFYUI_DIR")
    assert comfy_host.find_comfyui(cwd=tmp_path) == comfy  # the host scripts/setup.sh recorded


def test_every_missing_file_is_listed_with_its_source(tmp_path, pack_node_ids, monkeypatch):
    """Model files, every .onnx file of an insightface pack (a pack missing one file counts), input images."""
    import folder_paths

    root = tmp_path / "insightface"
    (root / "models" / "antelopev2").mkdir(parents=True)
    for name in ("scrfd_10g_bnkps.onnx", "glintr100.onnx", "2d106det.onnx", "genderage.onnx"):
        (root / "models" / "antelopev2" / name).write_bytes(b"x")
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "insightface", ([str(root)], set()))
    monkeypatch.setattr(folder_paths, "get_input_directory", lambda: str(tmp_path))
    monkeypatch.setattr(folder_paths, "get_full_path", lambda folder, name: None)  # whatever other tests installed
    prompt = {
        "1": {"class_type": "RealisIDInstantIDLoader", "_meta": {"title": "InstantID"},
              "inputs": {"control_net_name": "instantid_controlnet.safetensors", "ip_adapter_name": "ip-adapter.bin",
                         "crop_size": 128}},
        "2": {"class_type": "RealisIDFaceAnalysis", "_meta": {"title": "Faces"},
              "inputs": {"backend": "insightface antelopev2", "provider": "CPU"}},
        "3": {"class_type": "LoadImage", "_meta": {"title": "Person 1"}, "inputs": {"image": "me.jpg"}},
        "4": {"class_type": "RealisIDModelLoader", "inputs": {"model_name": "realisid_sdxl_absent.safetensors"}},
    }
    missing = runner.missing_files(prompt)
    assert [(m.file, m.folder, m.node) for m in missing] == [
        ("instantid_controlnet.safetensors", "controlnet", "InstantID"), ("ip-adapter.bin", "instantid", "InstantID"),
        ("models/antelopev2/1k3d68.onnx", "insightface", "Faces"), ("me.jpg", "input", "Person 1"),
        ("realisid_sdxl_absent.safetensors", "realisid", "RealisIDModelLoader")]
    text = runner.describe_missing(missing)
    assert "https://huggingface.co/InstantX/InstantID/resolve/main/ip-adapter.bin" in text
    assert "drive.google.com" in text and "non-commercial" in text
    assert f"me.jpg  ->  {tmp_path}" in text and "--set" in text
    (root / "models" / "antelopev2" / "1k3d68.onnx").write_bytes(b"x")
    assert not any(m.folder == "insightface" for m in runner.missing_files(prompt))


def test_a_file_reachable_only_through_extra_model_paths_is_found(tmp_path, pack_node_ids):
    """ComfyUI's own extra_model_paths.yaml (in the ComfyUI folder) is read, as main.py reads it."""
    import folder_paths

    from realisid.host import comfy_host

    comfy, elsewhere = _fake_comfyui(tmp_path / "ComfyUI"), tmp_path / "my_models"
    (elsewhere / "instantid").mkdir(parents=True)
    (elsewhere / "instantid" / "ip-adapter-only-via-yaml.bin").write_bytes(b"x")
    prompt = {"1": {"class_type": "RealisIDInstantIDLoader", "inputs": {
        "control_net_name": "tiny_sdxl_controlnet.safetensors", "ip_adapter_name": "ip-adapter-only-via-yaml.bin",
        "crop_size": 128}}}
    assert ("ip-adapter-only-via-yaml.bin", "instantid") in runner.missing_models(prompt)
    (comfy / "extra_model_paths.yaml").write_text(f"mine:\n    base_path: {elsewhere}\n    instantid: instantid\n")
    before = list(folder_paths.get_folder_paths("instantid"))
    try:
        assert comfy_host.load_extra_model_paths(comfy) == [str(comfy / "extra_model_paths.yaml")]
        assert ("ip-adapter-only-via-yaml.bin", "instantid") not in runner.missing_models(prompt)
    finally:
        folder_paths.folder_names_and_paths["instantid"] = (before, folder_paths.folder_names_and_paths["instantid"][1])


def test_progress_names_nodes_by_title_with_one_bar(caplog):
    import logging

    prompt = {"7": {"class_type": "SamplerCustomAdvanced", "_meta": {"title": "Sample"}, "inputs": {}},
              "8": {"class_type": "VAEDecode", "_meta": {"title": "Decode"}, "inputs": {}}}
    progress = runner._Progress(prompt)
    with caplog.at_level(logging.INFO, logger="realisid.run"):
        progress("executing", {"node": "7"})
        for step in range(1, 4):
            progress("progress", {"value": step, "max": 3, "node": None})  # ComfyUI's hook has no node id here
        bar = progress.bar
        assert bar is not None and bar.desc.startswith("Sample") and bar.n == 3
        progress("progress", {"value": 3, "max": 3, "node": None})
        assert progress.bar is bar  # one bar per node, never a second one
        progress("executing", {"node": "8"})
        assert progress.bar is None
        progress("executing", {"node": None})
    assert [r.getMessage() for r in caplog.records] == ["running Sample (SamplerCustomAdvanced)",
                                                        "running Decode (VAEDecode)"]


def test_run_sh_before_setup_says_what_to_run_first(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "COMFYUI_DIR"}
    env["REALISID_HOME"] = str(tmp_path / "nothing-here")
    proc = subprocess.run(["bash", str(REPO / "scripts" / "run.sh")], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2
    assert "bash scripts/setup.sh && bash scripts/run.sh" in proc.stderr
    assert "No such file" not in proc.stderr and "cat:" not in proc.stderr


@pytest.mark.skipif(not (REPO / "models" / "mini" / "realisid" / "realisid_mini.safetensors").is_file(),
                    reason="the trained RealisID-Mini model is not in models/mini/realisid/")
def test_run_sh_main_job_writes_the_mini_image_and_its_face_to_box_mapping(tmp_path):
    """The README's main job with its default workflow: every file ships in the pack, nothing is added by hand."""
    home = pathlib.Path(sys.executable).parents[2]  # .../venv/bin/python: REALISID_HOME of scripts/setup.sh
    if not (home / "venv" / "bin" / "python").exists():
        pytest.skip(f"not running in the scripts/setup.sh environment ({sys.executable})")
    env = {**os.environ, "REALISID_HOME": str(home), "COMFYUI_DIR": str(comfyui_dir())}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "run.sh"), "--output", str(tmp_path / "out"), "--cpu"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert [n.startswith("realisid_mini_0") for n in written].count(True) == 1, written
    assert [n.startswith("realisid_mini_mapping") for n in written].count(True) == 1, written
    for name in written:  # it says where each file went
        assert str((tmp_path / "out").resolve() / name) in proc.stderr
