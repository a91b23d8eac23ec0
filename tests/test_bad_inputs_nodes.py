"""Bad node inputs, generated at test time: NaN and infinite numbers (ComfyUI's min/max checks let NaN through),
empty, zero-sized, NaN-filled and oddly-channelled images, non-finite layout boxes. Each is refused with
validation.InputError naming the input, or normalised (1/2/4-channel images become RGB). The combinations give
several bad inputs at once and expect the first in the node's input order; a few cases run through the real
executor (issue 17).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from realisid import instantid
from realisid.comfy_host import PromptError
from realisid.layout import FaceLayout, FaceSlot
from realisid.validation import InputError
from tests.helpers import fake_instantid as fi
from tests.helpers import tiny_realisid as T
from tests.test_nodes import astronaut_image, node

NAN, INF = float("nan"), float("inf")
BAD_NUMBERS = [NAN, INF, -INF, "abc"]
EMBEDDED = "embedded (MTCNN + dlib, offline)"
ONE_PER_IMAGE = "each image is a different person"


def raises_input_error(fn, *fragments) -> str:
    """fn must raise exactly InputError (no library error) whose message holds every fragment."""
    with pytest.raises(Exception) as caught:
        fn()
    assert type(caught.value) is InputError, f"{type(caught.value).__name__}: {caught.value}"
    for fragment in fragments:
        assert fragment in str(caught.value), f"{fragment!r} not in: {caught.value}"
    return str(caught.value)


@pytest.fixture(scope="module")
def mapping(pack_node_ids, models_dir):
    import nodes

    return nodes.NODE_CLASS_MAPPINGS


@pytest.fixture(scope="module")
def realisid_model(models_dir):
    from realisid import checkpoint

    return checkpoint.load_realisid(str(models_dir / "realisid" / "tiny_realisid_sdxl.safetensors"))


@pytest.fixture(scope="module")
def clip_vision(models_dir):
    import comfy.clip_vision

    return comfy.clip_vision.load(str(models_dir / "clip_vision" / "tiny_clip_vision.safetensors"))


@pytest.fixture(scope="module")
def analyzer(mapping):
    return mapping["RealisIDFaceAnalysis"].execute(EMBEDDED, "CPU")[0]


@pytest.fixture(scope="module")
def base():
    return T.tiny_base_model("sdxl")


# ------------------------------------------------------------------------------------------------ Guider ------
GUIDER_INPUTS = ("text_scale", "id_scale", "id_delay")
GOOD_GUIDER = {"text_scale": 4.0, "id_scale": 3.0, "id_delay": 0.2}


def run_guider(mapping, base, values):
    positive, negative = T.tiny_conditioning("sdxl")
    return mapping["RealisIDGuider"].execute(base, positive, negative, **{**GOOD_GUIDER, **values})


@pytest.mark.parametrize("value", BAD_NUMBERS, ids=repr)
@pytest.mark.parametrize("name", GUIDER_INPUTS)
def test_guider_refuses_non_finite_scales(mapping, base, name, value):
    raises_input_error(lambda: run_guider(mapping, base, {name: value}), name, repr(value))


def bad_subsets(names):
    """Every assignment of NaN / inf to two or more of `names`: (values, the first bad name in input order)."""
    for size in range(2, len(names) + 1):
        for subset in itertools.combinations(names, size):
            for values in itertools.product((NAN, INF), repeat=size):
                yield dict(zip(subset, values, strict=True)), subset[0]


GUIDER_COMBINATIONS = list(bad_subsets(GUIDER_INPUTS))


@pytest.mark.parametrize("values,first", GUIDER_COMBINATIONS, ids=[repr(v) for v, _ in GUIDER_COMBINATIONS])
def test_guider_combinations_name_the_first_bad_input(mapping, base, values, first):
    message = raises_input_error(lambda: run_guider(mapping, base, values), first)
    assert message.startswith(first)


def test_guider_accepts_finite_scales(mapping, base):
    guider = run_guider(mapping, base, {})[0]
    assert (guider.text_scale, guider.id_scale, guider.id_delay) == (4.0, 3.0, 0.2)


# ------------------------------------------------------------------------------------ InstantID attention -----
ATTENTION_INPUTS = ("weight", "start_percent", "end_percent")
GOOD_ATTENTION = {"weight": 0.8, "start_percent": 0.0, "end_percent": 1.0}


@pytest.fixture(scope="module")
def instantid_model(tmp_path_factory):
    cn, ip = fi.write_instantid(tmp_path_factory.mktemp("iid_nodes"), T.tiny_unet_config("sdxl"))
    return instantid.load_instantid(str(cn), str(ip), crop_size=8)


def run_attention(mapping, base, model, values, faces=()):
    layout = mapping["RealisIDLayoutFromNumbers"].execute(64, 64, 0.5, 0.5, 0.5)[0]
    return mapping["RealisIDInstantIDAttention"].execute(base, model, faces, layout,
                                                         **{**GOOD_ATTENTION, **values})


@pytest.mark.parametrize("value", BAD_NUMBERS, ids=repr)
@pytest.mark.parametrize("name", ATTENTION_INPUTS)
def test_instantid_attention_refuses_non_finite_numbers(mapping, base, instantid_model, name, value):
    raises_input_error(lambda: run_attention(mapping, base, instantid_model, {name: value}), name, repr(value))


ATTENTION_COMBINATIONS = list(bad_subsets(ATTENTION_INPUTS))


@pytest.mark.parametrize("values,first", ATTENTION_COMBINATIONS, ids=[repr(v) for v, _ in ATTENTION_COMBINATIONS])
def test_instantid_attention_combinations_name_the_first_bad_input(mapping, base, instantid_model, values, first):
    message = raises_input_error(lambda: run_attention(mapping, base, instantid_model, values), first)
    assert message.startswith(first)


def test_nan_weight_is_named_before_a_wrong_model(mapping, base, realisid_model):
    raises_input_error(lambda: run_attention(mapping, base, realisid_model, {"weight": NAN}), "weight")


def test_instantid_attention_accepts_finite_numbers(mapping, base, instantid_model):
    assert run_attention(mapping, base, instantid_model, {})[0] is base  # no faces: the MODEL passes through


# ------------------------------------------------------------------------------------------ Face Encoder ------
def encode(mapping, analyzer, model, clip_vision, image, policy="error"):
    return mapping["RealisIDFaceEncoder"].execute(image, analyzer, model, "largest", 0, policy, ONE_PER_IMAGE,
                                                  clip_vision)


def nan_image():
    image = torch.full((1, 32, 32, 3), 0.5)
    image[0, 3, 4, 1] = NAN
    return image


def inf_image():
    image = torch.full((1, 32, 32, 3), 0.5)
    image[0, 0, 0, 0] = INF
    return image


BAD_IMAGES = [
    ("empty-batch", lambda: torch.zeros(0, 64, 64, 3), "empty batch"),
    ("zero-by-zero", lambda: torch.zeros(1, 0, 0, 3), "zero size (0x0"),
    ("zero-height", lambda: torch.zeros(1, 0, 64, 3), "zero size (64x0"),
    ("five-channels", lambda: torch.zeros(1, 32, 32, 5), "5 channels"),
    ("zero-channels", lambda: torch.zeros(1, 32, 32, 0), "0 channels"),
    ("nan-pixel", nan_image, "NaN or infinite pixel"),
    ("inf-pixel", inf_image, "NaN or infinite pixel"),
    ("no-batch-dim", lambda: torch.zeros(32, 32, 3), "shape (B, H, W, C), got (32, 32, 3)"),
    ("not-a-tensor", lambda: [[0.5]], "got list"),
]


@pytest.mark.parametrize("policy", ["error", "skip", "passthrough"])
@pytest.mark.parametrize("case,make,fragment", BAD_IMAGES, ids=[c[0] for c in BAD_IMAGES])
def test_face_encoder_refuses_bad_images(mapping, analyzer, realisid_model, clip_vision, case, make, fragment,
                                         policy):
    """An unusable image batch is a wiring error under every no-face policy (an empty batch too)."""
    raises_input_error(lambda: encode(mapping, analyzer, realisid_model, clip_vision, make(), policy),
                       "image", fragment)


ENCODER_COMBINATIONS = [
    ("nan+five-channels", lambda: torch.full((1, 8, 8, 5), NAN), "NaN or infinite pixel"),
    ("empty+five-channels", lambda: torch.zeros(0, 8, 8, 5), "empty batch"),
    ("zero-size+nan", lambda: torch.full((1, 0, 8, 3), NAN), "zero size"),
    ("no-batch-dim+nan", lambda: torch.full((8, 8, 3), NAN), "shape (B, H, W, C)"),
]


@pytest.mark.parametrize("case,make,fragment", ENCODER_COMBINATIONS, ids=[c[0] for c in ENCODER_COMBINATIONS])
def test_face_encoder_image_fault_combinations(mapping, analyzer, realisid_model, clip_vision, case, make, fragment):
    raises_input_error(lambda: encode(mapping, analyzer, realisid_model, clip_vision, make()), "image", fragment)


@pytest.mark.parametrize("channels", [1, 2, 4])
def test_face_encoder_previews_grey_and_alpha_images_in_rgb(mapping, analyzer, realisid_model, clip_vision,
                                                            channels):
    blank = torch.full((1, 96, 96, channels), 0.5)
    faces, preview = encode(mapping, analyzer, realisid_model, clip_vision, blank, "skip")
    assert faces == () and preview.shape == (1, 96, 96, 3)


def test_grey_reference_photo_is_encoded(mapping, analyzer, realisid_model, clip_vision):
    grey = astronaut_image().mean(dim=-1, keepdim=True)
    faces, preview = encode(mapping, analyzer, realisid_model, clip_vision, grey)
    assert len(faces) == 1 and preview.shape == (1, 512, 512, 3)
    x0, _, x1, _ = faces[0].record.box
    assert 180 < (x0 + x1) / 2 < 260  # the astronaut's face, found in the grey copy


def test_faceless_image_in_a_batch_is_marked_by_policy(mapping, analyzer, realisid_model, clip_vision):
    """skip drops the faceless image and keeps the other people; passthrough turns identity off for the whole
    batch (no person is boxed). The preview labels the faceless image with the policy's note."""
    photo = astronaut_image()
    batch = torch.cat([photo, torch.full_like(photo, 0.5)])
    kept, skip_preview = encode(mapping, analyzer, realisid_model, clip_vision, batch, "skip")
    dropped, pass_preview = encode(mapping, analyzer, realisid_model, clip_vision, batch, "passthrough")
    assert len(kept) == 1 and dropped == ()
    assert not torch.allclose(skip_preview[0], photo[0], atol=0.02)  # person 0 boxed
    assert torch.allclose(pass_preview[0], photo[0], atol=0.01)  # nobody boxed: identity is off everywhere
    for preview in (skip_preview, pass_preview):
        assert float((preview[1] - 0.5).abs().amax()) > 0.2  # the faceless image carries a label
    assert not torch.equal(skip_preview[1], pass_preview[1])  # ... that says which policy applied


