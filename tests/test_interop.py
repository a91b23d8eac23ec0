"""The RealisID Guider and nodes next to the rest of ComfyUI (issue 16, interoperability): the cond order UNet
patches see, chained apply nodes keeping one UNet call per step, cfg/pre-cfg/post-cfg functions, strength 0, and
the branches' share of ComfyUI's memory estimate."""

import collections

import comfy.model_management as mm
import comfy.sample
import comfy.sampler_helpers
import comfy.samplers
import numpy as np
import pytest
import torch

from realisid import memory
from realisid.control import FaceCondition, RealisIDControl
from realisid.guidance import RealisIDGuider
from realisid.null_identity import IDENTITY_ROUTING_KEY, attach_with_null_twin
from tests.helpers import tiny_realisid as T

STEPS, DELAY, LT, LI = 5, 0.4, 4.0, 3.0  # identity on from step round(0.4 * 5) = 2


@pytest.fixture(scope="module")
def tiny():
    """A tiny base and RealisID model on which the identity VISIBLY acts, so the routing checks can fail.

    With the helpers' weights as they are (every parameter N(0, 0.02), norm layers included) the base's prediction
    is nearly blind to its conditioning: the identity moves eps by ~1e-7 and the text by ~1e-4, below what a
    batched-vs-separate comparison can tell apart. This module builds its own fresh base and gives its norm layers
    their standard init (weight 1, bias 0), and its faces carry a p_id far from the null identity: the identity
    then moves eps by about its own size. (Fresh objects: nothing shared with other test files is changed.)
    """
    base, model = T.tiny_base_model("sdxl"), T.tiny_realisid_model("sdxl")
    with torch.no_grad():
        for m in base.model.diffusion_model.modules():
            if isinstance(m, (torch.nn.GroupNorm, torch.nn.LayerNorm)) and m.weight is not None:
                m.weight.fill_(1.0)
                m.bias.zero_()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        null = model.null_identity(1)[0]
    faces = [FaceCondition(null + 10.0 * torch.randn(null.shape, generator=gen), torch.rand(3, 64, 64, generator=gen),
                           box)
             for box in ((0.1, 0.1, 0.5, 0.5), (0.5, 0.4, 0.9, 0.8))]
    return base, model, faces


def _conds(model, faces, **options):
    positive, negative = T.tiny_conditioning("sdxl")
    return attach_with_null_twin(positive, negative, RealisIDControl(model, faces, **options))


def _guider(base, positive, negative, li=LI, delay=DELAY):
    guider = RealisIDGuider(base)
    guider.set_conds(positive, negative)
    guider.set_scales(LT, li, delay)
    return guider


def _sample(guider, seed=5, steps=STEPS, batch=1):
    latent = torch.zeros(batch, 4, T.LATENT, T.LATENT)
    noise = comfy.sample.prepare_noise(latent, seed)
    sigmas = comfy.samplers.calculate_sigmas(guider.model_patcher.get_model_object("model_sampling"), "normal", steps)
    with torch.no_grad():
        return guider.sample(noise, latent, comfy.samplers.sampler_object("euler"), sigmas, disable_pbar=True,
                             seed=seed)


def _recording_unet(base, log):
    """A clone of the base whose UNet wrapper records each call's cond_or_uncond and its per-chunk outputs."""

    def wrapper(apply_model, args):
        out = apply_model(args["input"], args["timestep"], **args["c"])
        chunks = list(args["cond_or_uncond"])
        log.append((float(args["timestep"][0]), chunks, dict(zip(chunks, out.chunk(len(chunks)), strict=True))))
        return out

    patched = base.clone()
    patched.set_model_unet_function_wrapper(wrapper)
    return patched


