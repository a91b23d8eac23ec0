"""RealisID nodes through ComfyUI's executor: bad inputs get clear errors, inputs are never mutated."""

import numpy as np
import pytest
import torch

from realisid.host.comfy_host import PromptError
from tests.helpers.host import REPO


def node(class_type: str, **inputs) -> dict:
    return {"class_type": class_type, "inputs": inputs}


def astronaut_image() -> torch.Tensor:
    from PIL import Image

    rgb = np.asarray(Image.open(REPO / "workflows" / "inputs" / "astronaut.jpg").convert("RGB"), np.float32) / 255
    return torch.from_numpy(rgb)[None]


@pytest.fixture
def nodes_by_id(pack_node_ids, models_dir):
    import nodes

    return nodes.NODE_CLASS_MAPPINGS


@pytest.fixture
def tiny_sdxl(models_dir):
    import comfy.sd

    model, clip, vae = comfy.sd.load_checkpoint_guess_config(str(models_dir / "checkpoints" / "tiny_sdxl.safetensors"),
                                                             output_vae=True, output_clip=True)[:3]
    return model, clip, vae


@pytest.fixture
def realisid_model(models_dir):
    from realisid import checkpoint

    return checkpoint.load_realisid(str(models_dir / "realisid" / "tiny_realisid_sdxl.safetensors"))


@pytest.fixture
def clip_vision(models_dir):
    import comfy.clip_vision

    return comfy.clip_vision.load(str(models_dir / "clip_vision" / "tiny_clip_vision.safetensors"))


@pytest.fixture
def encoded(nodes_by_id, realisid_model, clip_vision):
    analyzer = nodes_by_id["RealisIDFaceAnalysis"].execute("embedded (MTCNN + dlib, offline)", "CPU")[0]
    faces, preview = nodes_by_id["RealisIDFaceEncoder"].execute(
        astronaut_image(), analyzer, realisid_model, "largest", 0, "error", "each image is a different person",
        clip_vision)
    return analyzer, faces, preview


def test_model_loader_rejects_a_corrupt_file_with_a_clear_error(run_prompt, models_dir):
    bad = models_dir / "realisid" / "broken.safetensors"
    bad.write_bytes(b"\x00not a safetensors file")
    prompt = {"1": node("RealisIDModelLoader", model_name="broken.safetensors"),
              "2": node("RealisIDLayoutFromNumbers", x=0.5, y=0.5, size=0.5),
              "3": node("RealisIDLayoutPreview", layout=["2", 0]),
              "4": node("SaveImage", images=["3", 0], filename_prefix="x")}
    prompt["3"]["inputs"]["faces"] = ["5", 0]
    prompt["5"] = node("RealisIDFacesCombine", faces_1=["6", 0], faces_2=["6", 0])
    prompt["6"] = node("RealisIDFaceEncoder", image=["7", 0], face_analysis=["8", 0], realisid_model=["1", 0],
                       selection="largest", index=0, on_no_face="error", references="each image is a different person")
    prompt["7"] = node("LoadImage", image="astronaut.jpg")
    prompt["8"] = node("RealisIDFaceAnalysis", backend="embedded (MTCNN + dlib, offline)", provider="CPU")
    with pytest.raises(PromptError, match=r"node 1 \(RealisIDModelLoader\).*(safetensors|corrupt)"):
        run_prompt(prompt)


def test_face_encoder_gives_clip_tokens_and_a_preview(encoded):
    _, faces, preview = encoded
    assert len(faces) == 1
    assert tuple(faces[0].source.shape) == (257, 64) and faces[0].space == "clip-vision-penultimate-64x257"
    assert preview.shape == (1, 512, 512, 3)
    x0, y0, x1, y1 = faces[0].record.box
    assert 180 < (x0 + x1) / 2 < 260 and 80 < (y0 + y1) / 2 < 160  # the astronaut's face


def test_clip_space_model_without_clip_vision_is_refused(nodes_by_id, realisid_model):
    analyzer = nodes_by_id["RealisIDFaceAnalysis"].execute("embedded (MTCNN + dlib, offline)", "CPU")[0]
    with pytest.raises(ValueError, match="trained on CLIP-vision tokens"):
        nodes_by_id["RealisIDFaceEncoder"].execute(astronaut_image(), analyzer, realisid_model, "largest", 0, "error",
                                                   "each image is a different person", None)