# ---------------------------------------------------------------------------------------- Layout Preview ------
def layout_of(*boxes) -> FaceLayout:
    return FaceLayout(64, 64, tuple(FaceSlot(tuple(b)) for b in boxes))


GOOD_BOX = (0.25, 0.25, 0.75, 0.75)
BAD_BOXES = [
    ("nan-x0", [(NAN, 0.2, 0.6, 0.6)], "box 0"), ("inf-y1", [(0.2, 0.2, 0.6, INF)], "box 0"),
    ("neg-inf-x1", [(0.2, 0.2, -INF, 0.6)], "box 0"), ("nan-second-box", [GOOD_BOX, (0.1, NAN, 0.3, 0.3)], "box 1"),
    ("all-nan", [(NAN,) * 4], "box 0"),
]


@pytest.mark.parametrize("case,boxes,fragment", BAD_BOXES, ids=[c[0] for c in BAD_BOXES])
def test_layout_preview_refuses_non_finite_boxes(mapping, case, boxes, fragment):
    preview = mapping["RealisIDLayoutPreview"]
    raises_input_error(lambda: preview.execute(layout_of(*boxes), None, None), "layout", fragment, "non-finite")


@pytest.mark.parametrize("case,make,fragment", BAD_IMAGES, ids=[c[0] for c in BAD_IMAGES])
def test_layout_preview_refuses_bad_images(mapping, case, make, fragment):
    preview = mapping["RealisIDLayoutPreview"]
    raises_input_error(lambda: preview.execute(layout_of(GOOD_BOX), make(), None), "image", fragment)


