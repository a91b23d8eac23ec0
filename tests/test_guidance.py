"""RealisIDGuider: Eq. 8 math, equivalence with CFG, the identity delay, batching, and no mutation of inputs."""

import collections

import comfy.cldm.cldm
import comfy.controlnet
import comfy.model_management as mm
import comfy.model_patcher
import comfy.ops
import comfy.sample
import comfy.samplers
import comfy.supported_models
import pytest
import torch

from realisid.guidance import RealisIDGuider, identity_on_sigma, three_way_combine
from realisid.null_identity import conditioning_has_identity, conditioning_without_identity

CTX = 32
UNET_CFG = dict(
    use_checkpoint=False, image_size=32, in_channels=4, out_channels=4, model_channels=64, num_res_blocks=[1, 1],
    channel_mult=[1, 2], transformer_depth=[1, 1], transformer_depth_output=[1, 1, 1, 1], transformer_depth_middle=1,
    use_spatial_transformer=True, legacy=False, adm_in_channels=None, use_linear_in_transformer=False,
    context_dim=CTX, use_temporal_attention=False, use_temporal_resblock=False,
)


class FakeIdentityControl(comfy.controlnet.ControlNet):
    """A core ControlNet whose cross-attention context is its own identity tokens (zeros = null identity)."""

    def __init__(self, control_model, id_tokens, calls, identity=True):
        super().__init__(control_model, load_device=mm.get_torch_device())
        self.id_tokens = id_tokens
        self.calls = calls  # shared by all copies: (identity, sigma, batch)
        self.identity = identity

    def copy(self):
        c = FakeIdentityControl(None, self.id_tokens, self.calls, self.identity)
        c.control_model = self.control_model
        c.control_model_wrapped = self.control_model_wrapped
        self.copy_to(c)
        return c

    def with_identity(self, enabled):
        c = self.copy()
        if not enabled:
            c.id_tokens = torch.zeros_like(self.id_tokens)
            c.identity = False
        return c

    def get_control(self, x_noisy, t, cond, batched_number, transformer_options):
        self.calls.append((self.identity, float(t[0]), x_noisy.shape[0]))
        cond = dict(cond)
        cond["crossattn_controlnet"] = self.id_tokens.expand(x_noisy.shape[0], -1, -1)
        return super().get_control(x_noisy, t, cond, batched_number, transformer_options)


def _fill(module, seed, scale=0.05):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # comfy ops skip weight init
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * scale)


@pytest.fixture(scope="module")
def tiny():
    cfg = comfy.supported_models.SD15(dict(UNET_CFG))
    cfg.unet_config.update(num_heads=-1, num_head_channels=64)
    cfg.set_inference_dtype(torch.float32, None)
    base = cfg.get_model({}, device="cpu")
    _fill(base.diffusion_model, 0)
    model = comfy.model_patcher.ModelPatcher(base, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())

    cn_cfg = {k: v for k, v in UNET_CFG.items() if k not in ("out_channels", "transformer_depth_output")}
    cnet = comfy.cldm.cldm.ControlNet(hint_channels=3, num_heads=-1, num_head_channels=64, dtype=torch.float32,
                                      device="cpu", operations=comfy.ops.disable_weight_init, **cn_cfg)
    _fill(cnet, 1, scale=0.2)
    return model, cnet


def _make_conds(cnet, calls):
    gen = torch.Generator().manual_seed(3)
    control = FakeIdentityControl(cnet, 10.0 * torch.randn(1, 4, CTX, generator=gen), calls)
    control.set_cond_hint(torch.rand(1, 3, 64, 64, generator=gen), 1.0, (0.0, 1.0))
    opts = {"control": control, "control_apply_to_uncond": False}  # what ControlNetApplyAdvanced produces
    positive = [[torch.randn(1, 7, CTX, generator=gen), dict(opts)]]
    negative = [[torch.zeros(1, 7, CTX), dict(opts)]]
    return positive, negative, control


