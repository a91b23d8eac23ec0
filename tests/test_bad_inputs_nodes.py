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

from realisid.geometry import FaceSquare
from realisid.host.comfy_host import PromptError
from realisid.instantid import model as instantid
from realisid.layout import FaceLayout, FaceSlot, LayoutError
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
    layout = mapping["RealisIDLayoutFromNumbers"].execute(0.5, 0.5, 0.5)[0]
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


def test_instantid_attention_at_weight_zero_returns_the_model_itself(mapping, base, instantid_model):
    """Core's convention: strength 0 returns the input (no clone, no 70 attention patches); any other weight
    patches a clone."""
    from realisid.faces import FaceRecord
    from realisid.identity_sources import EncodedFace

    record = FaceRecord(box=(60, 50, 140, 150), score=1, kps=[(85, 90), (115, 90), (100, 110), (88, 130), (112, 130)],
                        image_size=(200, 200))
    faces = [EncodedFace(record, torch.randn(1, 512, generator=torch.Generator().manual_seed(3)),
                         instantid.IDENTITY_SPACE)]
    assert run_attention(mapping, base, instantid_model, {"weight": 0.0}, faces)[0] is base
    patched = run_attention(mapping, base, instantid_model, {"weight": 0.5}, faces)[0]
    assert patched is not base and patched.model_options["transformer_options"]["patches_replace"]["attn2"]


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
    """The declared batch policy: skip drops the faceless image and keeps the other people; passthrough turns
    identity off for the whole batch (no faces out, the apply nodes pass through). The preview boxes person 0 in
    both, labelled 'ID off' under passthrough, and labels the faceless image with the policy's note."""
    photo = astronaut_image()
    batch = torch.cat([photo, torch.full_like(photo, 0.5)])
    kept, skip_preview = encode(mapping, analyzer, realisid_model, clip_vision, batch, "skip")
    dropped, pass_preview = encode(mapping, analyzer, realisid_model, clip_vision, batch, "passthrough")
    assert len(kept) == 1 and dropped == ()
    for preview in (skip_preview, pass_preview):
        assert not torch.allclose(preview[0], photo[0], atol=0.02)  # person 0 boxed
        assert float((preview[1] - 0.5).abs().amax()) > 0.2  # the faceless image carries a label
    assert not torch.equal(skip_preview[0], pass_preview[0])  # person 0's label says its identity is off
    assert not torch.equal(skip_preview[1], pass_preview[1])  # ... and the note says which policy applied
    alone, _ = encode(mapping, analyzer, realisid_model, clip_vision, photo, "passthrough")
    assert len(alone) == 1  # passthrough only acts when an image of the batch has no face


# ---------------------------------------------------------------------------------------- Layout Preview ------
def layout_of(*squares) -> FaceLayout:
    """A layout built by hand (bypassing the layout nodes' checks), faces as (cx, cy, side)."""
    return FaceLayout(tuple(FaceSlot(FaceSquare(*square)) for square in squares))