class IPAdapterLikePatch:
    """An attn2 patch that maps chunks the way cubiq's IPAdapter_plus does: three chunks as (cond, uncond, cond),
    two as (cond, uncond), and adds its 'image identity' (a fixed offset) to the attention values of the cond rows
    only (IPAdapter adds attention over image tokens; an offset on the values moves the output as that does)."""

    def __init__(self, two_tuple_only=False):
        self.two_tuple_only = two_tuple_only  # cubiq's InstantID / PuLID: index a 2-tuple (IndexError on 2)
        self.seen = []

    def __call__(self, n, context, value, extra_options):
        chunks = extra_options["cond_or_uncond"]
        self.seen.append(list(chunks))
        cond, uncond = torch.full_like(value[:1], 0.5), torch.zeros_like(value[:1])
        table = (cond, uncond) if self.two_tuple_only or len(chunks) != 3 else (cond, uncond, cond)
        rows = value.shape[0] // len(chunks)
        offset = torch.cat([table[i].expand(rows, -1, -1) for i in chunks])
        return n, context, value + offset


def _step_of(sigma, guider_sigmas):
    return min(range(len(guider_sigmas)), key=lambda i: abs(float(guider_sigmas[i]) - sigma))


def _schedule(base, steps=STEPS):
    return comfy.samplers.calculate_sigmas(base.get_model_object("model_sampling"), "normal", steps)


# --- 1. cond order -------------------------------------------------------------------------------------------------

class _Reference(comfy.samplers.CFGGuider):
    """An independent reference: the three predictions in SEPARATE calls (none = the negative, text = the positive
    with the null identity, text_id = the positive with its identity; each its own cond 0 with the identity routed
    on or off), combined with Eq. 8 written out here, the delay counted in steps. `seen` keeps each evaluation's
    predictions."""

    def __init__(self, model_patcher, li=LI, delay=DELAY):
        super().__init__(model_patcher)
        self.li, self.delay, self.seen = li, delay, []
        self.set_cfg(LT)

    def predict_noise(self, x, timestep, model_options={}, seed=None):  # noqa: B006
        def predict(conds, identity):
            to = {**model_options.get("transformer_options", {}), IDENTITY_ROUTING_KEY: {0: identity}}
            return comfy.samplers.calc_cond_batch(self.inner_model, [conds], x, timestep,
                                                  {**model_options, "transformer_options": to})[0]

        none = predict(self.conds["negative"], False)
        text = predict(self.conds["positive"], False)
        step = _step_of(float(timestep[0]), _schedule(self.model_patcher))
        text_id = predict(self.conds["positive"], True) if step >= round(self.delay * STEPS) else text
        self.seen.append({"none": none, "text": text, "text_id": text_id})
        return none + LT * (text - none) + self.li * (text_id - text)


def _reference(base, positive, negative, **kwargs):
    reference = _Reference(base, **kwargs)
    reference.set_conds(positive, negative)
    return reference


def _gap(a, b):
    return float((a - b).abs().max())


ATOL = 1e-4  # one batched call vs separate calls, one evaluation (outputs of size ~15 at the first sigma, float32)
# 5-step samples (values up to ~300): batched vs separate rounding grows over the steps to ~1e-3 (~4e-5 relative)
SAMPLE_TOL = dict(atol=1e-3, rtol=1e-4)


def _sample_allowance(x):
    return SAMPLE_TOL["atol"] + SAMPLE_TOL["rtol"] * float(x.abs().max())


def test_the_tiny_models_make_identity_and_text_visible(tiny):
    """The premise of the routing tests below: the three predictions are far apart compared with ATOL."""
    base, model, faces = tiny
    reference = _reference(base, *_conds(model, faces), delay=0.0)
    _one_eval(reference)
    (pred,) = reference.seen
    for a, b in (("text_id", "text"), ("text", "none"), ("text_id", "none")):
        assert _gap(pred[a], pred[b]) > 100 * ATOL, (a, b, _gap(pred[a], pred[b]))


