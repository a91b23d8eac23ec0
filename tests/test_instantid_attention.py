"""Regional IP-Adapter identity: block pairing, restriction of face i to region i, gating, non-mutation.

Source of truth for the processor order: diffusers' `UNet2DConditionModel.attn_processors` walks the modules in
registration order (down_blocks, up_blocks, mid_block; attn1 then attn2 in each transformer block), so InstantID's
ip-adapter.bin numbers the cross-attentions 1, 3, 5, ... in that order (SDXL: 70 of them, 1..139, the first four
640 wide). cubiq/ComfyUI_InstantID pairs them with ComfyUI's ("input", 4|5|7|8), ("output", 0..5), ("middle", ...)
in the same order. `fake_instantid.attn2_hidden_sizes` derives that order from the UNet config independently of
the module walk tested here.
"""

import copy

import comfy.sample
import pytest
import torch

from realisid import geometry
from realisid.instantid import attention as instantid_attention
from realisid.instantid import model as instantid
from tests.helpers import fake_instantid as fi
from tests.helpers import tiny_realisid as tr

BOXES = [(0.0, 0.0, 0.5, 0.5), (0.5, 0.25, 1.0, 0.75)]


@pytest.fixture(scope="module")
def iid(tmp_path_factory):
    cn, ip = fi.write_instantid(tmp_path_factory.mktemp("iid"), tr.tiny_unet_config("sdxl"))
    return instantid.load_instantid(str(cn), str(ip), crop_size=8)


@pytest.fixture(scope="module")
def base():
    return tr.tiny_base_model("sdxl")


def _tokens(iid, seed):
    return iid.project(torch.randn(1, 512, generator=torch.Generator().manual_seed(seed)) * 20)[0]


def _patched(base, iid, seeds=(1, 2), weight=1.0, start=0.0, end=1.0):
    faces = [(_tokens(iid, s), box) for s, box in zip(seeds, BOXES, strict=False)]
    return instantid_attention.apply_regional_ip_adapter(base, iid, faces, weight, start, end)


def _replace_fn(patched, key=("input", 3, 0)):
    return patched.model_options["transformer_options"]["patches_replace"]["attn2"][key]


def _qkv(width=128, tokens=16, batch=1, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, tokens, width, generator=gen), torch.randn(batch, 5, width, generator=gen),
            torch.randn(batch, 5, width, generator=gen))


def _level1_masks(boxes) -> torch.Tensor:
    """(K, 1, 4, 4): the boxes' coverage of level 1 of an 8 x 8 latent, where a stride-2 padding-1 conv puts
    level-1 cell j at latent 2j + 0.5 (cell j spans latent [2j - 0.5, 2j + 1.5])."""
    return geometry.level_box_mask(geometry.frac_to_latent(boxes, (8, 8)), (8, 8), geometry.Level(((3, 2, 1),)))


def _extra(sigma=1.0, chunks=(0,), heads=4, shape=(1, 4, 8, 8)):
    return {"n_heads": heads, "original_shape": list(shape), "cond_or_uncond": list(chunks),
            "sigmas": torch.tensor([sigma])}


def test_blocks_are_enumerated_in_diffusers_processor_order(base, iid):
    blocks = instantid_attention.attn2_blocks(base.model.diffusion_model)
    widths = fi.attn2_hidden_sizes(tr.tiny_unet_config("sdxl"))
    assert [w for _, w in blocks] == widths
    pairs = instantid_attention.pair_blocks(base.model.diffusion_model, iid.ip_adapter)
    assert pairs == [(("input", 3, 0), 1), (("output", 0, 0), 3), (("output", 1, 0), 5), (("middle", 0, 0), 7)]


def test_sdxl_sized_unet_pairs_like_comfyui_instantid():
    """The real SDXL UNet (built on meta): 70 cross-attentions, input 4/5 (2 deep) then 7/8 (10 deep), output, mid."""
    import comfy.ldm.modules.diffusionmodules.openaimodel as openaimodel
    import comfy.ops

    cfg = dict(image_size=32, in_channels=4, out_channels=4, model_channels=320, num_res_blocks=[2, 2, 2],
               channel_mult=[1, 2, 4], transformer_depth=[0, 0, 2, 2, 10, 10], transformer_depth_middle=10,
               transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10], context_dim=2048, adm_in_channels=2816,
               num_classes="sequential", use_linear_in_transformer=True, num_head_channels=64,
               use_spatial_transformer=True, legacy=False)
    unet = openaimodel.UNetModel(**cfg, device="meta", operations=comfy.ops.disable_weight_init)
    blocks = instantid_attention.attn2_blocks(unet)
    keys = [k for k, _ in blocks]
    assert len(blocks) == 70
    assert keys[:4] == [("input", 4, 0), ("input", 4, 1), ("input", 5, 0), ("input", 5, 1)]
    assert keys[4] == ("input", 7, 0) and keys[23] == ("input", 8, 9)
    assert keys[24] == ("output", 0, 0) and keys[53] == ("output", 2, 9) and keys[59] == ("output", 5, 1)
    assert keys[60:] == [("middle", 0, i) for i in range(10)]
    assert [w for _, w in blocks] == fi.attn2_hidden_sizes(cfg)