PREVIEW_COMBINATIONS = [
    ("nan-box+empty-image", [(NAN, 0, 1, 1)], lambda: torch.zeros(0, 8, 8, 3), "layout"),
    ("inf-box+five-channels", [(0, 0, INF, 1)], lambda: torch.zeros(1, 8, 8, 5), "layout"),
    ("good-box+nan-five-channels", [GOOD_BOX], lambda: torch.full((1, 8, 8, 5), NAN), "image holds NaN"),
]


@pytest.mark.parametrize("case,boxes,make,fragment", PREVIEW_COMBINATIONS, ids=[c[0] for c in PREVIEW_COMBINATIONS])
def test_layout_preview_fault_combinations(mapping, case, boxes, make, fragment):
    preview = mapping["RealisIDLayoutPreview"]
    raises_input_error(lambda: preview.execute(layout_of(*boxes), make(), None), fragment)


@pytest.mark.parametrize("channels", [1, 2, 4])
def test_layout_preview_draws_grey_and_alpha_images_in_rgb(mapping, channels):
    image = torch.full((2, 40, 48, channels), 0.25)
    out = mapping["RealisIDLayoutPreview"].execute(layout_of(GOOD_BOX), image, None)[0]
    assert out.shape == (1, 40, 48, 3)
    np.testing.assert_allclose(out[0, 2, 2].numpy(), [0.25] * 3, atol=0.01)  # outside the box: the grey image