def _sample(guider, seed=7, steps=10):
    latent = torch.zeros(1, 4, 8, 8)
    noise = comfy.sample.prepare_noise(latent, seed)
    sigmas = comfy.samplers.calculate_sigmas(guider.model_patcher.get_model_object("model_sampling"), "normal", steps)
    sampler = comfy.samplers.sampler_object("euler")
    return guider.sample(noise, latent, sampler, sigmas, disable_pbar=True, seed=seed), sigmas


def test_three_way_combine_matches_hand_reference():
    e0, et, eti = torch.tensor([1.0, -2.0]), torch.tensor([3.0, 0.5]), torch.tensor([2.0, 4.0])
    got = three_way_combine(e0, et, eti, 7.5, 5.0)
    # 1 + 7.5*2 + 5*(-1) = 11 ; -2 + 7.5*2.5 + 5*3.5 = 34.25
    assert torch.equal(got, torch.tensor([11.0, 34.25]))
    assert torch.equal(three_way_combine(e0, et, eti, 1.0, 0.0), et)


def test_identity_on_sigma_uses_step_index_of_schedule():
    sigmas = torch.linspace(10.0, 0.0, 11)
    assert identity_on_sigma(0.2, sigmas, None) == pytest.approx(8.0)  # step 2 of 10
    assert identity_on_sigma(0.25, sigmas, None) == pytest.approx(7.0)  # 2.5 rounds up to step 3
    assert identity_on_sigma(0.0, sigmas, None) == pytest.approx(10.0)
    assert identity_on_sigma(1.0, sigmas, None) == pytest.approx(0.0)


def test_identity_on_sigma_falls_back_to_percent_to_sigma(tiny):
    model, _ = tiny
    ms = model.get_model_object("model_sampling")
    assert identity_on_sigma(0.3, None, ms) == pytest.approx(float(ms.percent_to_sigma(0.3)))


def test_conditioning_without_identity_walks_chain_on_copies(tiny):
    _, cnet = tiny
    calls = []
    positive, negative, fake = _make_conds(cnet, calls)
    plain = comfy.controlnet.ControlNet(cnet, load_device=mm.get_torch_device())
    plain.set_cond_hint(torch.rand(1, 3, 64, 64), 0.5)
    plain.set_previous_controlnet(fake)  # chain: plain -> fake (identity) -> None
    positive[0][1]["control"] = plain
    negative[0][1]["control"] = plain
    memo = {}
    pos2 = conditioning_without_identity(positive, memo)
    neg2 = conditioning_without_identity(negative, memo)

    top = pos2[0][1]["control"]
    assert top is not plain and type(top) is comfy.controlnet.ControlNet and top.strength == 0.5
    assert top.cond_hint_original is plain.cond_hint_original
    assert isinstance(top.previous_controlnet, FakeIdentityControl) and top.previous_controlnet is not fake
    assert top.previous_controlnet.identity is False and not top.previous_controlnet.id_tokens.any()
    assert neg2[0][1]["control"] is top  # a shared control maps to one shared copy
    assert pos2[0][0] is positive[0][0] and pos2[0][1] is not positive[0][1]
    # inputs untouched
    assert positive[0][1]["control"] is plain and plain.previous_controlnet is fake and fake.previous_controlnet is None
    assert fake.identity is True and fake.id_tokens.abs().sum() > 0
    assert conditioning_has_identity(positive)


def test_a_chain_without_identity_is_shared_as_is(tiny):
    """A plain ControlNet carries no identity: the no-identity set keeps the very same control (so ComfyUI can still
    batch it with the positive) and every other key, on a new options dict."""
    _, cnet = tiny
    plain = comfy.controlnet.ControlNet(cnet, load_device=mm.get_torch_device())
    tokens = torch.ones(1, 4, CTX)
    conds = [[torch.ones(1, 7, CTX), {"control": plain, "cross_attn_controlnet": tokens}]]
    out = conditioning_without_identity(conds)
    assert out[0][1]["control"] is plain and out[0][1]["cross_attn_controlnet"] is tokens
    assert out[0][1] is not conds[0][1] and out[0] is not conds[0]
    assert not conditioning_has_identity(conds)