def test_face_tokens_act_only_inside_their_region(base, iid):
    """Changing face 1's tokens changes the attention output exactly inside box 1 and nowhere else."""
    q, k, v = _qkv()
    a = _replace_fn(_patched(base, iid, seeds=(1, 2)))(q, k, v, _extra())
    b = _replace_fn(_patched(base, iid, seeds=(1, 3)))(q, k, v, _extra())
    changed = (a - b).abs().amax(dim=-1)[0].reshape(4, 4)  # input block 3 runs at latent 8 / 2 = 4 x 4
    inside = _level1_masks([BOXES[1]])[0, 0] > 0
    assert bool((changed[inside] > 1e-4).all())
    assert float(changed[~inside].abs().max()) == 0.0


def test_ip_term_equals_an_independent_reference(base, iid):
    q, k, v = _qkv(seed=3)
    fn = _replace_fn(_patched(base, iid, weight=0.7))
    out = fn(q, k, v, _extra(heads=4))
    ref = torch.nn.functional.scaled_dot_product_attention
    heads = 4

    def attn(q_, k_, v_):
        split = [t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2) for t in (q_, k_, v_)]
        return ref(*split).transpose(1, 2).reshape(q_.shape[0], q_.shape[1], -1)

    expected = attn(q, k, v)
    masks = _level1_masks(BOXES).reshape(2, 16, 1).float()
    for i, seed in enumerate((1, 2)):
        tokens = _tokens(iid, seed)[None].float()
        k_ip, v_ip = iid.ip_adapter.to_k["1"](tokens), iid.ip_adapter.to_v["1"](tokens)
        expected = expected + 0.7 * masks[i] * attn(q, k_ip, v_ip)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)


def test_uncond_rows_get_the_null_identity(base, iid):
    q, k, v = _qkv(batch=2)
    extra = _extra(chunks=(0, 1))
    a = _replace_fn(_patched(base, iid, seeds=(1, 2)))(q, k, v, extra)
    b = _replace_fn(_patched(base, iid, seeds=(4, 5)))(q, k, v, extra)
    assert not torch.allclose(a[0], b[0]) and torch.equal(a[1], b[1])


def test_identity_rows_follow_the_cond_routing(base, iid):
    """Plain CFG: the positive (cond 0) gets the faces, the negative the null tokens; a guider's routing wins."""
    from realisid.null_identity import IDENTITY_ROUTING_KEY

    fn = _replace_fn(_patched(base, iid))
    cpu = torch.device("cpu")
    assert fn._identity_rows(4, {"cond_or_uncond": [0, 1]}, cpu).tolist() == [True, True, False, False]
    routed = {"cond_or_uncond": [0, 1, 2], IDENTITY_ROUTING_KEY: {0: False, 1: False, 2: True}}
    assert fn._identity_rows(3, routed, cpu).tolist() == [False, False, True]
    assert fn._identity_rows(4, {"cond_or_uncond": [1, 0]}, cpu).tolist() == [False, False, True, True]  # not stale