@pytest.mark.parametrize("policy", ["error", "skip", "passthrough"])
def test_no_face_policies(nodes_by_id, realisid_model, clip_vision, policy):
    analyzer = nodes_by_id["RealisIDFaceAnalysis"].execute("embedded (MTCNN + dlib, offline)", "CPU")[0]
    blank = torch.full((1, 128, 128, 3), 0.5)
    encoder = nodes_by_id["RealisIDFaceEncoder"]
    if policy == "error":
        with pytest.raises(ValueError, match="[Nn]o face"):
            encoder.execute(blank, analyzer, realisid_model, "largest", 0, policy, "each image is a different person",
                            clip_vision)
        return
    faces, _ = encoder.execute(blank, analyzer, realisid_model, "largest", 0, policy,
                               "each image is a different person", clip_vision)
    assert faces == ()
    positive, negative = [[torch.zeros(1, 77, 96), {"pooled_output": torch.zeros(1, 64)}]], [[torch.zeros(1, 77, 96), {}]]
    layout = nodes_by_id["RealisIDLayoutFromNumbers"].execute(0.5, 0.5, 0.3)[0]
    pos, neg = nodes_by_id["RealisIDLocalBranchApply"].execute(positive, negative, realisid_model, faces, layout, 1.0,
                                                                0.0, 1.0, 0, 0.0)[:2]
    assert pos is positive and neg is negative


def test_apply_chains_on_copies_of_the_conditioning(nodes_by_id, encoded, realisid_model, models_dir):
    import comfy.controlnet

    from realisid.control import RealisIDControl

    _, faces, _ = encoded
    previous = comfy.controlnet.load_controlnet(str(models_dir / "controlnet" / "tiny_sdxl_controlnet.safetensors"))
    positive = [[torch.zeros(1, 77, 96), {"control": previous, "pooled_output": torch.zeros(1, 64)}]]
    negative = [[torch.zeros(1, 77, 96), {}]]
    before = [dict(positive[0][1]), dict(negative[0][1])]
    layout = nodes_by_id["RealisIDLayoutFromNumbers"].execute(0.5, 0.4, 0.3)[0]
    pos, neg, mapping = nodes_by_id["RealisIDMultiFaceComposite"].execute(
        positive, negative, realisid_model, faces, layout, 1.0, 1.0, 0.0, 1.0, 0, "per_person", 0.0)
    assert [positive[0][1], negative[0][1]] == before and previous.previous_controlnet is None
    control = pos[0][1]["control"]
    assert isinstance(control, RealisIDControl) and control.previous_controlnet is previous
    negative_control = neg[0][1]["control"]  # no previous control there: its own null-identity link
    assert isinstance(negative_control, RealisIDControl) and negative_control.previous_controlnet is None
    assert not negative_control.identity_enabled
    assert pos[0][1]["control_apply_to_uncond"] is False
    assert mapping.shape == (1, 768, 768, 3)


def test_face_count_must_match_the_layout(nodes_by_id, encoded, realisid_model):
    _, faces, _ = encoded
    layout = nodes_by_id["RealisIDLayoutFromNumbers"].execute(0.3, 0.4, 0.3)[0]
    layout = nodes_by_id["RealisIDLayoutFromNumbers"].execute(0.7, 0.4, 0.3, layout)[0]
    cond = [[torch.zeros(1, 77, 96), {}]]
    with pytest.raises(ValueError, match="1 encoded face.* places 2"):
        nodes_by_id["RealisIDMultiFaceComposite"].execute(cond, cond, realisid_model, faces, layout, 1.0, 1.0, 0.0,
                                                          1.0, 0, "per_person", 0.0)


def sample(model, positive, negative, seed=7):
    import nodes

    latent = {"samples": torch.zeros(1, 4, 16, 16)}
    return nodes.common_ksampler(model, seed, 2, 4.0, "euler", "normal", positive, negative, latent)[0]["samples"]


def test_base_model_behaves_the_same_after_a_realisid_graph(nodes_by_id, tiny_sdxl, encoded, realisid_model):
    model, clip, _ = tiny_sdxl
    positive = nodes_by_id["CLIPTextEncode"]().encode(clip, "a photo")[0]
    negative = nodes_by_id["CLIPTextEncode"]().encode(clip, "")[0]
    options_before = repr(model.model_options)
    plain = sample(model, positive, negative)
    _, faces, _ = encoded
    layout = nodes_by_id["RealisIDLayoutFromNumbers"].execute(0.5, 0.4, 0.4)[0]
    pos, neg, _ = nodes_by_id["RealisIDMultiFaceComposite"].execute(
        positive, negative, realisid_model, faces, layout, 1.0, 1.0, 0.0, 1.0, 0, "per_person", 0.0)
    guider = nodes_by_id["RealisIDGuider"].execute(model, pos, neg, 4.0, 3.0, 0.2)[0]
    import comfy.samplers

    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "normal", 2)
    noise = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    with_id = guider.sample(noise, torch.zeros(1, 4, 16, 16), comfy.samplers.sampler_object("euler"), sigmas, seed=0)
    assert not torch.allclose(with_id, sample(model, positive, negative), atol=1e-4)  # RealisID changed the result
    assert torch.equal(plain, sample(model, positive, negative))
    assert repr(model.model_options) == options_before


