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
    from realisid.host.comfy_host import PromptError

    prompt = {
        "1": {"class_type": "RealisIDLayoutFromNumbers",
              "inputs": {"width": 256, "height": 128, "x": 0.25, "y": 0.5, "size": 5.0}},
        "3": {"class_type": "RealisIDLayoutPreview", "inputs": {"layout": ["1", 0]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "x"}},
    }
    with pytest.raises(PromptError, match=r"node 1 \(RealisIDLayoutFromNumbers\)"):
        run_prompt(prompt)


def test_model_folders_are_created_at_load(pack_node_ids):
    import folder_paths

    for sub in ("realisid", "instantid", "insightface/models"):
        assert (pathlib.Path(folder_paths.models_dir) / sub).is_dir(), sub


def test_example_inputs_are_copied_without_overwriting_a_users_file(tmp_path, pack_node_ids):
    paths = _pack_paths_module()
    examples = sorted(p.name for p in (REPO / "workflows" / "inputs").iterdir() if p.suffix in (".jpg", ".png"))
    (tmp_path / "astronaut_driver.jpg").write_bytes(b"the user's own photo")
    copied, kept = paths.stage_example_inputs(tmp_path)
    assert "astronaut.jpg" in copied and "astronaut_driver.jpg" not in copied and kept == ["astronaut_driver.jpg"]
    assert (tmp_path / "astronaut_driver.jpg").read_bytes() == b"the user's own photo"
    assert sorted(p.name for p in tmp_path.iterdir()) == examples  # images only (no SOURCES.md, no .json)
    assert (tmp_path / "astronaut.jpg").read_bytes() == (REPO / "workflows" / "inputs" / "astronaut.jpg").read_bytes()
    assert paths.stage_example_inputs(tmp_path) == ([], ["astronaut_driver.jpg"])  # nothing copied twice


def _pack_paths_module():
    """This pack's nodes/paths.py as the loaded pack uses it (its package is registered under a path-derived name)."""
    import sys

    return next(m for name, m in sys.modules.items() if name.endswith(".nodes.paths") and hasattr(m, "on_load"))


def test_insightface_packs_show_in_comfyuis_model_list(tmp_path, pack_node_ids, monkeypatch):
    """/experiment/models/insightface lists .onnx files (the Missing Models dialog checks that list); the listing
    of every other folder is ComfyUI's own."""
    import folder_paths
    from app.model_manager import ModelFileManager

    paths = _pack_paths_module()
    pack = tmp_path / "models" / "antelopev2"
    pack.mkdir(parents=True)
    (pack / "glintr100.onnx").write_bytes(b"onnx")
    (tmp_path / "notes.txt").write_text("not a model")
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "insightface", ([str(tmp_path)], set()))
    assert paths.show_insightface_packs_in_model_list()
    names = [item["name"] for item in ModelFileManager().get_model_file_list("insightface")]
    assert names == ["models/antelopev2/glintr100.onnx"]
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "realisid", ([str(tmp_path)], {".safetensors"}))
    assert ModelFileManager().get_model_file_list("realisid") == []  # .onnx stays out of every other folder


def test_a_missing_checkpoint_says_what_it_is_and_where_it_comes_from(pack_node_ids, monkeypatch):
    import folder_paths

    import nodes as comfy_nodes

    monkeypatch.setattr(folder_paths, "get_full_path", lambda folder, name: None)
    loader = comfy_nodes.NODE_CLASS_MAPPINGS["RealisIDModelLoader"]
    message = loader.validate_inputs(model_name="realisid_sdxl.safetensors")
    assert "'realisid_sdxl.safetensors' is not in models/realisid" in message
    assert "no public download exists" in message and "python -m realisid.train" in message
    assert "RealisID-Mini" in message and "no download" in message
    instantid = comfy_nodes.NODE_CLASS_MAPPINGS["RealisIDInstantIDLoader"]
    message = instantid.validate_inputs(control_net_name="instantid_controlnet.safetensors",
                                        ip_adapter_name="ip-adapter.bin")
    assert "https://huggingface.co/InstantX/InstantID/resolve/main/ControlNetModel/" in message and "rename" in message
    with pytest.raises(FileNotFoundError, match="no public download exists"):
        loader.execute(model_name="realisid_sdxl.safetensors")


def test_an_unknown_missing_file_gets_the_plain_message(pack_node_ids):
    import nodes as comfy_nodes

    message = comfy_nodes.NODE_CLASS_MAPPINGS["RealisIDModelLoader"].validate_inputs(model_name="mine.safetensors")
    assert message.startswith("'mine.safetensors' is not in models/realisid") and "Put the file there" in message


def test_a_missing_checkpoint_fails_validation_with_that_message(run_prompt):
    """Through ComfyUI's validate_prompt: the loader's own message, not 'Value not in list'."""
    from realisid.host.comfy_host import PromptError

    prompt = {
        "1": {"class_type": "RealisIDModelLoader", "inputs": {"model_name": "absent.safetensors"}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "astronaut.jpg"}},
        "3": {"class_type": "RealisIDFaceAnalysis", "inputs": {"backend": "embedded (MTCNN + dlib, offline)",
                                                               "provider": "CPU"}},
        "4": {"class_type": "RealisIDFaceEncoder", "inputs": {
            "image": ["2", 0], "face_analysis": ["3", 0], "realisid_model": ["1", 0], "selection": "largest",
            "index": 0, "on_no_face": "error", "references": "each image is a different person"}},
        "5": {"class_type": "PreviewImage", "inputs": {"images": ["4", 1]}},
    }
    with pytest.raises(PromptError, match="'absent.safetensors' is not in models/realisid") as error:
        run_prompt(prompt)
    assert "Value not in list" not in str(error.value)