def test_cond_index_0_is_the_identity_positive_and_1_the_negative(tiny):
    """cond_or_uncond recorded inside the UNet: [0, 1] during the delay, [0, 1, 2] after it, one call per step; the
    chunk labelled 0 is the positive with its identity, 2 the positive with the null identity and 1 the negative,
    each equal to the same prediction computed in a separate call (the three are > 100 * ATOL apart)."""
    base, model, faces = tiny
    positive, negative = _conds(model, faces)
    log = []
    _sample(_guider(_recording_unet(base, log), positive, negative))
    sigmas = _schedule(base)
    by_step = collections.defaultdict(list)
    for sigma, chunks, _ in log:
        by_step[_step_of(sigma, sigmas)].append(sorted(chunks))
    assert dict(by_step) == {i: [[0, 1]] if i < 2 else [[0, 1, 2]] for i in range(STEPS)}

    _, delay_chunks, delay_outs = log[0]  # step 0, in the delay

    # past the delay (delay 0, first sigma): each label against its separately computed prediction
    log = []
    _one_eval(_guider(_recording_unet(base, log), positive, negative, delay=0.0))
    (_, chunks, outs), = log
    assert sorted(chunks) == [0, 1, 2]
    reference = _reference(base, positive, negative, delay=0.0)
    _one_eval(reference)
    (pred,) = reference.seen
    for label, name in ((0, "text_id"), (1, "none"), (2, "text")):
        torch.testing.assert_close(outs[label], pred[name], atol=ATOL, rtol=0, msg=f"chunk {label} is not {name}")

    # during the delay: 0 = the text, 1 = the negative, the same as plain CFG's (KSampler's CFGGuider) cond / uncond
    cfg_log = []
    cfg = comfy.samplers.CFGGuider(_recording_unet(base, cfg_log))
    cfg.set_conds(positive, negative)
    cfg.set_cfg(LT)
    _sample(cfg, steps=STEPS)
    first_step = {}
    for sigma, _, chunk_outs in cfg_log:  # CFG runs the positive's control and the negative's twin as separate calls
        if sigma == cfg_log[0][0]:
            first_step.update(chunk_outs)
    assert sorted(delay_chunks) == [0, 1]
    torch.testing.assert_close(delay_outs[1], first_step[1], atol=ATOL, rtol=0)  # the negative
    # CFG's cond 0 is the positive WITH the identity: the guider's delay-time 0 is the text without it
    assert _gap(delay_outs[0], first_step[0]) > 100 * ATOL


def test_ipadapter_like_patch_gives_its_identity_to_the_positives_not_the_negative(tiny):
    """An IPAdapter_plus-like patch sees 0/2 as cond and 1 as uncond: the negative's prediction must stay
    untouched by it (with the old [negative, text, text+id] order the negative was chunk 0 and got the identity).
    Chunk 1 under the patch is checked against the negative predicted in a separate call without the patch, so a
    guider putting another prediction at 1 fails, whatever the patch does by label."""
    base, model, faces = tiny
    positive, negative = _conds(model, faces)

    def predictions(patch):
        log = []
        patched = _recording_unet(base, log)
        if patch is not None:
            patched.set_model_attn2_patch(patch)
        _one_eval(_guider(patched, positive, negative, delay=0.0))
        (_, chunks, outs), = log
        return chunks, outs

    patch = IPAdapterLikePatch()
    chunks, with_patch = predictions(patch)
    _, without = predictions(None)
    assert sorted(chunks) == [0, 1, 2] and patch.seen and all(sorted(c) == [0, 1, 2] for c in patch.seen)
    torch.testing.assert_close(with_patch[1], without[1], atol=1e-6, rtol=0)  # negative: no IP identity
    assert _gap(with_patch[0], without[0]) > 100 * ATOL  # positive: IP identity
    assert _gap(with_patch[2], without[2]) > 100 * ATOL  # text: IP identity too (IPAdapter's (c, u, c) rule)

    reference = _reference(base, positive, negative, delay=0.0)
    _one_eval(reference)
    (pred,) = reference.seen
    torch.testing.assert_close(with_patch[1], pred["none"], atol=ATOL, rtol=0)  # 1 IS the negative


def test_two_tuple_patch_runs_during_the_delay_and_with_id_scale_0(tiny):
    """Patches that index a 2-tuple (cubiq's InstantID, PuLID) only ever see 0 and 1 when the guider runs the text
    pair: during the delay and with id_scale 0 (index 2 is the extra cond, as in PerpNeg; see the README)."""
    base, model, faces = tiny
    positive, negative = _conds(model, faces)
    patch = IPAdapterLikePatch(two_tuple_only=True)
    patched = base.clone()
    patched.set_model_attn2_patch(patch)
    out = _sample(_guider(patched, positive, negative, li=0.0))
    assert torch.isfinite(out).all() and patch.seen and all(sorted(c) == [0, 1] for c in patch.seen)
    with pytest.raises(IndexError):  # past the delay the extra cond 2 appears: documented, not silently wrong
        _sample(_guider(patched, positive, negative, delay=0.0))


