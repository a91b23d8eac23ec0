"""RealisID control: branch_residuals algebra, and RealisIDControl through ComfyUI's real sampler."""

import comfy.controlnet
import comfy.sample
import pytest
import torch

from realisid import branches, geometry
from realisid.control import FaceCondition, RealisIDControl, branch_residuals
from tests.helpers import tiny_realisid as T

BOXES = [(0.1, 0.1, 0.45, 0.45), (0.5, 0.55, 0.9, 0.95)]


@pytest.fixture(scope="module")
def sdxl():
    base = T.tiny_base_model("sdxl")
    model = T.tiny_realisid_model("sdxl")
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        faces = [FaceCondition(model.project(torch.randn(1, T.SOURCE_DIM, generator=gen))[0],
                               torch.rand(3, 32, 32, generator=gen), box) for box in BOXES]
    return base, model, faces


def _inputs(batch=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, T.LATENT, T.LATENT, generator=gen)
    return x, torch.full((batch,), 500.0), torch.randn(batch, T.ADM_CHANNELS, generator=gen)


def _close(a: dict, b: dict, atol=1e-5):
    for key in ("middle", "output"):
        assert len(a[key]) == len(b[key]) > 0
        for u, v in zip(a[key], b[key], strict=True):
            assert u.shape == v.shape
            torch.testing.assert_close(u, v, atol=atol, rtol=1e-4)


def _differs(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-3) -> None:
    """a and b differ by at least `rel` of a's scale, a thousand times float32 rounding (about 1e-6 of the
    scale), so an ignored input cannot pass as an effect of rounding. Measured on the tiny models: 2e-2 for the
    identity, 0.5 for the union mask, 9e-3 for a branch's effect on a whole sample."""
    gap, scale = float((a - b).abs().max()), float(a.abs().max())
    assert gap > rel * scale, f"largest difference {gap:.2e} is under {rel:.0e} of the scale {scale:.2e}"


def _support(model, boxes_frac, latent: int, hw) -> torch.Tensor:
    """(h, w) bool: the cells of the UNet level of size hw that the boxes touch (the level's own cell placement)."""
    level = next(lv for lv in geometry.unet_levels(model.local_net) if lv.size(latent) == hw[-1])
    boxes = geometry.frac_to_latent(boxes_frac, (latent, latent))
    return geometry.level_box_mask(boxes, (latent, latent), level).amax(dim=0)[0] > 0


def _add(a, b, wa=1.0, wb=1.0):
    return {k: [wa * u + wb * v for u, v in zip(a[k], b[k], strict=True)] for k in ("middle", "output")}


@torch.no_grad()
def test_batched_faces_equal_sum_of_single_face_local_runs(sdxl):
    _, model, faces = sdxl
    x, ts, y = _inputs()
    both = branch_residuals(model, x, ts, faces, y=y, use_global=False)
    singles = [branch_residuals(model, x, ts, [f], y=y, use_global=False) for f in faces]
    _close(both, _add(*singles))
    assert both["output"][0].abs().max() > 1e-3  # non-trivial residuals


@torch.no_grad()
def test_paired_mode_equals_each_entry_with_its_own_face(sdxl):
    """The trainer's batches: face k acts on batch entry k only, in one pass per branch."""
    _, model, faces = sdxl
    x, ts, y = _inputs(batch=2, seed=5)
    paired = branch_residuals(model, x, ts, faces, y=y, paired=True)
    alone = [branch_residuals(model, x[i:i + 1], ts[i:i + 1], [faces[i]], y=y[i:i + 1]) for i in range(2)]
    _close(paired, {k: [torch.cat(ts_) for ts_ in zip(*(a[k] for a in alone), strict=True)]
                    for k in ("middle", "output")})
    with pytest.raises(ValueError, match="one box per batch entry"):
        branch_residuals(model, x[:1], ts[:1], faces, y=y[:1], paired=True)