# ------------------------------------------------------------------------------------ through the executor ----
def test_executor_names_a_list_metadata_checkpoint(run_prompt, models_dir):
    import json

    import safetensors.torch

    path = models_dir / "realisid" / "list_metadata.safetensors"
    safetensors.torch.save_file({"w": torch.zeros(1)}, str(path), metadata={"realisid": json.dumps([1])})
    prompt = {"1": node("RealisIDModelLoader", model_name=path.name),
              "2": node("LoadImage", image="astronaut.jpg"),
              "3": node("RealisIDFaceAnalysis", backend=EMBEDDED, provider="CPU"),
              "4": node("RealisIDFaceEncoder", image=["2", 0], face_analysis=["3", 0], realisid_model=["1", 0],
                        selection="largest", index=0, on_no_face="error", references=ONE_PER_IMAGE),
              "5": node("PreviewImage", images=["4", 1])}
    with pytest.raises(PromptError, match=r"node 1 \(RealisIDModelLoader\).*list_metadata.safetensors.*JSON list"):
        run_prompt(prompt)


@pytest.mark.parametrize("name", GUIDER_INPUTS)
def test_executor_names_a_nan_guider_input(run_prompt, name):
    """validate_prompt passes NaN (min/max comparisons are false); the node then refuses it by name."""
    prompt = {"1": node("CheckpointLoaderSimple", ckpt_name="tiny_sdxl.safetensors"),
              "2": node("CLIPTextEncode", text="a photo", clip=["1", 1]),
              "3": node("RealisIDGuider", model=["1", 0], positive=["2", 0], negative=["2", 0],
                        **{**GOOD_GUIDER, name: NAN}),
              "4": node("KSamplerSelect", sampler_name="euler"),
              "5": node("BasicScheduler", model=["1", 0], scheduler="normal", steps=1, denoise=1.0),
              "6": node("RandomNoise", noise_seed=1),
              "7": node("EmptyLatentImage", width=64, height=64, batch_size=1),
              "8": node("SamplerCustomAdvanced", noise=["6", 0], guider=["3", 0], sampler=["4", 0], sigmas=["5", 0],
                        latent_image=["7", 0]),
              "9": node("SaveLatent", samples=["8", 0], filename_prefix="x")}
    with pytest.raises(PromptError, match=rf"node 3 \(RealisIDGuider\).*{name} must be a finite number"):
        run_prompt(prompt)