def test_sd15_base_with_an_sdxl_realisid_model_is_refused(nodes_by_id, models_dir, encoded, realisid_model):
    import comfy.sd

    model, clip = comfy.sd.load_checkpoint_guess_config(str(models_dir / "checkpoints" / "tiny_sd15.safetensors"),
                                                        output_vae=False, output_clip=True)[:2]
    positive = nodes_by_id["CLIPTextEncode"]().encode(clip, "a photo")[0]
    _, faces, _ = encoded
    layout = nodes_by_id["RealisIDLayoutFromNumbers"].execute(0.5, 0.4, 0.4)[0]
    pos, neg, _ = nodes_by_id["RealisIDMultiFaceComposite"].execute(
        positive, positive, realisid_model, faces, layout, 1.0, 1.0, 0.0, 1.0, 0, "per_person", 0.0)
    with pytest.raises(ValueError, match="RealisID model is for a SDXL base"):
        sample(model, pos, neg)


def test_layout_from_photo_and_drivers(nodes_by_id, encoded):
    analyzer, faces, _ = encoded
    photo = astronaut_image()
    layout = nodes_by_id["RealisIDLayoutFromPhoto"].execute(photo, analyzer, 1.0, True)[0]
    assert len(layout) == 1 and layout.slots[0].driver is not None
    cx = layout.slots[0].square.cx
    assert abs(cx - (faces[0].record.box[0] + faces[0].record.box[2]) / 2 / 512) < 0.02
    assert layout.slots[0].square.source_aspect == 1.0  # the photo's aspect, for the sampling-time warning
    flipped = torch.flip(photo, dims=[2])
    numbers = nodes_by_id["RealisIDLayoutFromNumbers"].execute(0.5, 0.5, 0.5)[0]
    driven = nodes_by_id["RealisIDLayoutDrivers"].execute(numbers, flipped, analyzer)[0]
    driver = driven.slots[0].driver
    assert driver.kps[0, 0] > 512 - faces[0].record.kps[1, 0] - 8  # the mirrored face drives the pose
    preview = nodes_by_id["RealisIDLayoutPreview"].execute(driven, None, faces)[0]
    assert preview.shape == (1, 768, 768, 3) and float(preview.std()) > 0.01  # typed-in faces: a square canvas


def test_layout_nodes_output_a_preview_of_their_boxes(nodes_by_id):
    from realisid.drawing import face_colour

    layout, preview = nodes_by_id["RealisIDLayoutFromNumbers"].execute(0.25, 0.5, 0.5)
    assert preview.shape == (1, 768, 768, 3)  # typed-in faces hold no size: a square canvas of 768 px
    # face 0's box: side 0.5 of 768 = 384 px centred at (192, 384), i.e. x 0..384, y 192..576
    assert torch.allclose(preview[0, 400, 1], torch.tensor(face_colour(0)), atol=0.05)
    assert torch.allclose(preview[0, 10, 700], torch.full((3,), 0.5), atol=0.01)  # untouched canvas


def test_mapping_numbers_people_across_encoders_from_one(nodes_by_id, encoded, realisid_model):
    """Two people encoded by two Face Encoders (each numbers only its own batch) and combined: the Composite's
    mapping labels the boxes person 1 and person 2, as the workflows title them."""
    import sys

    layout_preview = sys.modules[nodes_by_id["RealisIDLayoutPreview"].__module__].layout_preview  # the pack's own
    _, faces, _ = encoded
    both = nodes_by_id["RealisIDFacesCombine"].execute(faces, faces)[0]
    numbers = nodes_by_id["RealisIDLayoutFromNumbers"]
    layout = numbers.execute(0.7, 0.5, 0.2, previous=numbers.execute(0.3, 0.4, 0.3)[0])[0]
    cond = [[torch.zeros(1, 77, 96), {"pooled_output": torch.zeros(1, 64)}]]
    mapping = nodes_by_id["RealisIDMultiFaceComposite"].execute(cond, cond, realisid_model, both, layout, 1.0, 1.0,
                                                                0.0, 1.0, 0, "per_person", 0.0)[2]
    torch.testing.assert_close(mapping, layout_preview(layout, labels=["person 1", "person 2"]), atol=0, rtol=0)
    assert not torch.equal(mapping, layout_preview(layout, labels=["person 0", "person 0"]))