@torch.no_grad()
def test_global_per_person_is_mean_of_single_person_runs_and_union_differs(sdxl):
    _, model, faces = sdxl
    x, ts, y = _inputs()
    both = branch_residuals(model, x, ts, faces, y=y, use_local=False)
    singles = [branch_residuals(model, x, ts, [f], y=y, use_local=False) for f in faces]
    _close(both, _add(*singles, 0.5, 0.5))
    union = branch_residuals(model, x, ts, faces, y=y, use_local=False, global_mode="union")
    _differs(union["output"][0], both["output"][0])
    with pytest.raises(ValueError, match="global_mode"):
        branch_residuals(model, x, ts, faces, y=y, global_mode="max")


@torch.no_grad()
def test_strengths_combine_linearly_and_sdxl_requires_y(sdxl):
    _, model, faces = sdxl
    x, ts, y = _inputs()
    loc = branch_residuals(model, x, ts, faces, y=y, use_global=False)
    glo = branch_residuals(model, x, ts, faces, y=y, use_local=False)
    _close(branch_residuals(model, x, ts, faces, y=y, local_strength=0.5, global_strength=2.0), _add(loc, glo, 0.5, 2.0))
    with pytest.raises(ValueError, match="needs y"):
        branch_residuals(model, x, ts, faces)


@torch.no_grad()
def test_local_residuals_follow_the_crop_of_each_entry(sdxl):
    # entry b of a batch depends only on x[b]: equals running it alone
    _, model, faces = sdxl
    x, ts, y = _inputs(batch=2)
    out = branch_residuals(model, x, ts, faces, y=y)
    alone = branch_residuals(model, x[1:], ts[1:], faces, y=y[1:])
    _close({k: [t[1:] for t in v] for k, v in out.items() if k != "input"}, alone)


def _attach(conditioning, control):
    """What an apply node does: a COPY of the conditioning with the control set."""
    return [[c[0], {**c[1], "control": control, "control_apply_to_uncond": False}] for c in conditioning]


def _recording(base):
    """A clone of the base MODEL whose wrapper records (sigma, cond_or_uncond, control) before the UNet runs."""
    calls = []
    model = base.clone()

    def wrapper(apply_model, args):
        ctrl = args["c"].get("control")
        copy = None if ctrl is None else {k: [t.clone() for t in v] for k, v in ctrl.items()}
        calls.append((args["timestep"].clone(), list(args["cond_or_uncond"]), copy))
        return apply_model(args["input"], args["timestep"], **args["c"])

    model.set_model_unet_function_wrapper(wrapper)
    return model, calls


def _sample(model, pos, neg, batch=1, cfg=2.0):
    latent = torch.zeros(batch, 4, T.LATENT, T.LATENT)
    noise = comfy.sample.prepare_noise(latent, 7)
    return comfy.sample.sample(model, noise, 2, cfg, "euler", "normal", pos, neg, latent, seed=7)


def test_sampling_local_only_is_zero_outside_boxes_and_strength_zero_is_identity(sdxl):
    base, model, faces = sdxl
    pos, neg = T.tiny_conditioning("sdxl")
    pos_before = [[c[0].clone(), dict(c[1])] for c in pos]
    rec, calls = _recording(base)
    control = RealisIDControl(model, faces, use_global=False)
    out = _sample(rec, _attach(pos, control), neg)
    ctrl_calls = [c for c in calls if c[2] is not None]
    assert len(ctrl_calls) == 2 and all(c[1] == [0] for c in ctrl_calls)  # uncond got no control
    for tensors in (ctrl_calls[0][2]["output"] + ctrl_calls[0][2]["middle"]):
        inside = _support(model, BOXES, T.LATENT, tensors.shape[-2:])
        assert tensors[..., ~inside].abs().max() == 0 and tensors[..., inside].abs().max() > 0
    # no mutation of the incoming conditioning
    assert len(pos) == 1 and "control" not in pos[0][1] and torch.equal(pos[0][0], pos_before[0][0])
    assert pos[0][1].keys() == pos_before[0][1].keys()
    plain = _sample(base, pos, neg)
    assert (out - plain).abs().max() > 100 * 1e-5  # far outside the tolerance that strength 0 must meet
    zero = RealisIDControl(model, faces, strength=0.0)
    torch.testing.assert_close(_sample(base, _attach(pos, zero), neg), plain, atol=1e-5, rtol=1e-5)