def test_with_identity_returning_self_is_rejected(tiny):
    _, cnet = tiny

    class Broken(comfy.controlnet.ControlNet):
        def with_identity(self, enabled):
            return self

    with pytest.raises(TypeError, match="must return a copy"):
        conditioning_without_identity([[torch.ones(1, 7, CTX), {"control": Broken(cnet)}]])


def test_set_scales_rejects_bad_delay(tiny):
    model, _ = tiny
    with pytest.raises(ValueError, match=r"id_delay .* \[0, 1\]"):
        RealisIDGuider(model).set_scales(7.5, 5.0, 1.5)


@pytest.mark.parametrize("with_control", [False, True])
def test_zero_id_scale_equals_plain_cfg(tiny, with_control):
    model, cnet = tiny
    positive, negative, _ = _make_conds(cnet, [])
    if with_control:  # CFG reference on the no-identity conditioning
        memo = {}  # one shared null copy, so the reference batches like the guider does
        ref_pos, ref_neg = conditioning_without_identity(positive, memo), conditioning_without_identity(negative, memo)
    else:
        positive = ref_pos = [[positive[0][0], {}]]
        negative = ref_neg = [[negative[0][0], {}]]
    guider = RealisIDGuider(model)
    guider.set_conds(positive, negative)
    guider.set_scales(text_scale=4.0, id_scale=0.0, id_delay=0.2)
    ours, _ = _sample(guider, steps=4)

    ref = comfy.samplers.CFGGuider(model)
    ref.set_conds(ref_pos, ref_neg)
    ref.set_cfg(4.0)
    expected, _ = _sample(ref, steps=4)
    assert ours.abs().max() > 0.1
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


def test_delay_batching_and_no_mutation(tiny):
    model, cnet = tiny
    calls = []
    positive, negative, control = _make_conds(cnet, calls)
    snapshot = {
        "pos": (positive[0][0].clone(), dict(positive[0][1])),
        "neg": (negative[0][0].clone(), dict(negative[0][1])),
        "tokens": control.id_tokens.clone(),
        "hint": control.cond_hint_original.clone(),
        "state": (control.previous_controlnet, control.timestep_range, control.cond_hint, control.strength),
    }
    pos_objs = (positive[0][0], positive[0][1])

    steps_log = []  # (sigma, cond_or_uncond, per-chunk outputs)

    def wrapper(apply_model, args):
        out = apply_model(args["input"], args["timestep"], **args["c"])
        steps_log.append((float(args["timestep"][0]), list(args["cond_or_uncond"]), out.chunk(len(args["cond_or_uncond"]))))
        return out

    patched = model.clone()
    patched.set_model_unet_function_wrapper(wrapper)
    guider = RealisIDGuider(patched)
    guider.set_conds(positive, negative)
    guider.set_scales(text_scale=7.5, id_scale=5.0, id_delay=0.2)
    _, sigmas = _sample(guider, steps=10)
    step_of = {round(float(s), 5): i for i, s in enumerate(sigmas[:-1])}

    # (3) identity prediction from step 2 onward, null identity at every step
    id_steps = sorted({step_of[round(s, 5)] for ident, s, _ in calls if ident})
    null_steps = sorted({step_of[round(s, 5)] for ident, s, _ in calls if not ident})
    assert id_steps == list(range(2, 10))
    assert null_steps == list(range(10))

    # (4) two predictions per step during the delay, three afterwards; negative + text share one forward
    per_step = collections.defaultdict(list)
    calls_per_step = collections.Counter()
    for sigma, cou, _ in steps_log:
        per_step[step_of[round(sigma, 5)]] += cou
        calls_per_step[step_of[round(sigma, 5)]] += 1
    assert {i: sorted(v) for i, v in per_step.items()} == {i: [0, 1] if i < 2 else [0, 1, 2] for i in range(10)}
    assert [calls_per_step[i] for i in range(10)] == [1, 1] + [2] * 8

    # (6) the null-identity copy changes the prediction: text-only vs text+identity at the same step
    preds = {}
    for sigma, cou, chunks in steps_log:
        if step_of[round(sigma, 5)] == 5:
            preds.update(zip(cou, chunks, strict=True))
    assert (preds[2] - preds[0]).abs().max() > 1e-3  # cond 2 = text (null identity), cond 0 = text + identity

    # (5) inputs unchanged: same objects, same values, same control state
    assert (positive[0][0], positive[0][1]) == pos_objs
    for key, conds in (("pos", positive), ("neg", negative)):
        tensor, opts = snapshot[key]
        assert torch.equal(conds[0][0], tensor)
        assert conds[0][1] == opts and conds[0][1]["control"] is control
    assert torch.equal(control.id_tokens, snapshot["tokens"]) and control.identity is True
    assert torch.equal(control.cond_hint_original, snapshot["hint"])
    assert (control.previous_controlnet, control.timestep_range, control.cond_hint, control.strength) == snapshot["state"]
    assert "model_function_wrapper" not in model.model_options


