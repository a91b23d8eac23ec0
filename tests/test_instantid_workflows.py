"""The bundled InstantID workflows run end to end on tiny InstantID-shaped files and a fake antelopev2 pack."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from realisid.faces import EmbeddingSpaceError
from tests.helpers import fake_insightface, fake_instantid
from tests.helpers import tiny_host_models as tiny
from tests.helpers.host import REPO

NAMES = ("instantid_small_face", "instantid_two_people", "instantid_three_people")
FACE_IMAGE = "synthetic_face.png"


@pytest.fixture(scope="module")
def instantid_files(models_dir):
    """IdentityNet + ip-adapter.bin sized for the tiny SDXL checkpoint, under the names the workflows use."""
    fake_instantid.write_instantid(models_dir, tiny.unet_config("sdxl"))
    fake_insightface.build_fake_pack(str(models_dir / "insightface"), "antelopev2")
    return models_dir


def _for_tests(prompt: dict, crop_size: int = 16) -> dict:
    """1/8 resolution, 2 steps, a tiny crop and a synthetic face the fake detector finds."""
    prompt = json.loads(json.dumps(prompt))
    for node in prompt.values():
        inputs = node["inputs"]
        for key in ("width", "height"):
            if isinstance(inputs.get(key), int):
                inputs[key] = max(64, inputs[key] // 8 // 8 * 8)
        if isinstance(inputs.get("steps"), int):
            inputs["steps"] = 2
        if node["class_type"] == "RealisIDInstantIDLoader":
            inputs["crop_size"] = crop_size
        if node["class_type"] == "LoadImage":
            inputs["image"] = FACE_IMAGE
    return prompt


def _stage_face_image():
    import folder_paths

    Image.fromarray(fake_insightface.face_image()).save(f"{folder_paths.get_input_directory()}/{FACE_IMAGE}")


@pytest.mark.parametrize("name", NAMES)
def test_instantid_workflow_runs_end_to_end(name, instantid_files, run_prompt):
    import folder_paths

    _stage_face_image()
    prompt = json.loads((REPO / "workflows" / "api" / f"{name}.json").read_text())
    people = sum(n["class_type"] == "RealisIDFaceEncoder" for n in prompt.values())
    assert people == {"instantid_small_face": 1, "instantid_two_people": 2, "instantid_three_people": 3}[name]
    result = run_prompt(_for_tests(prompt))
    saved = [img for ui in result.outputs.values() for img in ui.get("images", []) if img["type"] == "output"]
    assert len(saved) == 1 and saved[0]["filename"].startswith("instantid")
    image = np.asarray(Image.open(f"{folder_paths.get_output_directory()}/{saved[0]['filename']}"))
    width = next(n["inputs"]["width"] for n in prompt.values() if n["class_type"] == "EmptyLatentImage")
    assert image.shape[1] == max(64, width // 8 // 8 * 8) and image.std() > 0


def test_workflows_use_the_instantid_nodes_and_files():
    for name in NAMES:
        prompt = json.loads((REPO / "workflows" / "api" / f"{name}.json").read_text())
        by_type = {n["class_type"]: n["inputs"] for n in prompt.values()}
        assert by_type["RealisIDInstantIDLoader"]["control_net_name"] == "instantid_controlnet.safetensors"
        assert by_type["RealisIDInstantIDLoader"]["ip_adapter_name"] == "ip-adapter.bin"
        assert by_type["RealisIDInstantIDLoader"]["crop_size"] == 128
        assert by_type["RealisIDFaceAnalysis"]["backend"] == "insightface antelopev2"
        assert "RealisIDInstantIDAttention" in by_type and "RealisIDLocalBranchApply" in by_type
        assert (REPO / "workflows" / "ui" / f"{name}.json").is_file()


def test_embedded_dlib_faces_are_refused(instantid_files, pack_node_ids):
    """The offline dlib backend's 128-d embedding is not InstantID's ArcFace space: a clear error."""
    import nodes
    from realisid.instantid import model as instantid

    mapping = nodes.NODE_CLASS_MAPPINGS
    model = instantid.load_instantid(str(instantid_files / "controlnet" / "instantid_controlnet.safetensors"),
                                     str(instantid_files / "instantid" / "ip-adapter.bin"), crop_size=16)
    analyzer = mapping["RealisIDFaceAnalysis"].execute("embedded (MTCNN + dlib, offline)", "CPU")[0]
    rgb = np.asarray(Image.open(REPO / "workflows" / "inputs" / "astronaut.jpg").convert("RGB"), np.float32)
    image = torch.from_numpy(rgb / 255)[None]
    with pytest.raises(EmbeddingSpaceError, match="'dlib-resnet-128'.*'arcface-antelopev2-512'"):
        mapping["RealisIDFaceEncoder"].execute(image, analyzer, model, "largest", 0, "error",
                                               "each image is a different person")


def test_sd15_base_is_refused(instantid_files, run_prompt):
    from realisid.host.comfy_host import PromptError

    _stage_face_image()
    prompt = _for_tests(json.loads((REPO / "workflows" / "api" / "instantid_small_face.json").read_text()))
    for node in prompt.values():
        if node["class_type"] == "CheckpointLoaderSimple":
            node["inputs"]["ckpt_name"] = "tiny_sd15.safetensors"
    with pytest.raises(PromptError, match="only with SDXL checkpoints"):
        run_prompt(prompt)