def _core_controlnet():
    net = branches.build_branch(T.tiny_unet_config("sdxl"), 3)
    branches.init_branch_random(net, std=0.05, zero_outputs=False, generator=torch.Generator().manual_seed(5))
    cn = comfy.controlnet.ControlNet(net, load_device=torch.device("cpu"))
    return cn.copy().set_cond_hint(torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(6)), 0.7)


def _pre_run(control, base):
    control.pre_run(base.model, lambda p: base.model.model_sampling.percent_to_sigma(p))


def _cond(batch, seed=0):
    _, _, y = _inputs(batch, seed)
    return {"c_crossattn": torch.randn(batch, 5, T.CONTEXT_DIM), "y": y}


@torch.no_grad()
def test_chaining_with_core_controlnet_is_the_sum_and_does_not_mutate_it(sdxl):
    base, model, faces = sdxl
    core = _core_controlnet()
    ours = RealisIDControl(model, faces, strength=0.8)
    chained = ours.copy()
    chained.set_previous_controlnet(core)
    for c in (core, ours, chained):
        _pre_run(c, base)
    x, cond, sigma = torch.randn(2, 4, 8, 8), _cond(2), torch.full((2,), 5.0)
    want = _add(core.get_control(x, sigma, cond, 1, {}), ours.get_control(x, sigma, cond, 1, {}))
    _close(chained.get_control(x, sigma, cond, 1, {}), want)
    assert core.previous_controlnet is None and core.strength == 0.7 and ours.previous_controlnet is None
    assert core.control_model_wrapped in chained.get_models() and model.patcher in chained.get_models()


@torch.no_grad()
def test_start_end_percent_gating_returns_previous_control(sdxl):
    base, model, faces = sdxl
    gated = RealisIDControl(model, faces, timestep_percent_range=(0.5, 1.0))
    _pre_run(gated, base)
    ms = base.model.model_sampling
    x, cond = torch.randn(1, 4, 8, 8), _cond(1)
    early, late = ms.percent_to_sigma(0.1), ms.percent_to_sigma(0.9)
    assert gated.get_control(x, torch.tensor([early]), cond, 1, {}) is None
    assert gated.get_control(x, torch.tensor([late]), cond, 1, {})["output"][0].abs().max() > 0
    core = _core_controlnet()
    gated.set_previous_controlnet(core)
    _pre_run(gated, base)
    prev = core.get_control(x, torch.tensor([early]), cond, 1, {})
    _close(gated.get_control(x, torch.tensor([early]), cond, 1, {}), prev)


@torch.no_grad()
def test_cond_uncond_batch_matches_each_entry_alone(sdxl):
    base, model, faces = sdxl
    control = RealisIDControl(model, faces)
    _pre_run(control, base)
    x, cond, sigma = torch.randn(4, 4, 8, 8), _cond(4, seed=2), torch.full((4,), 3.0)
    batched = control.get_control(x, sigma, cond, 2, {})  # latent batch 2 x (cond, uncond)
    for i in range(4):
        one = {"c_crossattn": cond["c_crossattn"][i:i + 1], "y": cond["y"][i:i + 1]}
        alone = control.get_control(x[i:i + 1], sigma[i:i + 1], one, 1, {})
        _close({k: [t[i:i + 1] for t in v] for k, v in batched.items() if k != "input"}, alone)