def test_full_guidance_equals_eq8_on_captured_predictions(tiny):
    """One step of the guider equals Eq. 8 applied to the three predictions it computed."""
    model, cnet = tiny
    positive, negative, _ = _make_conds(cnet, [])
    captured = {}

    def wrapper(apply_model, args):
        out = apply_model(args["input"], args["timestep"], **args["c"])
        captured.update(zip(args["cond_or_uncond"], out.chunk(len(args["cond_or_uncond"])), strict=True))
        return out

    patched = model.clone()
    patched.set_model_unet_function_wrapper(wrapper)
    guider = RealisIDGuider(patched)
    guider.set_conds(positive, negative)
    guider.set_scales(7.5, 5.0, 0.0)
    results = []

    def one_step(model_wrap, noise, sigmas, extra_args, callback, disable):
        x = noise * sigmas[0]
        results.append((x, model_wrap(x, sigmas[0] * x.new_ones(1), **extra_args)))
        return x

    latent = torch.zeros(1, 4, 8, 8)
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "normal", 4)
    guider.sample(torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1)), latent,
                  comfy.samplers.KSAMPLER(one_step), sigmas, disable_pbar=True, seed=1)
    (x, denoised), = results
    # EPS model: denoised = x - sigma*eps per prediction; the affine Eq. 8 commutes with that map
    # cond indices: 0 = positive (text + identity), 1 = negative, 2 = text with the null identity
    expected = three_way_combine(captured[1], captured[2], captured[0], 7.5, 5.0)
    torch.testing.assert_close(denoised, expected, atol=1e-5, rtol=1e-5)


def test_usable_with_sampler_custom_advanced_and_post_cfg(tiny):
    from comfy_extras.nodes_custom_sampler import Noise_RandomNoise, SamplerCustomAdvanced

    model, cnet = tiny
    positive, negative, _ = _make_conds(cnet, [])
    seen = []

    def post_cfg(args):
        seen.append((float(args["sigma"][0]), args["cond_scale"], args["cond_denoised"].shape))
        return args["denoised"] * 1.0

    patched = model.clone()
    patched.set_model_sampler_post_cfg_function(post_cfg)
    guider = RealisIDGuider(patched)
    guider.set_conds(positive, negative)
    guider.set_scales(6.0, 3.0, 0.5)
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "normal", 3)
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    out = SamplerCustomAdvanced.execute(Noise_RandomNoise(11), guider, comfy.samplers.sampler_object("euler"),
                                        sigmas, latent)
    node_samples = out.result[0]["samples"]

    plain = RealisIDGuider(model)
    plain.set_conds(positive, negative)
    plain.set_scales(6.0, 3.0, 0.5)
    direct, _ = _sample(plain, seed=11, steps=3)
    assert [s for s, _, _ in seen] == pytest.approx([float(s) for s in sigmas[:-1]])
    assert all(scale == 6.0 and shape == (1, 4, 8, 8) for _, scale, shape in seen)
    torch.testing.assert_close(node_samples, direct, atol=1e-5, rtol=0)