def test_sigma_gate_and_zero_weight_leave_plain_attention(base, iid):
    q, k, v = _qkv()
    plain = torch.nn.functional.scaled_dot_product_attention(
        *[t.reshape(1, t.shape[1], 4, -1).transpose(1, 2) for t in (q, k, v)]).transpose(1, 2).reshape(1, 16, -1)
    gated = _patched(base, iid, start=0.5, end=1.0)  # active only below the 50 % sigma
    ms = base.get_model_object("model_sampling")
    high, low = ms.percent_to_sigma(0.1), ms.percent_to_sigma(0.9)
    torch.testing.assert_close(_replace_fn(gated)(q, k, v, _extra(sigma=high)), plain, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(_replace_fn(gated)(q, k, v, _extra(sigma=low)), plain, atol=1e-4)
    torch.testing.assert_close(_replace_fn(_patched(base, iid, weight=0.0))(q, k, v, _extra()), plain,
                               atol=1e-5, rtol=1e-4)


def test_input_model_is_not_mutated_and_sampling_changes(base, iid):
    positive, negative = tr.tiny_conditioning("sdxl")
    latent = torch.zeros(1, 4, 8, 8)

    def sample(model):
        noise = comfy.sample.prepare_noise(latent, 0)
        return comfy.sample.sample(model, noise, 2, 5.0, "euler", "normal", positive, negative, latent, seed=0)

    options_before = copy.deepcopy(base.model_options)
    wrappers_before = copy.deepcopy(base.wrappers)
    before = sample(base)
    patched = _patched(base, iid)
    with_id = sample(patched)
    after = sample(base)
    assert base.model_options == options_before and base.wrappers == wrappers_before
    assert patched is not base and torch.equal(before, after)
    assert not torch.allclose(with_id, before)


def test_an_existing_replacement_is_kept_in_the_chain(base, iid):
    calls = []

    def other(q, k, v, extra):
        calls.append(1)
        return torch.zeros_like(q)

    first = base.clone()
    first.set_model_attn2_replace(other, "input", 3, 0)
    fn = _replace_fn(_patched(first, iid, weight=0.0))
    q, k, v = _qkv()
    assert torch.equal(fn(q, k, v, _extra()), torch.zeros_like(q)) and calls == [1]


def test_mismatched_unet_is_refused(iid):
    sd15 = tr.tiny_base_model("sd15")
    with pytest.raises(ValueError, match="cross-attention layers but the IP-Adapter has .*InstantID's: SDXL 1.0"):
        instantid_attention.apply_regional_ip_adapter(sd15, iid, [(_tokens(iid, 1), BOXES[0])])


# ------------------------------------------------------------------------------------------- device cache -----
class _CountTo:
    """Counts Tensor.to calls that return a NEW tensor (a real copy; `.to` to the same device/dtype is free)."""

    def __init__(self, monkeypatch):
        self.copies = 0
        original = torch.Tensor.to

        def counting(tensor, *args, **kwargs):
            out = original(tensor, *args, **kwargs)
            self.copies += out is not tensor
            return out

        monkeypatch.setattr(torch.Tensor, "to", counting)


def test_second_call_copies_nothing_and_gives_the_same_output(base, iid, monkeypatch):
    """float64 queries force real copies of the float32 K/V (as fp16 on a GPU does): the first call makes them,
    the next reuses them, and the output equals a cold instance's and the independent float64 reference."""
    q, k, v = (t.double() for t in _qkv(seed=5, batch=2))
    extra = _extra(chunks=(0, 1))
    fn = _replace_fn(_patched(base, iid))
    cold = copy.deepcopy(fn)  # a clone starts with empty caches (what ModelPatcher.clone gives)
    assert cold._kv is None and cold._masks == {} and cold._rows == {}
    counter = _CountTo(monkeypatch)
    first = fn(q, k, v, extra)
    first_copies = counter.copies
    second = fn(q, k, v, extra)
    assert first_copies == 4 and counter.copies == first_copies  # faces K/V and null K/V, once (mask, rows: built there)
    assert torch.equal(first, second)
    torch.testing.assert_close(first, cold(q, k, v, extra), atol=0, rtol=0)
    monkeypatch.undo()
    reference = _replace_fn(_patched(base, iid))(q.float(), k.float(), v.float(), extra)  # uncached fp32 path
    torch.testing.assert_close(first.float(), reference, atol=1e-5, rtol=1e-4)


def test_kv_cache_follows_the_dtype(base, iid):
    """A call in another dtype gets K/V in that dtype (the old copies are replaced, not reused)."""
    fn = _replace_fn(_patched(base, iid))
    q, k, v = _qkv(seed=6)
    fn(q.double(), k.double(), v.double(), _extra())
    kv64 = fn._kv
    assert all(t.dtype == torch.float64 for t in kv64)
    out32 = fn(q, k, v, _extra())
    assert fn._kv_key == (torch.device("cpu"), torch.float32) and all(t.dtype == torch.float32 for t in fn._kv)
    assert fn._kv[0] is fn.k_faces  # float32 on the CPU: `.to` returns the master itself, nothing is copied
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), fn(q.double(), k.double(), v.double(), _extra()), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(fn._device_kv("cpu", torch.float64)[0], kv64[0], atol=0, rtol=0)
