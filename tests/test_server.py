"""The pack inside the real ComfyUI server: listed in /object_info, and a prompt runs over HTTP."""

import json

import pytest

from realisid.host import workflow_format
from tests.conftest import stage_example_inputs
from tests.helpers.host import REPO
from tests.helpers.server import ComfyServer, server_base_dir
from tests.test_workflows import shrink_for_cpu

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def server(tmp_path_factory, models_dir):
    base, yaml = server_base_dir(tmp_path_factory.mktemp("server"), models_dir)
    stage_example_inputs(base / "input")
    srv = ComfyServer(base, yaml)
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()
    assert srv.process.returncode is not None


def test_object_info_lists_the_pack(server):
    info = server.get("/object_info")
    ours = {name: spec for name, spec in info.items() if name.startswith("RealisID")}
    assert "RealisIDLayoutFromNumbers" in ours and "RealisIDLayoutPreview" in ours
    assert all(spec["category"].startswith("RealisID/") for spec in ours.values())
    failed = [line for line in server.log().splitlines() if "IMPORT FAILED" in line and "RealisID" in line]
    assert not failed
    assert "tiny_sdxl.safetensors" in info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0]


def test_prompt_runs_over_http(server):
    prompt = {
        "1": {"class_type": "RealisIDLayoutFromNumbers",
              "inputs": {"width": 128, "height": 128, "x": 0.5, "y": 0.5, "size": 0.5}},
        "2": {"class_type": "RealisIDLayoutPreview", "inputs": {"layout": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "srv"}},
    }
    entry = server.run_prompt(prompt)
    (image,) = entry["outputs"]["3"]["images"]
    assert image["filename"].startswith("srv") and image["type"] == "output"


def test_invalid_prompt_is_rejected_with_node_errors(server):
    prompt = {
        "1": {"class_type": "RealisIDLayoutFromNumbers",
              "inputs": {"width": 128, "height": 128, "x": 0.5, "y": 0.5, "size": 9.0}},
        "2": {"class_type": "RealisIDLayoutPreview", "inputs": {"layout": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "srv"}},
    }
    status, reply = server.post("/prompt", {"prompt": prompt})
    assert status == 400 and "1" in reply["node_errors"]


def test_ui_workflows_match_the_servers_object_info(server):
    info = server.get("/object_info")
    for path in sorted((REPO / "workflows" / "ui").glob("*.json")):
        problems = workflow_format.check_ui_workflow(json.loads(path.read_text()), info)
        assert problems == [], f"{path.name}: {problems}"


def test_bundled_workflow_runs_through_the_server(server):
    prompt = shrink_for_cpu(json.loads((REPO / "workflows" / "api" / "realisid_two_people.json").read_text()))
    entry = server.run_prompt(prompt)
    saved = [img for out in entry["outputs"].values() for img in out.get("images", []) if img["type"] == "output"]
    assert len(saved) == 1 and saved[0]["filename"].startswith("realisid")


def test_ksampler_workflow_on_tiny_sdxl_saves_an_image_of_the_latent_size(server):
    from PIL import Image

    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sdxl.safetensors"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a photo of a person"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 96, "height": 64, "batch_size": 2}},
        "5": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0],
                                                   "latent_image": ["4", 0], "seed": 1, "steps": 2, "cfg": 5.0,
                                                   "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "ksampler"}},
    }
    entry = server.run_prompt(prompt)
    images = entry["outputs"]["7"]["images"]
    assert len(images) == 2
    for image in images:
        path = server.base_dir / "output" / image["subfolder"] / image["filename"]
        assert Image.open(path).size == (96, 64)