def test_legacy_apply_to_uncond_gives_negative_the_null_identity(tiny):
    model, cnet = tiny
    positive, _, control = _make_conds(cnet, [])
    positive[0][1]["control_apply_to_uncond"] = True  # what the legacy ControlNetApply node sets
    negative = [[torch.zeros(1, 7, CTX), {}]]
    guider = RealisIDGuider(model)
    guider.set_conds(positive, negative)
    neg_control = guider.original_conds["negative"][0]["control"]
    assert isinstance(neg_control, FakeIdentityControl) and neg_control.identity is False
    assert neg_control is guider.original_conds["positive_text"][0]["control"]
    assert guider.original_conds["positive"][0]["control"] is control
    assert not any(e["control_apply_to_uncond"] for k in ("positive", "positive_text") for e in guider.original_conds[k])
    assert negative[0][1] == {} and positive[0][1]["control_apply_to_uncond"] is True


def test_full_delay_never_uses_the_identity_and_equals_zero_id_scale(tiny):
    """id_delay = 1: no step ever runs the identity control, and the samples are bit-identical to li = 0."""
    model, cnet = tiny
    calls = []
    positive, negative, _ = _make_conds(cnet, calls)
    guider = RealisIDGuider(model)
    guider.set_conds(positive, negative)
    guider.set_scales(text_scale=5.0, id_scale=4.0, id_delay=1.0)
    delayed, _ = _sample(guider, steps=2)
    assert calls and not any(identity for identity, _, _ in calls)  # the null-identity copies did run
    assert len({round(s, 5) for _, s, _ in calls}) == 2  # at every step

    calls.clear()
    reference = RealisIDGuider(model)
    reference.set_conds(positive, negative)
    reference.set_scales(text_scale=5.0, id_scale=0.0, id_delay=0.0)
    no_id, _ = _sample(reference, steps=2)
    assert torch.equal(delayed, no_id)

    calls.clear()
    early = RealisIDGuider(model)
    early.set_conds(positive, negative)
    early.set_scales(text_scale=5.0, id_scale=4.0, id_delay=0.0)
    with_id, _ = _sample(early, steps=2)
    assert any(identity for identity, _, _ in calls) and not torch.allclose(with_id, no_id, atol=1e-4)


def test_realisid_control_runs_the_three_predictions_as_one_unet_batch():
    """With the real RealisIDControl the guider puts the negative's null twin back and routes identity per cond, so
    its predictions share one control object: one UNet call per step, 2 conds during the delay and 3 after it (the values: tests/test_sampling_matrix.py)."""
    from realisid.control import FaceCondition, RealisIDControl
    from realisid.null_identity import attach_with_null_twin
    from tests.helpers import tiny_realisid as T

    base, model = T.tiny_base_model("sdxl"), T.tiny_realisid_model("sdxl")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        face = FaceCondition(model.project(torch.randn(1, T.SOURCE_DIM, generator=gen))[0],
                             torch.rand(3, 32, 32, generator=gen), (0.2, 0.2, 0.7, 0.7))
    positive, negative = T.tiny_conditioning("sdxl")
    positive, negative = attach_with_null_twin(positive, negative, RealisIDControl(model, [face]))
    assert negative[0][1]["control"].identity_twin is positive[0][1]["control"]  # what the apply nodes attach

    log = []

    def wrapper(apply_model, args):
        log.append(list(args["cond_or_uncond"]))
        return apply_model(args["input"], args["timestep"], **args["c"])

    patched = base.clone()
    patched.set_model_unet_function_wrapper(wrapper)
    guider = RealisIDGuider(patched)
    guider.set_conds(positive, negative)
    guider.set_scales(text_scale=4.0, id_scale=3.0, id_delay=0.2)
    _sample(guider, steps=10)
    assert [sorted(chunks) for chunks in log] == [[0, 1]] * 2 + [[0, 1, 2]] * 8  # one UNet call per step