GOOD_BOX = (0.5, 0.5, 0.5)
BAD_BOXES = [
    ("nan-cx", [(NAN, 0.4, 0.4)], "box 0"), ("inf-side", [(0.4, 0.4, INF)], "box 0"),
    ("neg-inf-cy", [(0.4, -INF, 0.4)], "box 0"), ("nan-second-box", [GOOD_BOX, (0.2, NAN, 0.2)], "box 1"),
    ("all-nan", [(NAN,) * 3], "box 0"),
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
    ("nan-box+empty-image", [(NAN, 0.5, 1)], lambda: torch.zeros(0, 8, 8, 3), "layout"),
    ("inf-box+five-channels", [(0.5, 0.5, INF)], lambda: torch.zeros(1, 8, 8, 5), "layout"),
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


# ------------------------------------------------------------------------------------------- Layout nodes ------
NUMBERS_INPUTS = ("x", "y", "size")
GOOD_NUMBERS = {"x": 0.5, "y": 0.4, "size": 0.25}


def run_numbers(mapping, values, previous=None):
    return mapping["RealisIDLayoutFromNumbers"].execute(**{**GOOD_NUMBERS, **values}, previous=previous)


@pytest.mark.parametrize("value", BAD_NUMBERS, ids=repr)
@pytest.mark.parametrize("name", NUMBERS_INPUTS)
def test_numbers_layout_refuses_non_finite_numbers(mapping, name, value):
    raises_input_error(lambda: run_numbers(mapping, {name: value}), name, repr(value))


@pytest.mark.parametrize("size", [0.0, -0.1, 1.5])
def test_numbers_layout_refuses_a_size_outside_the_image(mapping, size):
    raises_input_error(lambda: run_numbers(mapping, {"size": size}), "size", "(0, 1]")


NUMBERS_COMBINATIONS = list(bad_subsets(NUMBERS_INPUTS))


@pytest.mark.parametrize("values,first", NUMBERS_COMBINATIONS, ids=[repr(v) for v, _ in NUMBERS_COMBINATIONS])
def test_numbers_layout_combinations_name_the_first_bad_input(mapping, values, first):
    assert raises_input_error(lambda: run_numbers(mapping, values), first).startswith(first)


def test_numbers_layout_holds_no_size_and_chains(mapping):
    first = run_numbers(mapping, {})[0]
    both = run_numbers(mapping, {"x": 0.8}, previous=first)[0]
    assert [s.square for s in both.slots] == [FaceSquare(0.5, 0.4, 0.25), FaceSquare(0.8, 0.4, 0.25)]
    with pytest.raises(LayoutError, match="at most 16"):
        layout = first
        for _ in range(16):
            layout = run_numbers(mapping, {}, previous=layout)[0]


def blob_mask(batch=1, h=64, w=96):
    mask = torch.zeros(batch, h, w)
    mask[:, 10:30, 20:40] = 1.0
    return mask


def nan_mask():
    mask = blob_mask()
    mask[0, 0, 0] = NAN
    return mask


def inf_mask():
    mask = blob_mask()
    mask[0, 50, 50] = -INF
    return mask


BAD_MASKS = [
    ("empty-batch", lambda: torch.zeros(0, 64, 64), "empty batch (0 masks)"),
    ("zero-by-zero", lambda: torch.zeros(1, 0, 0), "zero size (0x0"),
    ("zero-width", lambda: torch.zeros(1, 64, 0), "zero size (0x64"),
    ("nan-value", nan_mask, "NaN or infinite"),
    ("inf-value", inf_mask, "NaN or infinite"),
    ("four-dims", lambda: torch.zeros(1, 64, 64, 3), "shape (B, H, W), got (1, 64, 64, 3)"),
    ("one-dim", lambda: torch.zeros(64), "shape (B, H, W), got (64,)"),
    ("not-a-tensor", lambda: np.zeros((8, 8)), "got ndarray"),
]


def run_mask(mapping, mask, expand=1.0):
    return mapping["RealisIDLayoutFromMask"].execute(mask, expand)


@pytest.mark.parametrize("case,make,fragment", BAD_MASKS, ids=[c[0] for c in BAD_MASKS])
def test_mask_layout_refuses_bad_masks(mapping, case, make, fragment):
    raises_input_error(lambda: run_mask(mapping, make()), "mask", fragment)


@pytest.mark.parametrize("value", BAD_NUMBERS, ids=repr)
def test_mask_layout_refuses_non_finite_expand(mapping, value):
    raises_input_error(lambda: run_mask(mapping, blob_mask(), value), "expand", repr(value))


@pytest.mark.parametrize("value", [0.0, -1.0])
def test_mask_and_photo_layouts_refuse_an_expand_that_is_not_positive(mapping, analyzer, value):
    raises_input_error(lambda: run_mask(mapping, blob_mask(), value), "expand", "above 0")
    raises_input_error(lambda: run_photo(mapping, analyzer, astronaut_image(), value), "expand", "above 0")


MASK_COMBINATIONS = [(f"{case}+expand={value!r}", make) for case, make, _ in BAD_MASKS for value in (NAN, INF)]


@pytest.mark.parametrize("case,make", MASK_COMBINATIONS, ids=[c[0] for c in MASK_COMBINATIONS])
def test_mask_layout_combinations_name_the_mask_first(mapping, case, make):
    expand = NAN if "nan" in case.split("+")[1] else INF
    assert raises_input_error(lambda: run_mask(mapping, make(), expand), "mask").startswith("mask")


def test_mask_layout_of_a_blank_mask_says_to_paint_and_a_2d_mask_is_a_batch_of_one(mapping):
    with pytest.raises(LayoutError, match="paint one blob per face"):
        run_mask(mapping, torch.zeros(1, 32, 32))
    layout = run_mask(mapping, blob_mask()[0])[0]  # (H, W)
    square = layout.slots[0].square
    assert (square.cx, square.cy, square.side, square.source_aspect) == pytest.approx((30 / 96, 20 / 64, 20 / 64,
                                                                                        1.5))
    batch = run_mask(mapping, torch.cat([blob_mask(), torch.zeros(1, 64, 96)]))[0]
    assert batch.slots == layout.slots  # the first mask of a batch


def run_photo(mapping, analyzer, image, expand=1.0):
    return mapping["RealisIDLayoutFromPhoto"].execute(image, analyzer, expand, True)


@pytest.mark.parametrize("case,make,fragment", BAD_IMAGES, ids=[c[0] for c in BAD_IMAGES])
def test_photo_layout_refuses_bad_images(mapping, analyzer, case, make, fragment):
    raises_input_error(lambda: run_photo(mapping, analyzer, make()), "image", fragment)


@pytest.mark.parametrize("value", BAD_NUMBERS, ids=repr)
def test_photo_layout_refuses_non_finite_expand(mapping, analyzer, value):
    raises_input_error(lambda: run_photo(mapping, analyzer, astronaut_image(), value), "expand", repr(value))


PHOTO_COMBINATIONS = [(f"{case}+expand=nan", make) for case, make, _ in BAD_IMAGES]


@pytest.mark.parametrize("case,make", PHOTO_COMBINATIONS, ids=[c[0] for c in PHOTO_COMBINATIONS])
def test_photo_layout_combinations_name_the_image_first(mapping, analyzer, case, make):
    assert raises_input_error(lambda: run_photo(mapping, analyzer, make(), NAN), "image").startswith("image")


@pytest.mark.parametrize("case,make,fragment", BAD_IMAGES, ids=[c[0] for c in BAD_IMAGES])
def test_pose_drivers_refuse_bad_images(mapping, analyzer, case, make, fragment):
    layout = run_numbers(mapping, {})[0]
    raises_input_error(lambda: mapping["RealisIDLayoutDrivers"].execute(layout, make(), analyzer), "image",
                       fragment)


# ------------------------------------------------------------------------------------------ Combine Faces -----
@pytest.fixture(scope="module")
def faces(mapping, analyzer, realisid_model, clip_vision):
    return encode(mapping, analyzer, realisid_model, clip_vision, astronaut_image())[0]


@pytest.mark.parametrize("bad", [None, "person", 3, torch.zeros(2)], ids=repr)
@pytest.mark.parametrize("name", ["faces_1", "faces_2"])
def test_combine_refuses_what_is_not_faces(mapping, faces, name, bad):
    values = {"faces_1": faces, "faces_2": faces, name: bad}
    raises_input_error(lambda: mapping["RealisIDFacesCombine"].execute(**values), name, "RealisID Face Encoder")


def test_combine_refuses_more_people_than_one_image_holds(mapping, faces):
    raises_input_error(lambda: mapping["RealisIDFacesCombine"].execute(faces * 9, faces * 8), "faces_2",
                       "9 + 8 people")


# ----------------------------------------------------------------------------------------- Apply nodes -------
def nan_conditioning():
    positive, _ = T.tiny_conditioning("sdxl")
    positive[0][0][0, 1, 2] = NAN
    return positive


def inf_pooled_conditioning():
    positive, _ = T.tiny_conditioning("sdxl")
    positive[0][1]["pooled_output"][0, 0] = INF
    return positive


BAD_CONDITIONINGS = [
    ("nan-tokens", nan_conditioning, "entry 0 holds NaN"),
    ("inf-pooled", inf_pooled_conditioning, "pooled output holds NaN"),
    ("empty-list", lambda: [], "an empty list"),
    ("not-a-list", lambda: torch.zeros(1, 5, 32), "got Tensor"),
    ("entry-not-a-pair", lambda: [[torch.zeros(1, 5, 32)]], "entry 0 is not a [tensor, options] pair"),
    ("entry-without-tensor", lambda: [["a photo", {}]], "entry 0 is not a [tensor, options] pair"),
]
APPLY_NUMBERS = {
    "RealisIDLocalBranchApply": {"strength": 1.0, "start_percent": 0.0, "end_percent": 1.0, "crop_size": 0,
                                 "feather": 0.0},
    "RealisIDGlobalLocationApply": {"strength": 1.0, "start_percent": 0.0, "end_percent": 1.0,
                                    "mode": "per_person"},
    "RealisIDMultiFaceComposite": {"local_strength": 1.0, "global_strength": 1.0, "start_percent": 0.0,
                                   "end_percent": 1.0, "crop_size": 0, "global_mode": "per_person",
                                   "feather": 0.0},
}
APPLY_NODES = list(APPLY_NUMBERS)
FLOAT_INPUTS = [(node_id, name) for node_id, values in APPLY_NUMBERS.items() for name, v in values.items()
                if isinstance(v, float)]


def run_apply(mapping, node_id, model, faces, values=(), layout=None, positive=None, negative=None):
    good_positive, good_negative = T.tiny_conditioning("sdxl")
    return mapping[node_id].execute(
        positive=good_positive if positive is None else positive,
        negative=good_negative if negative is None else negative, realisid_model=model, faces=faces,
        layout=run_numbers(mapping, {})[0] if layout is None else layout, **{**APPLY_NUMBERS[node_id], **dict(values)})


@pytest.mark.parametrize("value", BAD_NUMBERS, ids=repr)
@pytest.mark.parametrize("node_id,name", FLOAT_INPUTS, ids=[f"{n}.{i}" for n, i in FLOAT_INPUTS])
def test_apply_nodes_refuse_non_finite_numbers(mapping, realisid_model, faces, node_id, name, value):
    raises_input_error(lambda: run_apply(mapping, node_id, realisid_model, faces, {name: value}), name,
                       repr(value))


@pytest.mark.parametrize("value,fragment", [(NAN, "positive multiple of 8"), (INF, "positive multiple of 8"),
                                            ("abc", "whole number"), (-8, "positive multiple of 8"),
                                            (12, "positive multiple of 8"), (1024, "at most 256"),
                                            (3.5, "positive multiple of 8")], ids=repr)
@pytest.mark.parametrize("node_id", ["RealisIDLocalBranchApply", "RealisIDMultiFaceComposite"])
def test_apply_nodes_refuse_bad_crop_sizes(mapping, realisid_model, faces, node_id, value, fragment):
    raises_input_error(lambda: run_apply(mapping, node_id, realisid_model, faces, {"crop_size": value}),
                       "crop_size", fragment)


RANGE_FAULTS = [({"start_percent": 0.6, "end_percent": 0.4}, "start_percent (0.6) must be below"),
                ({"start_percent": 0.5, "end_percent": 0.5}, "start_percent (0.5) must be below"),
                ({"start_percent": -0.1}, "start_percent must be a fraction"),
                ({"end_percent": 1.5}, "end_percent must be a fraction")]


@pytest.mark.parametrize("values,fragment", RANGE_FAULTS, ids=[repr(v) for v, _ in RANGE_FAULTS])
@pytest.mark.parametrize("node_id", APPLY_NODES)
def test_apply_nodes_refuse_an_empty_or_outside_range(mapping, realisid_model, faces, node_id, values, fragment):
    raises_input_error(lambda: run_apply(mapping, node_id, realisid_model, faces, values), fragment)


@pytest.mark.parametrize("feather", [-0.1, 0.6])
@pytest.mark.parametrize("node_id", ["RealisIDLocalBranchApply", "RealisIDMultiFaceComposite"])
def test_apply_nodes_refuse_a_feather_outside_its_range(mapping, realisid_model, faces, node_id, feather):
    raises_input_error(lambda: run_apply(mapping, node_id, realisid_model, faces, {"feather": feather}), "feather")


@pytest.mark.parametrize("case,make,fragment", BAD_CONDITIONINGS, ids=[c[0] for c in BAD_CONDITIONINGS])
@pytest.mark.parametrize("name", ["positive", "negative"])
@pytest.mark.parametrize("node_id", APPLY_NODES)
def test_apply_nodes_refuse_bad_conditioning(mapping, realisid_model, faces, node_id, name, case, make, fragment):
    raises_input_error(lambda: run_apply(mapping, node_id, realisid_model, faces, **{name: make()}), name, fragment)


@pytest.mark.parametrize("node_id", APPLY_NODES)
def test_apply_nodes_refuse_a_face_count_that_misses_the_layout(mapping, realisid_model, faces, node_id):
    two = run_numbers(mapping, {"x": 0.7}, previous=run_numbers(mapping, {})[0])[0]
    with pytest.raises(LayoutError, match="1 encoded face.* places 2"):
        run_apply(mapping, node_id, realisid_model, faces, layout=two)


@pytest.mark.parametrize("node_id", APPLY_NODES)
def test_apply_nodes_refuse_a_nan_identity_by_name(mapping, realisid_model, faces, node_id):
    import dataclasses

    broken = (dataclasses.replace(faces[0], source=torch.full_like(faces[0].source, NAN)),)
    raises_input_error(lambda: run_apply(mapping, node_id, realisid_model, broken), "faces: person 0")


def test_apply_refuses_a_projector_that_makes_nan_tokens(mapping, faces, models_dir):
    from realisid import checkpoint

    model = checkpoint.load_realisid(str(models_dir / "realisid" / "tiny_realisid_sdxl.safetensors"))
    with torch.no_grad():
        next(model.projector.parameters()).fill_(NAN)  # a private copy: the module fixture's model stays sound
    raises_input_error(lambda: run_apply(mapping, "RealisIDMultiFaceComposite", model, faces), "realisid_model",
                       "NaN or infinite tokens")


@pytest.mark.parametrize("node_id", APPLY_NODES)
def test_apply_nodes_accept_good_inputs_and_pass_through_without_faces(mapping, realisid_model, faces, node_id):
    from realisid.control import RealisIDControl

    positive, negative = T.tiny_conditioning("sdxl")
    out = run_apply(mapping, node_id, realisid_model, faces, positive=positive, negative=negative)
    assert isinstance(out[0][0][1]["control"], RealisIDControl)
    assert "control" not in positive[0][1]  # the incoming conditioning is untouched
    same = run_apply(mapping, node_id, realisid_model, (), positive=positive, negative=negative)
    assert same[0] is positive and same[1] is negative


GLOBAL_INPUTS = ("strength", "start_percent", "end_percent")
GLOBAL_COMBINATIONS = list(bad_subsets(GLOBAL_INPUTS))


@pytest.mark.parametrize("values,first", GLOBAL_COMBINATIONS, ids=[repr(v) for v, _ in GLOBAL_COMBINATIONS])
def test_global_apply_combinations_name_the_first_bad_input(mapping, realisid_model, faces, values, first):
    message = raises_input_error(lambda: run_apply(mapping, "RealisIDGlobalLocationApply", realisid_model, faces,
                                                   values), first)
    assert message.startswith(first)


COMPOSITE_INPUTS = ("local_strength", "global_strength", "start_percent", "end_percent", "feather")
COMPOSITE_PAIRS = [(dict(zip(pair, (NAN, INF), strict=True)), pair[0])
                   for pair in itertools.combinations(COMPOSITE_INPUTS, 2)]


@pytest.mark.parametrize("values,first", COMPOSITE_PAIRS, ids=[repr(v) for v, _ in COMPOSITE_PAIRS])
def test_composite_pairs_of_bad_numbers_name_the_first(mapping, realisid_model, faces, values, first):
    message = raises_input_error(lambda: run_apply(mapping, "RealisIDMultiFaceComposite", realisid_model, faces,
                                                   values), first)
    assert message.startswith(first)


CROSS_COMBINATIONS = [
    ("nan-positive+nan-strength", {"positive": nan_conditioning}, {"local_strength": NAN}, "positive"),
    ("empty-negative+bad-crop", {"negative": lambda: []}, {"crop_size": 12}, "negative"),
    ("nan-positive+nan-negative", {"positive": nan_conditioning, "negative": nan_conditioning}, {}, "positive"),
    ("nan-feather+bad-crop", {}, {"feather": NAN, "crop_size": 12}, "crop_size"),  # crop_size comes first
    ("reversed-range+nan-feather", {}, {"start_percent": 0.9, "end_percent": 0.1, "feather": NAN}, "feather"),
    ("inf-global+reversed-range", {}, {"global_strength": INF, "start_percent": 0.9, "end_percent": 0.1},
     "global_strength"),
]


@pytest.mark.parametrize("case,conds,values,first", CROSS_COMBINATIONS, ids=[c[0] for c in CROSS_COMBINATIONS])
def test_composite_cross_input_combinations_name_the_first(mapping, realisid_model, faces, case, conds, values,
                                                            first):
    made = {name: make() for name, make in conds.items()}
    message = raises_input_error(lambda: run_apply(mapping, "RealisIDMultiFaceComposite", realisid_model, faces,
                                                   values, **made), first)
    assert message.startswith(first)


def test_a_face_count_mismatch_is_named_before_bad_numbers(mapping, realisid_model, faces):
    two = run_numbers(mapping, {"x": 0.7}, previous=run_numbers(mapping, {})[0])[0]
    with pytest.raises(LayoutError, match="places 2"):
        run_apply(mapping, "RealisIDMultiFaceComposite", realisid_model, faces, {"local_strength": NAN}, layout=two)


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


def _layout_chain(layout_node: dict) -> dict:
    return {"1": layout_node, "2": node("RealisIDLayoutPreview", layout=["1", 0]),
            "3": node("SaveImage", images=["2", 0], filename_prefix="bad")}


@pytest.mark.parametrize("name", NUMBERS_INPUTS)
def test_executor_names_a_nan_layout_number(run_prompt, name):
    prompt = _layout_chain(node("RealisIDLayoutFromNumbers", **{**GOOD_NUMBERS, name: NAN}))
    with pytest.raises(PromptError, match=rf"node 1 \(RealisIDLayoutFromNumbers\).*{name} must be a finite"):
        run_prompt(prompt)


def test_executor_names_a_nan_mask(run_prompt):
    prompt = _layout_chain(node("RealisIDLayoutFromMask", mask=["9", 0], expand=1.0))
    prompt["9"] = node("SolidMask", value=NAN, width=64, height=64)
    with pytest.raises(PromptError, match=r"node 1 \(RealisIDLayoutFromMask\).*mask holds NaN"):
        run_prompt(prompt)


def test_executor_runs_a_prompt_that_still_gives_the_layout_a_size(run_prompt):
    """API prompts saved before the layouts dropped width/height still run: the extra inputs are ignored."""
    prompt = _layout_chain(node("RealisIDLayoutFromNumbers", width=1024, height=768, **GOOD_NUMBERS))
    assert run_prompt(prompt).outputs["3"]["images"]


def test_executor_names_a_nan_apply_strength(run_prompt):
    prompt = {"1": node("CheckpointLoaderSimple", ckpt_name="tiny_sdxl.safetensors"),
              "2": node("CLIPTextEncode", text="a photo", clip=["1", 1]),
              "3": node("RealisIDModelLoader", model_name="tiny_realisid_sdxl.safetensors"),
              "4": node("LoadImage", image="astronaut.jpg"),
              "5": node("RealisIDFaceAnalysis", backend=EMBEDDED, provider="CPU"),
              "6": node("CLIPVisionLoader", clip_name="tiny_clip_vision.safetensors"),
              "7": node("RealisIDFaceEncoder", image=["4", 0], face_analysis=["5", 0], realisid_model=["3", 0],
                        selection="largest", index=0, on_no_face="error", references=ONE_PER_IMAGE,
                        clip_vision=["6", 0]),
              "8": node("RealisIDLayoutFromNumbers", **GOOD_NUMBERS),
              "9": node("RealisIDLocalBranchApply", positive=["2", 0], negative=["2", 0], realisid_model=["3", 0],
                        faces=["7", 0], layout=["8", 0], strength=NAN, start_percent=0.0, end_percent=1.0,
                        crop_size=0, feather=0.0),
              "10": node("RealisIDGuider", model=["1", 0], positive=["9", 0], negative=["9", 1], **GOOD_GUIDER),
              "11": node("KSamplerSelect", sampler_name="euler"),
              "12": node("BasicScheduler", model=["1", 0], scheduler="normal", steps=1, denoise=1.0),
              "13": node("RandomNoise", noise_seed=1),
              "14": node("EmptyLatentImage", width=64, height=64, batch_size=1),
              "15": node("SamplerCustomAdvanced", noise=["13", 0], guider=["10", 0], sampler=["11", 0],
                         sigmas=["12", 0], latent_image=["14", 0]),
              "16": node("SaveLatent", samples=["15", 0], filename_prefix="x")}
    with pytest.raises(PromptError, match=r"node 9 \(RealisIDLocalBranchApply\).*strength must be a finite"):
        run_prompt(prompt)


# ------------------------------------------------------------------------------------------------ Guider ------
@pytest.mark.parametrize("case,make,fragment", BAD_CONDITIONINGS, ids=[c[0] for c in BAD_CONDITIONINGS])
@pytest.mark.parametrize("name", ["positive", "negative"])
def test_guider_refuses_bad_conditioning(mapping, base, name, case, make, fragment):
    """NaN text tokens into the guider gave an all-NaN latent and a run reported as a success."""
    positive, negative = T.tiny_conditioning("sdxl")
    conds = {"positive": positive, "negative": negative, name: make()}
    message = raises_input_error(lambda: mapping["RealisIDGuider"].execute(base, **conds, **GOOD_GUIDER), fragment)
    assert message.startswith(name)


GUIDER_CROSS = [("nan-positive+nan-text_scale", {"positive": nan_conditioning}, {"text_scale": NAN}, "positive"),
                ("nan-negative+inf-id_scale", {"negative": nan_conditioning}, {"id_scale": INF}, "negative"),
                ("both-nan", {"positive": nan_conditioning, "negative": nan_conditioning}, {}, "positive"),
                ("empty-negative+nan-delay", {"negative": lambda: []}, {"id_delay": NAN}, "negative")]


@pytest.mark.parametrize("case,conds,values,first", GUIDER_CROSS, ids=[c[0] for c in GUIDER_CROSS])
def test_guider_cross_input_combinations_name_the_first(mapping, base, case, conds, values, first):
    positive, negative = T.tiny_conditioning("sdxl")
    made = {"positive": positive, "negative": negative, **{name: make() for name, make in conds.items()}}
    message = raises_input_error(lambda: mapping["RealisIDGuider"].execute(base, **made,
                                                                           **{**GOOD_GUIDER, **values}), first)
    assert message.startswith(first)


# ---------------------------------------------------------- another pack's object on a RealisID socket ------
# ComfyUI checks custom socket types by name only, so any pack can send any object to a REALISID_* input (or
# the wrong RealisID object: a RealisID checkpoint into InstantID's socket). Each is refused by input name.
def nan_layout():
    return layout_of((0.5, NAN, 0.3))


class NotAnAnalyzer:
    analyze = None  # an attribute of that name that cannot be called


def wiring_call(mapping, analyzer, realisid_model, instantid_model, clip_vision, base, faces, case):
    """The node call for wiring `case` (WIRING_CASES gives the input its message must start with)."""
    good = run_numbers(mapping, {})[0]
    photo = astronaut_image()
    calls = {
        "encoder-analysis-string": lambda: encode(mapping, "embedded", realisid_model, clip_vision, photo),
        "encoder-analysis-no-analyze": lambda: encode(mapping, NotAnAnalyzer(), realisid_model, clip_vision, photo),
        "encoder-model-string": lambda: encode(mapping, analyzer, "model.safetensors", clip_vision, photo),
        "encoder-model-none": lambda: encode(mapping, analyzer, None, clip_vision, photo),
        "encoder-clip-vision-string": lambda: encode(mapping, analyzer, realisid_model, "clip.safetensors", photo),
        "encoder-clip-vision-is-model": lambda: encode(mapping, analyzer, realisid_model, realisid_model, photo),
        "photo-analysis-none": lambda: mapping["RealisIDLayoutFromPhoto"].execute(photo, None, 1.0, True),
        "drivers-layout-string": lambda: mapping["RealisIDLayoutDrivers"].execute("layout", photo, analyzer),
        "drivers-layout-nan": lambda: mapping["RealisIDLayoutDrivers"].execute(nan_layout(), photo, analyzer),
        "drivers-analysis-int": lambda: mapping["RealisIDLayoutDrivers"].execute(good, photo, 3),
        "numbers-previous-list": lambda: run_numbers(mapping, {}, previous=[good]),
        "numbers-previous-nan": lambda: run_numbers(mapping, {}, previous=nan_layout()),
        "preview-layout-none": lambda: mapping["RealisIDLayoutPreview"].execute(None, None, None),
        "preview-layout-dict": lambda: mapping["RealisIDLayoutPreview"].execute({"x": 0.5}, None, None),
        "preview-faces-string": lambda: mapping["RealisIDLayoutPreview"].execute(good, None, "person"),
        "preview-faces-of-ints": lambda: mapping["RealisIDLayoutPreview"].execute(good, None, (1,)),
        "combine-faces-of-none": lambda: mapping["RealisIDFacesCombine"].execute(faces, (None,)),
        "attention-instantid-is-realisid": lambda: run_attention(mapping, base, realisid_model, {}, faces),
        "attention-instantid-string": lambda: run_attention(mapping, base, "instantid", {}, faces),
        "attention-model-string": lambda: mapping["RealisIDInstantIDAttention"].execute(
            "sdxl", instantid_model, faces, good, **GOOD_ATTENTION),
        "attention-faces-int": lambda: mapping["RealisIDInstantIDAttention"].execute(
            base, instantid_model, 2, good, **GOOD_ATTENTION),
        "attention-layout-string": lambda: mapping["RealisIDInstantIDAttention"].execute(
            base, instantid_model, faces, "layout", **GOOD_ATTENTION),
        "attention-layout-nan": lambda: mapping["RealisIDInstantIDAttention"].execute(
            base, instantid_model, faces, nan_layout(), **GOOD_ATTENTION),
        "guider-model-string": lambda: mapping["RealisIDGuider"].execute("model", *T.tiny_conditioning("sdxl"),
                                                                         **GOOD_GUIDER),
    }
    for node_id in APPLY_NODES:
        calls[f"{node_id}-model-string"] = lambda n=node_id: run_apply(mapping, n, "realisid.safetensors", faces)
        calls[f"{node_id}-faces-int"] = lambda n=node_id: run_apply(mapping, n, realisid_model, 1)
        calls[f"{node_id}-faces-of-tensors"] = lambda n=node_id: run_apply(mapping, n, realisid_model,
                                                                           (torch.zeros(3),))
        calls[f"{node_id}-layout-nan"] = lambda n=node_id: run_apply(mapping, n, realisid_model, faces,
                                                                     layout=nan_layout())
    return calls[case]


WIRING_CASES = [
    ("encoder-analysis-string", "face_analysis must come from RealisID Face Analysis"),
    ("encoder-analysis-no-analyze", "face_analysis must come from RealisID Face Analysis"),
    ("encoder-model-string", "realisid_model must come from RealisID Model Loader"),
    ("encoder-model-none", "realisid_model must come from"),
    ("encoder-clip-vision-string", "clip_vision must come from Load CLIP Vision, got str"),
    ("encoder-clip-vision-is-model", "clip_vision must come from Load CLIP Vision, got RealisIDModel"),
    ("photo-analysis-none", "face_analysis must come from"),
    ("drivers-layout-string", "layout must come from a RealisID Face Layout node, got str"),
    ("drivers-layout-nan", "layout: box 0 has non-finite"),
    ("drivers-analysis-int", "face_analysis must come from"),
    ("numbers-previous-list", "previous must come from a RealisID Face Layout node, got list"),
    ("numbers-previous-nan", "previous: box 0 has non-finite"),
    ("preview-layout-none", "layout must come from a RealisID Face Layout node, got NoneType"),
    ("preview-layout-dict", "layout must come from"),
    ("preview-faces-string", "faces must be the faces output of RealisID Face Encoder, got str"),
    ("preview-faces-of-ints", "faces: person 0 is a int"),
    ("combine-faces-of-none", "faces_2: person 0 is a NoneType"),
    ("attention-instantid-is-realisid", "instantid must come from RealisID InstantID Loader or be a RealisID model trained with --ip-adapter, got a RealisID checkpoint without an IP-Adapter"),
    ("attention-instantid-string", "instantid must come from RealisID InstantID Loader or be a RealisID model trained with --ip-adapter, got a str"),
    ("attention-model-string", "model must come from a checkpoint loader"),
    ("attention-faces-int", "faces must be the faces output"),
    ("attention-layout-string", "layout must come from"),
    ("attention-layout-nan", "layout: box 0 has non-finite"),
    ("guider-model-string", "model must come from a checkpoint loader"),
    *[case for node_id in APPLY_NODES for case in (
        (f"{node_id}-model-string", "realisid_model must come from RealisID Model Loader"),
        (f"{node_id}-faces-int", "faces must be the faces output of RealisID Face Encoder, got int"),
        (f"{node_id}-faces-of-tensors", "faces: person 0 is a Tensor"),
        (f"{node_id}-layout-nan", "layout: box 0 has non-finite"))],
]


@pytest.mark.parametrize("case,fragment", WIRING_CASES, ids=[c[0] for c in WIRING_CASES])
def test_foreign_objects_on_realisid_sockets_are_named(mapping, analyzer, realisid_model, instantid_model,
                                                       clip_vision, base, faces, case, fragment):
    call = wiring_call(mapping, analyzer, realisid_model, instantid_model, clip_vision, base, faces, case)
    assert raises_input_error(call, fragment).startswith(fragment.split()[0].rstrip(":"))


def test_face_index_past_the_faces_found_is_named(mapping, analyzer, realisid_model, clip_vision):
    """selection 'index' with index 3 on a photo of one face: the error names the index input and the count."""
    def run():
        mapping["RealisIDFaceEncoder"].execute(astronaut_image(), analyzer, realisid_model, "index", 3, "error",
                                               ONE_PER_IMAGE, clip_vision)
    raises_input_error(run, "index 3", "has only 1 face(s)")
    faces, _ = mapping["RealisIDFaceEncoder"].execute(astronaut_image(), analyzer, realisid_model, "index", 0,
                                                      "error", ONE_PER_IMAGE, clip_vision)
    assert len(faces) == 1  # index 0 of the same photo is the one face


def test_layout_check_does_not_copy_or_change_the_layout(mapping):
    """The drivers node returns a new layout; the incoming one is left as it was (layouts are shared values)."""
    layout = run_numbers(mapping, {})[0]
    before = layout.slots
    out = mapping["RealisIDLayoutDrivers"].execute(layout, astronaut_image(),
                                                   mapping["RealisIDFaceAnalysis"].execute(EMBEDDED, "CPU")[0])[0]
    assert layout.slots is before and out.slots[0].driver is not None and layout.slots[0].driver is None


WIRING_COMBINATIONS = [
    ("image-empty+analysis-string", lambda m, a, r, c, f: encode(m, "x", r, c, torch.zeros(0, 8, 8, 3)), "image"),
    ("analysis-string+model-none", lambda m, a, r, c, f: encode(m, "x", None, c, astronaut_image()),
     "face_analysis"),
    ("model-none+clip-string", lambda m, a, r, c, f: encode(m, a, None, "clip", astronaut_image()),
     "realisid_model"),
    ("drivers-layout-string+image-empty",
     lambda m, a, r, c, f: m["RealisIDLayoutDrivers"].execute("x", torch.zeros(0, 8, 8, 3), a), "layout"),
    ("drivers-image-nan+analysis-int", lambda m, a, r, c, f: m["RealisIDLayoutDrivers"].execute(
        run_numbers(m, {})[0], nan_image(), 3), "image"),
    ("photo-analysis-none+expand-nan",
     lambda m, a, r, c, f: m["RealisIDLayoutFromPhoto"].execute(astronaut_image(), None, NAN, True),
     "face_analysis"),
    ("preview-layout-nan+faces-string",
     lambda m, a, r, c, f: m["RealisIDLayoutPreview"].execute(nan_layout(), None, "x"), "layout"),
    ("preview-image-empty+faces-string", lambda m, a, r, c, f: m["RealisIDLayoutPreview"].execute(
        run_numbers(m, {})[0], torch.zeros(0, 8, 8, 3), "x"), "image"),
    ("apply-nan-positive+model-string", lambda m, a, r, c, f: run_apply(
        m, "RealisIDMultiFaceComposite", "x", f, positive=nan_conditioning()), "positive"),
    ("apply-model-string+faces-int", lambda m, a, r, c, f: run_apply(m, "RealisIDLocalBranchApply", "x", 2),
     "realisid_model"),
    ("apply-faces-int+layout-nan", lambda m, a, r, c, f: run_apply(
        m, "RealisIDGlobalLocationApply", r, 2, layout=nan_layout()), "faces"),
    ("apply-layout-nan+strength-nan", lambda m, a, r, c, f: run_apply(
        m, "RealisIDLocalBranchApply", r, f, {"strength": NAN}, layout=nan_layout()), "layout"),
    ("combine-both-foreign", lambda m, a, r, c, f: m["RealisIDFacesCombine"].execute((1,), "x"), "faces_1"),
]


@pytest.mark.parametrize("case,call,first", WIRING_COMBINATIONS, ids=[c[0] for c in WIRING_COMBINATIONS])
def test_wiring_fault_combinations_name_the_first_input(mapping, analyzer, realisid_model, clip_vision, faces, case,
                                                        call, first):
    message = raises_input_error(lambda: call(mapping, analyzer, realisid_model, clip_vision, faces), first)
    assert message.startswith(first)


@pytest.mark.parametrize("expand,pattern", [(NAN, r"failed: .*InputError: expand must be a finite number"),
                                            (INF, r"bigger than max of 3.0 expand"),
                                            (-INF, r"smaller than min of 0.5 expand")], ids=repr)
def test_executor_names_a_non_finite_mask_expand(run_prompt, expand, pattern):
    """NaN passes the host's min/max checks and is refused by the node; the host's own checks catch +-inf."""
    prompt = _layout_chain(node("RealisIDLayoutFromMask", mask=["9", 0], expand=expand))
    prompt["9"] = node("SolidMask", value=1.0, width=64, height=64)
    with pytest.raises(PromptError, match=r"node 1 \(RealisIDLayoutFromMask\)(.|\n)*" + pattern):
        run_prompt(prompt)