@torch.no_grad()
def test_identity_is_routed_per_cond_in_one_batch(sdxl):
    """Without routing the control object decides (every row of the identity control sees p_id); a guider's routing
    picks the rows per cond; each row equals that row computed alone with the matching identity."""
    from realisid.null_identity import IDENTITY_ROUTING_KEY

    base, model, faces = sdxl
    control = RealisIDControl(model, faces)
    null_control = control.with_identity(False)
    for c in (control, null_control):
        _pre_run(c, base)
    x, cond, sigma = torch.randn(4, 4, 8, 8), _cond(4, seed=4), torch.full((4,), 3.0)
    cases = (({"cond_or_uncond": [0, 1]}, [True, True, True, True]),
             ({"cond_or_uncond": [0, 1], IDENTITY_ROUTING_KEY: {0: False, 1: True}}, [False, False, True, True]))
    for options, rows in cases:
        batched = control.get_control(x, sigma, cond, 2, options)
        for i, identity in enumerate(rows):
            one = {"c_crossattn": cond["c_crossattn"][i:i + 1], "y": cond["y"][i:i + 1]}
            alone = (control if identity else null_control).get_control(x[i:i + 1], sigma[i:i + 1], one, 1, {})
            _close({k: [t[i:i + 1] for t in v] for k, v in batched.items() if k != "input"}, alone)
    # the identity matters where cross-attention has acted (the middle block), so the routing check can fail
    _differs(null_control.get_control(x, sigma, cond, 2, {"cond_or_uncond": [0, 1]})["middle"][0][:2],
             control.get_control(x, sigma, cond, 2, {"cond_or_uncond": [0, 1]})["middle"][0][:2])


@torch.no_grad()
def test_identity_follows_the_control_object_whatever_the_cond_index(sdxl):
    """Guiders order their conds differently (DualCFGGuider evaluates [negative, middle, positive]): without routing,
    the positive's control shows the identity and the negative's null twin never does, at any index."""
    base, model, faces = sdxl
    control = RealisIDControl(model, faces)
    twin = control.with_identity(False)
    assert twin.identity_twin is control and not twin.identity_enabled
    for c in (control, twin):
        _pre_run(c, base)
    x, cond, sigma = torch.randn(1, 4, 8, 8), _cond(1, seed=6), torch.full((1,), 3.0)
    reference = {c: c.get_control(x, sigma, cond, 1, {}) for c in (control, twin)}
    for index in (0, 1, 2):
        for c in (control, twin):
            _close(c.get_control(x, sigma, cond, 1, {"cond_or_uncond": [index]}), reference[c])
    _differs(reference[control]["middle"][0], reference[twin]["middle"][0])


@torch.no_grad()
def test_with_identity_false_uses_null_identity_and_keeps_original(sdxl):
    base, model, faces = sdxl
    control = RealisIDControl(model, faces, global_mode="union")
    no_id = control.with_identity(False)
    assert control.identity_enabled and not no_id.identity_enabled and no_id.model is control.model
    for c in (control, no_id):
        _pre_run(c, base)
    x, cond, sigma = torch.randn(1, 4, 8, 8), _cond(1), torch.full((1,), 3.0)
    null_faces = [FaceCondition(model.null_identity(1)[0], f.landmark_hint, f.box) for f in faces]
    want = branch_residuals(model, base.model.model_sampling.calculate_input(sigma, x),
                            base.model.model_sampling.timestep(sigma), null_faces, y=cond["y"], global_mode="union")
    _close(no_id.get_control(x, sigma, cond, 1, {}), want)
    _differs(control.get_control(x, sigma, cond, 1, {})["middle"][0], want["middle"][0])  # attn level


def test_sd15_model_runs_without_y():
    base = T.tiny_base_model("sd15")
    model = T.tiny_realisid_model("sd15")
    faces = [FaceCondition(model.null_identity(1)[0], torch.rand(3, 64, 64), BOXES[0])]
    pos, neg = T.tiny_conditioning("sd15")
    out = _sample(base, _attach(pos, RealisIDControl(model, faces)), neg)
    assert out.shape == (1, 4, 8, 8) and torch.isfinite(out).all()
    _differs(out, _sample(base, pos, neg))


# ---- locality of the local branch --------------------------------------------------------------------------------

BIG = 16  # latent side for the locality tests: the 8-cell crop of a 8x8-cell box samples cell centres exactly


def _local(model, x, face, box):
    y = torch.randn(x.shape[0], T.ADM_CHANNELS, generator=torch.Generator().manual_seed(9))
    moved = FaceCondition(face.p_id, face.landmark_hint, box)
    return branch_residuals(model, x, torch.full((x.shape[0],), 400.0), [moved], y=y, use_global=False)