def test_guidance_maths_unchanged_against_an_independent_reference(tiny):
    """Seeded samples equal the independent reference (separate calls, Eq. 8 written out, the delay counted in
    steps): the previous guider's result, by a different route. The identity term moves the samples by far more
    than the tolerance, so a guider with the identity on the wrong prediction fails."""
    base, model, faces = tiny
    positive, negative = _conds(model, faces)
    expected = _sample(_reference(base, positive, negative), steps=STEPS)
    got = _sample(_guider(base, positive, negative), steps=STEPS)
    without_id = _sample(_guider(base, positive, negative, li=0.0))
    torch.testing.assert_close(without_id, _sample(_reference(base, positive, negative, li=0.0)), **SAMPLE_TOL)
    assert _gap(got, without_id) > 30 * _sample_allowance(got)  # the identity term acts, far beyond the tolerance
    torch.testing.assert_close(got, expected, **SAMPLE_TOL)


def _one_eval(guider, seed=1):
    """One guider evaluation at the first sigma (a one-step sampler); returns (x, sigma, denoised)."""
    results = []

    def one_step(model_wrap, noise, sigmas, extra_args, callback, disable):
        x = noise  # KSAMPLER has already scaled the noise to sigmas[0]
        results.append((x, sigmas[0], model_wrap(x, sigmas[0] * x.new_ones(1), **extra_args)))
        return x

    latent = torch.zeros(1, 4, T.LATENT, T.LATENT)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        guider.sample(noise, latent, comfy.samplers.KSAMPLER(one_step), _schedule(guider.model_patcher),
                      disable_pbar=True, seed=seed)
    return results[0]


# --- 2. chained apply nodes ----------------------------------------------------------------------------------------

def _encoded_faces(model, n=1):
    from realisid.faces import FaceRecord
    from realisid.identity_sources import EncodedFace

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        x0, y0 = 40 + 120 * i, 50
        angles = np.linspace(0, 2 * np.pi, 68, endpoint=False)
        ring = np.stack([x0 + 50 + 40 * np.cos(angles), y0 + 50 + 45 * np.sin(angles)], 1)
        kps = np.array([[x0 + 30, y0 + 40], [x0 + 70, y0 + 40], [x0 + 50, y0 + 60], [x0 + 35, y0 + 80],
                        [x0 + 65, y0 + 80]], np.float32)
        record = FaceRecord(box=(x0, y0, x0 + 100, y0 + 100), score=1.0, kps=kps, landmarks68=ring,
                            image_size=(400, 300))
        out.append(EncodedFace(record, torch.from_numpy(rng.standard_normal((1, T.SOURCE_DIM)).astype(np.float32)),
                               model.identity_space))
    return out


@pytest.fixture
def mapping(pack_node_ids):
    import nodes

    return nodes.NODE_CLASS_MAPPINGS


def test_local_then_global_chain_keeps_one_unet_call_per_step(tiny, mapping):
    """workflows/api/realisid_small_face.json: Local Branch Apply -> Global Location Apply -> RealisID Guider. The
    negative's chain is the null twin of the positive's, link by link, so the guider still runs ONE UNet call per
    step, and the result equals the guider on the unpaired chains (2 calls per step)."""
    base, model, _ = tiny
    faces, layout = _encoded_faces(model), mapping["RealisIDLayoutFromNumbers"].execute(0.5, 0.4, 0.5)[0]
    positive, negative = T.tiny_conditioning("sdxl")
    local = mapping["RealisIDLocalBranchApply"].execute(positive, negative, model, faces, layout, 1.0, 0.0, 1.0, 0, 0.0)
    chained = mapping["RealisIDGlobalLocationApply"].execute(local[0], local[1], model, faces, layout, 1.0, 0.0, 1.0,
                                                             "per_person")
    pos, neg = chained[0], chained[1]
    top_pos, top_neg = pos[0][1]["control"], neg[0][1]["control"]
    assert top_neg.identity_twin is top_pos and not top_neg.identity_enabled
    assert top_neg.previous_controlnet is local[1][0][1]["control"]  # the negative keeps its own null chain
    assert top_pos.previous_controlnet is local[0][0][1]["control"]

    log = []
    paired = _sample(mapping["RealisIDGuider"].execute(_recording_unet(base, log), pos, neg, LT, LI, DELAY)[0])
    assert len(log) == STEPS

    # the same chains without the pairing (what copy() used to give): two calls per step, same samples
    unpaired_neg = [[neg[0][0], {**neg[0][1], "control": _unpaired(top_neg)}]]
    log.clear()
    unpaired = _sample(_guider(_recording_unet(base, log), pos, unpaired_neg))
    assert len(log) == 2 * STEPS  # the negative's own control object: a UNet call of its own every step
    torch.testing.assert_close(paired, unpaired, **SAMPLE_TOL)


