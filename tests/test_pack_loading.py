"""The pack loads in the real ComfyUI 0.3.75 like any custom node pack, and its nodes follow the house rules."""

import pathlib

import pytest
import tomllib

from tests.helpers.host import REPO


def test_pack_registers_prefixed_v3_nodes(pack_node_ids):
    import nodes

    assert "RealisIDLayoutFromNumbers" in pack_node_ids
    assert all(node_id.startswith("RealisID") for node_id in pack_node_ids)
    for node_id in pack_node_ids:
        info = nodes.NODE_CLASS_MAPPINGS[node_id].GET_NODE_INFO_V1()
        assert info["category"].startswith("RealisID/"), node_id
        for group in ("required", "optional"):
            for name, spec in info["input"].get(group, {}).items():
                assert len(spec) > 1 and spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"


def test_model_folders_registered(pack_node_ids):
    import folder_paths

    for name in ("realisid", "instantid", "insightface", "controlnet", "clip_vision"):
        paths = folder_paths.get_folder_paths(name)
        assert any(pathlib.Path(p).name == name for p in paths), (name, paths)
    assert ".safetensors" in folder_paths.folder_names_and_paths["realisid"][1]


def test_pyproject_registry_metadata():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    project, comfy = meta["project"], meta["tool"]["comfy"]
    assert "comfyui" not in project["name"].lower()
    assert project["urls"]["Repository"].startswith("https://")
    for key in ("PublisherId", "DisplayName", "Icon", "requires-comfyui"):
        assert comfy[key], key
    requirements = (REPO / "requirements.txt").read_text().lower().splitlines()
    names = [line.split(";")[0].split("=")[0].split(">")[0].strip() for line in requirements if line and line[0] != "#"]
    assert "torch" not in names and "opencv-python" not in names


def test_layout_prompt_runs_through_prompt_executor(run_prompt):
    prompt = {
        "1": {"class_type": "RealisIDLayoutFromNumbers",
              "inputs": {"width": 256, "height": 128, "x": 0.25, "y": 0.5, "size": 0.5}},
        "2": {"class_type": "RealisIDLayoutFromNumbers",
              "inputs": {"width": 256, "height": 128, "x": 0.75, "y": 0.5, "size": 0.25, "previous": ["1", 0]}},
        "3": {"class_type": "RealisIDLayoutPreview", "inputs": {"layout": ["2", 0]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "layout"}},
    }
    result = run_prompt(prompt)
    (image,) = result.outputs["4"]["images"]
    assert image["filename"].startswith("layout")


def test_invalid_prompt_names_the_node(run_prompt):
    from realisid.comfy_host import PromptError

    prompt = {
        "1": {"class_type": "RealisIDLayoutFromNumbers",
              "inputs": {"width": 256, "height": 128, "x": 0.25, "y": 0.5, "size": 5.0}},
        "3": {"class_type": "RealisIDLayoutPreview", "inputs": {"layout": ["1", 0]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "x"}},
    }
    with pytest.raises(PromptError, match=r"node 1 \(RealisIDLayoutFromNumbers\)"):
        run_prompt(prompt)