@torch.no_grad()
def test_latent_outside_the_box_does_not_change_that_face_local_residuals(sdxl):
    _, model, faces = sdxl
    box = (0.25, 0.25, 0.75, 0.75)  # latent cells [4, 12) x [4, 12)
    x = torch.randn(2, 4, BIG, BIG, generator=torch.Generator().manual_seed(4))
    changed = x.clone()
    keep = torch.zeros(BIG, BIG, dtype=torch.bool)
    keep[3:13, 3:13] = True  # the box plus one cell: bilinear sampling may read the neighbours
    changed[..., ~keep] = torch.randn(2, 4, int((~keep).sum()), generator=torch.Generator().manual_seed(8)) * 5
    a, b = _local(model, x, faces[0], box), _local(model, changed, faces[0], box)
    for key in ("middle", "output"):
        for u, v in zip(a[key], b[key], strict=True):
            assert u.abs().max() > 1e-4
            assert torch.equal(u, v), key
    # control: changing the latent INSIDE the box does change them
    inside = x.clone()
    inside[..., 6:10, 6:10] += 3.0
    _differs(_local(model, inside, faces[0], box)["output"][0], a["output"][0])


@torch.no_grad()
def test_moving_the_box_with_its_content_moves_the_residuals(sdxl):
    _, model, faces = sdxl
    box = (0.25, 0.25, 0.75, 0.75)
    dx, dy = 2, 2  # latent cells; even, so every UNet level (16, 8) sees an integer shift; the box stays clear
    # of the image edge at every level (a level-1 cell reaches half a latent cell past the box), so nothing clips
    moved_box = (box[0] + dx / BIG, box[1] + dy / BIG, box[2] + dx / BIG, box[3] + dy / BIG)
    x = torch.randn(1, 4, BIG, BIG, generator=torch.Generator().manual_seed(5))
    x_moved = torch.roll(x, shifts=(dy, dx), dims=(-2, -1))  # the box content travels with the box
    a, b = _local(model, x, faces[0], box), _local(model, x_moved, faces[0], moved_box)
    for key in ("middle", "output"):
        for u, v in zip(a[key], b[key], strict=True):
            f = u.shape[-1] / BIG
            shifted = torch.roll(u, shifts=(int(dy * f), int(dx * f)), dims=(-2, -1))
            torch.testing.assert_close(v, shifted, atol=1e-6, rtol=0)
            support = _support(model, [moved_box], BIG, v.shape[-2:])
            assert v[..., ~support].abs().max() == 0 and v[..., support].abs().max() > 1e-4
            _differs(u, v)  # it did move


# ---- K = 1: the multi-face node equals the single-face nodes chained ---------------------------------------------

@pytest.fixture(scope="module")
def node_setup(pack_node_ids, models_dir):
    import comfy.clip_vision
    import comfy.sd

    import nodes
    from realisid import checkpoint
    from tests.test_nodes import astronaut_image

    mapping = nodes.NODE_CLASS_MAPPINGS
    realisid_model = checkpoint.load_realisid(str(models_dir / "realisid" / "tiny_realisid_sdxl.safetensors"))
    clip_vision = comfy.clip_vision.load(str(models_dir / "clip_vision" / "tiny_clip_vision.safetensors"))
    base = comfy.sd.load_checkpoint_guess_config(str(models_dir / "checkpoints" / "tiny_sdxl.safetensors"),
                                                 output_vae=False, output_clip=False)[0]
    analyzer = mapping["RealisIDFaceAnalysis"].execute("embedded (MTCNN + dlib, offline)", "CPU")[0]
    faces = mapping["RealisIDFaceEncoder"].execute(astronaut_image(), analyzer, realisid_model, "largest", 0, "error",
                                                   "each image is a different person", clip_vision)[0]
    return mapping, realisid_model, base, faces