def _unpaired(control):
    c = control.copy()
    c.identity_twin = None
    c.set_previous_controlnet(control.previous_controlnet)
    return c


def test_copy_keeps_the_twin_pairing(tiny):
    _, model, faces = tiny
    control = RealisIDControl(model, faces)
    twin = control.with_identity(False)
    assert twin.copy().identity_twin is control and not twin.copy().identity_enabled


# --- 3. cfg / pre-cfg / post-cfg functions -------------------------------------------------------------------------

def _rescale_cfg(base, multiplier=0.7):
    from comfy_extras.nodes_model_advanced import RescaleCFG

    return RescaleCFG().patch(base, multiplier)[0]


def test_cfg_function_sees_the_text_pair_and_equals_core_cfg_at_id_scale_0(tiny):
    """With RescaleCFG and id_scale 0 the guider equals ComfyUI's CFGGuider on (positive with the null identity,
    negative): the cfg function sees the text pair, exactly as under core CFG."""
    base, model, faces = tiny
    positive, negative = _conds(model, faces)
    rescaled = _rescale_cfg(base)
    ours = _sample(_guider(rescaled, positive, negative, li=0.0))
    null_positive = [[positive[0][0], {**positive[0][1], "control": negative[0][1]["control"]}]]
    reference = comfy.samplers.CFGGuider(rescaled)
    reference.set_conds(null_positive, negative)
    reference.set_cfg(LT)
    expected = _sample(reference)
    assert (ours - _sample(_guider(base, positive, negative, li=0.0))).abs().max() > 1e-4  # RescaleCFG acted
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def test_cfg_pre_and_post_functions_see_what_the_docstring_says(tiny):
    """Past the delay: pre-cfg and cfg functions get the text pair (cond = text, uncond = negative, text_scale);
    the identity term is added to the cfg result on the raw predictions; post-cfg sees the whole result, the
    identity positive as cond_denoised and the negative as uncond_denoised."""
    base, model, faces = tiny
    positive, negative = _conds(model, faces)
    seen = {}

    def pre_cfg(args):
        seen["pre"] = [t.clone() for t in args["conds_out"]], args["cond_scale"], len(args["conds"])
        return [args["conds_out"][0] * 1.1, args["conds_out"][1]]  # changes the text term only

    def post_cfg(args):
        seen["post"] = args["denoised"].clone(), args["cond_denoised"].clone(), args["uncond_denoised"].clone()
        return args["denoised"]

    log = []
    patched = _rescale_cfg(_recording_unet(base, log))
    patched.set_model_sampler_pre_cfg_function(pre_cfg)
    patched.set_model_sampler_post_cfg_function(post_cfg)
    cfg_args = []
    rescale = patched.model_options["sampler_cfg_function"]
    patched.model_options["sampler_cfg_function"] = lambda args: cfg_args.append(args) or rescale(args)

    x, sigma, denoised = _one_eval(_guider(patched, positive, negative, delay=0.0))
    (_, _, outs), = log
    pre_outs, pre_scale, pre_n = seen["pre"]
    torch.testing.assert_close(pre_outs[0], outs[2])
    torch.testing.assert_close(pre_outs[1], outs[1])
    assert pre_scale == LT and pre_n == 2
    (args,), = [cfg_args]
    torch.testing.assert_close(args["cond_denoised"], outs[2] * 1.1)  # after pre-cfg
    torch.testing.assert_close(args["uncond_denoised"], outs[1])
    assert args["cond_scale"] == LT

    # the expected result, with ComfyUI's RescaleCFG called here on the text pair, plus the identity term
    text_term = x - rescale({**args, "cond": x - outs[2] * 1.1, "uncond": x - outs[1]})
    expected = text_term + LI * (outs[0] - outs[2])
    torch.testing.assert_close(denoised, expected, atol=1e-5, rtol=1e-5)
    post_denoised, post_cond, post_uncond = seen["post"]
    torch.testing.assert_close(post_denoised, denoised)
    torch.testing.assert_close(post_cond, outs[0])
    torch.testing.assert_close(post_uncond, outs[1])


