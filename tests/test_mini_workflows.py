"""The bundled RealisID-Mini workflows through the real executor, on random Mini networks of the real shapes.

What these check is the plumbing (the Mini family, 16-channel v-prediction latents, the mini face backend, its
identity space, the guider), not image quality: the trained weights' behaviour is measured by the behavioural
tests and the model card.
"""

import json

import numpy as np
import pytest

from tests.helpers.host import REPO

MINI_API = sorted((REPO / "workflows" / "api").glob("mini_*.json"))
RANDOM_BASE = "random_mini_base.safetensors"
RANDOM_MODEL = "random_realisid_mini.safetensors"


@pytest.fixture(scope="module")
def random_mini_files(models_dir, pack_node_ids):
    """A random Mini base checkpoint and a random RealisID model for it, in the mini face backend's space."""
    import torch

    from realisid import checkpoint
    from realisid.mini import backend, base, facenets, family, vae
    from tests.helpers import tiny_host_models as tiny

    family.register()
    unet_model, clip = base.build(seed=5)
    base.save_checkpoint(str(models_dir / "checkpoints" / RANDOM_BASE), unet_model,
                         unet_model.diffusion_model.state_dict(), clip.state_dict(), vae.build_taesd(6).state_dict(),
                         {"test": True})
    torch.manual_seed(0)
    model = checkpoint.build_realisid_model(
        dict(family.UNET_CONFIG), base_state_dict=unet_model.diffusion_model.state_dict(),
        identity_space=backend.SPACE, crop_size=16,
        projector_config={"depth": 1, "num_queries": 4, "embedding_dim": facenets.EMBEDDING_DIM, "source_tokens": 1})
    model.config.update({"hint": "landmarks68", "box_expand": 1.0})
    tiny.randomize_(model.nets, 3, std=0.05)  # non-zero zero-convs: the branches act
    checkpoint.save_realisid(model, str(models_dir / "realisid" / RANDOM_MODEL))
    return models_dir


def _with_random_files(prompt: dict, steps: int = 2) -> dict:
    prompt = json.loads(json.dumps(prompt))
    for node in prompt.values():
        inputs = node["inputs"]
        if inputs.get("ckpt_name") == "realisid_mini_base.safetensors":
            inputs["ckpt_name"] = RANDOM_BASE
        if inputs.get("model_name") == "realisid_mini.safetensors":
            inputs["model_name"] = RANDOM_MODEL
        if isinstance(inputs.get("steps"), int):
            inputs["steps"] = steps
    return prompt


def test_the_mini_workflows_are_bundled_with_their_inputs():
    assert {p.stem for p in MINI_API} == {"mini_single_person", "mini_two_people", "mini_three_people",
                                          "mini_small_face", "mini_pose_from_photo"}
    main_job = json.loads((REPO / "workflows" / "api" / "mini_two_people.json").read_text())
    faces = [n["inputs"] for n in main_job.values() if n["class_type"] == "RealisIDLayoutFromNumbers"]
    assert len(faces) == 2 and min(f["size"] for f in faces) <= 1 / 7  # one small face
    assert any(n["class_type"] == "RealisIDLayoutDrivers" for n in main_job.values())
    assert any(n["class_type"] == "RealisIDGuider" for n in main_job.values())
    for path in MINI_API:
        for node in json.loads(path.read_text()).values():
            if node["class_type"] == "LoadImage":
                assert (REPO / "workflows" / "inputs" / node["inputs"]["image"]).is_file()


@pytest.mark.parametrize("path", MINI_API, ids=lambda p: p.stem)
def test_mini_workflow_runs_end_to_end_on_random_networks(path, random_mini_files, run_prompt):
    import folder_paths
    from PIL import Image

    result = run_prompt(_with_random_files(json.loads(path.read_text())))
    saved = [img for ui in result.outputs.values() for img in ui.get("images", []) if img["type"] == "output"]
    generated = [img for img in saved if img["filename"].startswith("realisid_mini_0")]
    mapping = [img for img in saved if img["filename"].startswith("realisid_mini_mapping")]
    # the Composite's face-to-box mapping is saved beside the image (the main job prints both paths)
    has_composite = any(n["class_type"] == "RealisIDMultiFaceComposite" for n in json.loads(path.read_text()).values())
    assert len(generated) == 1 and len(mapping) == int(has_composite) and len(saved) == 1 + len(mapping)
    image = Image.open(f"{folder_paths.get_output_directory()}/{generated[0]['subfolder']}/{generated[0]['filename']}")
    assert image.size == (256, 256)
    assert np.asarray(image).std() > 0  # decoded, not a constant


def _chain(prompt: dict) -> list[str]:
    """The RealisID node types between the text encoders and the guider, in link order from the guider back."""
    guider = next(n for n in prompt.values() if n["class_type"] == "RealisIDGuider")
    chain, link = [], guider["inputs"]["positive"]
    while isinstance(link, list) and prompt[link[0]]["class_type"].startswith("RealisID"):
        chain.append(prompt[link[0]]["class_type"])
        link = prompt[link[0]]["inputs"]["positive"]
    return chain


def test_the_chained_small_face_workflow_runs_one_unet_call_per_step(random_mini_files, run_prompt, monkeypatch):
    """Local Branch Apply -> Global Location Apply -> RealisID Guider, as in realisid_small_face.json (the SDXL
    twin, which needs SDXL files): the chained negatives stay null twins of the positives, so each step is ONE
    batched UNet call (unpaired chains cost two)."""
    import comfy.model_base

    sdxl = json.loads((REPO / "workflows" / "api" / "realisid_small_face.json").read_text())
    mini = json.loads((REPO / "workflows" / "api" / "mini_small_face.json").read_text())
    assert _chain(mini) == _chain(sdxl) == ["RealisIDGlobalLocationApply", "RealisIDLocalBranchApply"]
    calls = []
    apply_model = comfy.model_base.BaseModel.apply_model

    def counted(self, *args, **kwargs):
        calls.append(kwargs.get("transformer_options", {}).get("cond_or_uncond"))
        return apply_model(self, *args, **kwargs)

    monkeypatch.setattr(comfy.model_base.BaseModel, "apply_model", counted)
    steps = 4
    run_prompt(_with_random_files(mini, steps=steps))
    assert len(calls) == steps, calls
    assert all(sorted(c) == [0, 1, 2] for c in calls[-2:]), calls  # past the identity delay: all three conds