@torch.no_grad()
def test_one_face_composite_equals_local_then_global_chained(node_setup):
    from tests.helpers import tiny_host_models as tiny

    mapping, realisid_model, base, faces = node_setup
    gen = torch.Generator().manual_seed(12)
    positive = [[torch.randn(1, 7, tiny.SDXL_CONTEXT_DIM, generator=gen), {"pooled_output": torch.zeros(1, 64)}]]
    negative = [[torch.zeros(1, 7, tiny.SDXL_CONTEXT_DIM), {}]]
    layout = mapping["RealisIDLayoutFromNumbers"].execute(0.4, 0.45, 0.5)[0]
    multi = mapping["RealisIDMultiFaceComposite"].execute(positive, negative, realisid_model, faces, layout, 0.8, 1.3,
                                                          0.0, 1.0, 0, "per_person", 0.0)
    local = mapping["RealisIDLocalBranchApply"].execute(positive, negative, realisid_model, faces, layout, 0.8, 0.0,
                                                        1.0, 0, 0.0)
    chain = mapping["RealisIDGlobalLocationApply"].execute(local[0], local[1], realisid_model, faces, layout, 1.3,
                                                           0.0, 1.0, "per_person")
    x = torch.randn(2, 4, 16, 16, generator=gen)
    cond = {"c_crossattn": torch.randn(2, 7, tiny.SDXL_CONTEXT_DIM, generator=gen),
            "y": torch.randn(2, tiny.SDXL_ADM_CHANNELS, generator=gen)}
    sigma = torch.full((2,), 2.5)
    for side in (0, 1):  # positive (identity) and negative (null identity)
        one, chained = multi[side][0][1]["control"], chain[side][0][1]["control"]
        assert isinstance(chained.previous_controlnet, RealisIDControl) and one.previous_controlnet is None
        for c in (one, chained):
            _pre_run(c, base)
        want = one.get_control(x, sigma, cond, 1, {})
        got = chained.get_control(x, sigma, cond, 1, {})
        _close(got, want, atol=1e-6)
        assert want["output"][0].abs().max() > 1e-3
        for c in (one, chained):
            c.cleanup()


# ---- device placement on accelerators (the "meta" device stands in for a GPU / MPS here) ---------------------------


def test_prepared_faces_send_only_the_compute_dtype_to_the_device(sdxl):
    """MPS has no float64: everything prepare_faces puts on the compute device is in the compute dtype, except the
    crop/paste matrices, which are in the resampling dtype (float32 for half precision, never float64)."""
    from realisid.control import prepare_faces

    _, model, faces = sdxl
    device = torch.device("meta")
    prep = prepare_faces(model, faces, (T.LATENT, T.LATENT), device, torch.float16)
    assert all(t.device == device and t.dtype == torch.float16 for t in (prep.p_id, prep.local_hint, prep.global_hint))
    matrices = [*prep.placement.crop] + [t for lv in prep.placement.paste.values() for t in (lv.rows, lv.cols)]
    assert all(t.device == device and t.dtype == torch.float32 for t in matrices)
    assert prep.boxes_latent.device.type == "cpu" and prep.boxes_latent.shape == (len(faces), 4)


def test_projection_works_when_the_projector_is_partly_offloaded():
    """ComfyUI's lowvram load / partial unload moves leaf modules only: a plain-torch projector can be split across
    devices (Resampler.latents sits on a non-leaf module). project() must still run, on the load device."""
    from realisid.checkpoint import call_on_device

    model = T.tiny_realisid_model("sdxl", with_global=False)
    src = torch.randn(2, T.SOURCE_DIM, generator=torch.Generator().manual_seed(0))
    proj = model.projector
    tensors = {**dict(proj.named_parameters()), **dict(proj.named_buffers())}
    with torch.no_grad():
        torch.testing.assert_close(call_on_device(proj, tensors, src, torch.device("cpu")), proj(src))
        proj.latents = torch.nn.Parameter(proj.latents.detach().to("meta"))  # first parameter elsewhere
        model.load_device = torch.device("meta")
        p_id = model.project(src)
    assert p_id.device.type == "meta" and p_id.shape == (2, 4, T.CONTEXT_DIM)
    assert proj.latents.device.type == "meta" and proj.proj_in.weight.device.type == "cpu"  # module untouched