# --- 4. strength 0 -------------------------------------------------------------------------------------------------

def _snapshot(conditioning) -> list:
    """Every entry's tensor and options, copied (repr would print only a tensor's corners)."""
    def copy(v):
        return v.clone() if torch.is_tensor(v) else v
    return [(c[0].clone(), {k: copy(v) for k, v in c[1].items()}) for c in conditioning]


def _same(a: list, b: list) -> bool:
    def equal(u, v):
        return torch.is_tensor(u) and torch.is_tensor(v) and torch.equal(u, v) or (not torch.is_tensor(u) and u is v)
    return len(a) == len(b) and all(torch.equal(x[0], y[0]) and x[1].keys() == y[1].keys()
                                    and all(equal(x[1][k], y[1][k]) for k in x[1]) for x, y in zip(a, b, strict=False))


def test_strength_zero_returns_the_inputs_themselves(tiny, mapping):
    _, model, _ = tiny
    faces, layout = _encoded_faces(model), mapping["RealisIDLayoutFromNumbers"].execute(0.5, 0.4, 0.5)[0]
    positive, negative = T.tiny_conditioning("sdxl")
    before = _snapshot(positive), _snapshot(negative)
    local = mapping["RealisIDLocalBranchApply"].execute(positive, negative, model, faces, layout, 0.0, 0.0, 1.0, 0,
                                                        0.0)
    glob = mapping["RealisIDGlobalLocationApply"].execute(positive, negative, model, faces, layout, 0.0, 0.0, 1.0,
                                                          "per_person")
    comp = mapping["RealisIDMultiFaceComposite"].execute(positive, negative, model, faces, layout, 0.0, 0.0, 0.0,
                                                         1.0, 0, "per_person", 0.0)
    for out in (local, glob, comp):
        assert out[0] is positive and out[1] is negative
    assert comp[2].ndim == 4 and comp[2].shape[0] == 1 and comp[2].shape[-1] == 3  # the mapping preview, an IMAGE
    assert _same(_snapshot(positive), before[0]) and _same(_snapshot(negative), before[1])
    assert "control" not in positive[0][1]

    # a composite with one branch at 0 does not run that branch
    only_global = mapping["RealisIDMultiFaceComposite"].execute(positive, negative, model, faces, layout, 0.0, 1.0,
                                                                0.0, 1.0, 0, "per_person", 0.0)
    options = only_global[0][0][1]["control"].options
    assert options["use_local"] is False and options["use_global"] is True
    # and a non-zero strength still attaches the control
    assert mapping["RealisIDLocalBranchApply"].execute(positive, negative, model, faces, layout, 0.5, 0.0, 1.0, 0,
                                                       0.0)[0] is not positive


# --- 5. memory estimate --------------------------------------------------------------------------------------------

def _faces(k):
    gen = torch.Generator().manual_seed(k)
    return [FaceCondition(torch.randn(4, T.CONTEXT_DIM, generator=gen), torch.rand(3, 64, 64, generator=gen),
                          (0.1 * i % 0.5, 0.1, 0.1 * i % 0.5 + 0.4, 0.5)) for i in range(k)]