def test_layout_faces_stay_square_on_any_latent_and_a_photo_layout_of_another_aspect_warns(caplog):
    """The declared rule: centre as fractions, side as a fraction of the shorter side, resolved per latent."""
    from realisid.control import face_boxes
    from realisid.geometry import FaceSquare

    typed = FaceCondition(torch.zeros(1, 4), None, FaceSquare(0.5, 0.3, 0.25))
    from_photo = FaceCondition(torch.zeros(1, 4), None, FaceSquare(0.5, 0.3, 0.25, source_aspect=1.0))
    for h, w in ((128, 128), (152, 104), (104, 152)):
        x0, y0, x1, y1 = face_boxes([typed], (h, w))[0].tolist()
        assert (x1 - x0) * w == pytest.approx((y1 - y0) * h) == pytest.approx(0.25 * min(h, w))  # square cells
        assert ((x0 + x1) / 2, (y0 + y1) / 2) == pytest.approx((0.5, 0.3))
    with caplog.at_level("WARNING", logger="realisid.geometry"):
        face_boxes([typed, from_photo], (128, 128))
        face_boxes([typed], (152, 104))
        assert not caplog.records  # typed-in faces fit any aspect; a photo layout on its own aspect
        face_boxes([from_photo], (152, 104))
    assert "aspect 1.000" in caplog.text and "stays square" in caplog.text
    trainer_box = FaceCondition(torch.zeros(1, 4), None, (0.1, 0.2, 0.3, 0.5))  # fractions are taken as given
    assert face_boxes([trainer_box], (152, 104))[0].tolist() == [0.1, 0.2, 0.3, 0.5]


def _recorded_crops(net) -> list:
    seen = []
    net.register_forward_pre_hook(lambda _m, _a, kwargs: seen.append(kwargs["x"].clone()), with_kwargs=True)
    return seen


@torch.no_grad()
def test_restore_noise_tops_the_crops_up_with_the_latents_noise_level(sdxl):
    """restore_noise adds fresh noise of std deficit x (the noise std in the model input, sigma / sqrt(sigma^2 + 1)
    for an EPS base) to the local branch's crops; the same draw for the positive and the negative rows (seeded by
    the noise level), and a model that restores refuses to run without the noise level."""
    from realisid.null_identity import IDENTITY_ROUTING_KEY

    base, _, faces = sdxl
    plain, restoring = T.tiny_realisid_model("sdxl"), T.tiny_realisid_model("sdxl")
    restoring.config = {**restoring.config, "restore_noise": True}
    seen = {m: _recorded_crops(m.local_net) for m in (plain, restoring)}
    sigma = 3.0
    x, cond = torch.randn(1, 4, 8, 8).repeat(2, 1, 1, 1), _cond(2, seed=4)
    for m in (plain, restoring):
        control = RealisIDControl(m, faces)
        _pre_run(control, base)
        routing = {"cond_or_uncond": [0, 1], IDENTITY_ROUTING_KEY: {0: True, 1: False}}
        control.get_control(x, torch.full((2,), sigma), cond, 2, routing)
    assert len(seen[plain]) == len(seen[restoring]) == 2  # the identity rows and the null rows, one pass each
    torch.testing.assert_close(seen[plain][0], seen[plain][1])
    torch.testing.assert_close(seen[restoring][0], seen[restoring][1])  # one fresh draw for both rows
    placement = geometry.place_boxes(geometry.frac_to_latent(BOXES, (8, 8)), (8, 8), T.CROP, ())
    deficit = geometry.crop_noise_deficit(placement)  # (K, 1, S, S), face-major like the crops
    added = seen[restoring][0] - seen[plain][0]
    assert float(added[(deficit == 0).expand_as(added)].abs().max()) == 0.0
    lost = (deficit > 0.2).expand_as(added)
    unit = added[lost] / (deficit.expand_as(added)[lost] * sigma / (sigma**2 + 1) ** 0.5)
    assert unit.numel() > 100 and abs(float(unit.mean())) < 0.2 and 0.85 < float(unit.std()) < 1.15
    prepared_faces = [FaceCondition(f.p_id, f.landmark_hint, f.box) for f in faces]
    with pytest.raises(ValueError, match="restore_noise"):
        branch_residuals(restoring, x, torch.full((2,), 500.0), prepared_faces, y=cond["y"])