def test_memory_estimate_grows_with_faces_batch_and_predictions(tiny):
    _, model, _ = tiny
    dtype = torch.float32

    def estimate(k, shape=None, **options):
        control = RealisIDControl(model, _faces(k), **options)
        if shape is None:
            return control.inference_memory_requirements(dtype)
        with memory.sampling_context(*shape):
            return control.inference_memory_requirements(dtype)

    by_k = [estimate(k, ((1, 4, 32, 32), 3)) for k in (1, 2, 4, 8)]
    assert all(a < b for a, b in zip(by_k, by_k[1:], strict=False))
    assert estimate(4, ((2, 4, 32, 32), 3)) > by_k[2] > estimate(4, ((1, 4, 32, 32), 2))
    assert estimate(4, ((1, 4, 64, 64), 3)) > by_k[2]
    # union mode runs one global pass whatever K: its estimate grows with K less than per_person's
    union = [estimate(k, ((1, 4, 32, 32), 3), global_mode="union") for k in (1, 8)]
    assert union[1] - union[0] < by_k[3] - by_k[0]
    assert estimate(4) > estimate(1) > 0  # no guider context: the fallback shape, still per face


def test_memory_estimate_against_comfyui_formula_and_real_residuals(tiny):
    """Independent references: the branch pass term is ComfyUI's own BaseModel.memory_required for the branch's
    input batch, and the residual element count equals what the real branch returns."""
    base, model, _ = tiny
    hw, rows, k = (T.LATENT * 2, T.LATENT * 3), 3, 4
    local = model.local_net
    x = torch.zeros(1, 4, *hw)
    with torch.no_grad():
        out = local(x=x, hint=torch.zeros(1, 3, hw[0] * 8, hw[1] * 8), timesteps=torch.zeros(1),
                    context=torch.zeros(1, 4, T.CONTEXT_DIM), y=torch.zeros(1, T.ADM_CHANNELS))
    real = sum(t[0].numel() for key in ("middle", "output") for t in out.get(key, []))
    assert memory.residual_elements(model.unet_config, hw) == real

    inner = base.model  # the tiny SDXL base: ComfyUI's formula with SDXL's memory_usage_factor
    for shape in ((k * rows, 4, 8, 8), (k * rows, 4, *hw)):
        assert memory.unet_pass_bytes(shape[0], shape[2:], inner.get_dtype(), "sdxl") == pytest.approx(
            inner.memory_required(list(shape)))


def test_memory_estimate_reaches_comfyui_load_under_the_guider(tiny, monkeypatch):
    """Through ComfyUI's own prepare_sampling: the memory load_models_gpu is asked for grows with K, by the
    estimate for the guider's latent shape and three predictions."""
    base, model, _ = tiny
    asked = []
    real_load = mm.load_models_gpu

    def spy(models, memory_required=0, **kwargs):
        asked.append(memory_required)
        return real_load(models, memory_required=memory_required, **kwargs)

    monkeypatch.setattr(comfy.sampler_helpers.comfy.model_management, "load_models_gpu", spy)
    for k in (1, 4):
        positive, negative = _conds(model, _faces(k))
        _sample(_guider(base, positive, negative), steps=1, batch=2)
    expected = [memory.branch_bytes(model, k, memory.SamplingShape(2, (T.LATENT, T.LATENT), 3), model.dtype,
                                    RealisIDControl(model, _faces(k)).options) for k in (1, 4)]
    assert asked[1] - asked[0] == pytest.approx(expected[1] - expected[0], rel=1e-6, abs=2)
    assert expected[1] > expected[0] > 0


def test_control_warns_when_a_call_is_bigger_than_estimated(tiny, caplog):
    """KSampler-style use (no guider publishes the shape): the estimate's fallback is batch 1 at the native size;
    a bigger call is logged, not silent."""
    base, model, faces = tiny
    control = RealisIDControl(model, faces)
    control._memory_shape = memory.SamplingShape(1, (T.LATENT, T.LATENT), 1)
    with caplog.at_level("WARNING", logger="realisid.control"):
        control._check_memory_shape(torch.zeros(4, 4, T.LATENT, T.LATENT))
    assert "memory estimate" in caplog.text
    caplog.clear()
    control._check_memory_shape(torch.zeros(4, 4, T.LATENT, T.LATENT))  # once per estimate
    assert not caplog.text
