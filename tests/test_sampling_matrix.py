"""Sampling with the RealisID control: SD1.5- and SDXL-shaped bases x (KSampler, SamplerCustomAdvanced with the
RealisID Guider, SamplerCustomAdvanced with the core CFGGuider), latent batch 2; nothing incoming is mutated."""

import pytest
import torch

from tests.test_nodes import astronaut_image

STEPS, SEED, CFG = 2, 21, 4.0
LATENT = {"samples": torch.zeros(2, 4, 16, 16)}  # latent batch 2


def write_tiny_realisid_sd15(path):
    """A RealisID checkpoint for the tiny SD1.5 family (context 32), in the tiny CLIP vision's identity space."""
    from realisid import checkpoint, identity_sources
    from tests.helpers import tiny_host_models as tiny

    projector = {"dim": 64, "depth": 1, "dim_head": 16, "heads": 2, "num_queries": 4,
                 "embedding_dim": tiny.CLIP_VISION_HIDDEN, "ff_mult": 2, "source_tokens": 257}
    model = checkpoint.build_realisid_model(tiny.unet_config("sd15"), projector_config=projector, crop_size=16,
                                            identity_space=identity_sources.clip_space(tiny.CLIP_VISION_HIDDEN, 257))
    tiny.randomize_(model.nets, 4, std=0.05)  # non-zero zero-convs, so the branches visibly act
    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.save_realisid(model, str(path))
    return path


@pytest.fixture(scope="module")
def setup(pack_node_ids, models_dir, tmp_path_factory):
    """Node classes, both RealisID models, and the astronaut encoded ONCE (both models share the identity space)."""
    import comfy.clip_vision

    import nodes
    from realisid import checkpoint

    mapping = nodes.NODE_CLASS_MAPPINGS
    sd15_path = write_tiny_realisid_sd15(tmp_path_factory.mktemp("realisid_sd15") / "tiny_realisid_sd15.safetensors")
    models = {"sdxl": checkpoint.load_realisid(str(models_dir / "realisid" / "tiny_realisid_sdxl.safetensors")),
              "sd15": checkpoint.load_realisid(str(sd15_path))}
    assert models["sd15"].identity_space == models["sdxl"].identity_space
    clip_vision = comfy.clip_vision.load(str(models_dir / "clip_vision" / "tiny_clip_vision.safetensors"))
    analyzer = mapping["RealisIDFaceAnalysis"].execute("embedded (MTCNN + dlib, offline)", "CPU")[0]
    faces = mapping["RealisIDFaceEncoder"].execute(astronaut_image(), analyzer, models["sdxl"], "largest", 0, "error",
                                                   "each image is a different person", clip_vision)[0]
    assert len(faces) == 1
    return mapping, models, faces


def ksampler(model, positive, negative):
    import nodes

    return nodes.common_ksampler(model, SEED, STEPS, CFG, "euler", "normal", positive, negative, dict(LATENT))[0][
        "samples"]


def custom_advanced(guider):
    import comfy.samplers
    from comfy_extras.nodes_custom_sampler import Noise_RandomNoise, SamplerCustomAdvanced

    sigmas = comfy.samplers.calculate_sigmas(guider.model_patcher.get_model_object("model_sampling"), "normal", STEPS)
    out = SamplerCustomAdvanced.execute(Noise_RandomNoise(SEED), guider, comfy.samplers.sampler_object("euler"),
                                        sigmas, dict(LATENT))
    return out.result[0]["samples"]


def control_state(control):
    return (control.previous_controlnet, control.strength, control.timestep_percent_range, control.identity_enabled,
            dict(control.options), list(control.faces), control.model, control.timestep_range,
            control.model_sampling_current)


def conditioning_state(conditioning):
    return [(c[0], c[0].clone(), dict(c[1])) for c in conditioning]


def assert_conditioning_unchanged(conditioning, state):
    assert len(conditioning) == len(state)
    for (tensor, opts), (t0, values, opts0) in zip(conditioning, state, strict=True):
        assert tensor is t0 and torch.equal(tensor, values) and opts == opts0
        assert opts.keys() == opts0.keys() and all(opts[k] is opts0[k] for k in opts)


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_all_sampling_paths_work_and_mutate_nothing(setup, models_dir, family):
    import comfy.sd
    from comfy_extras.nodes_custom_sampler import CFGGuider

    mapping, models, faces = setup
    model, clip = comfy.sd.load_checkpoint_guess_config(str(models_dir / "checkpoints" / f"tiny_{family}.safetensors"),
                                                        output_vae=False, output_clip=True)[:2]
    positive = mapping["CLIPTextEncode"]().encode(clip, "a photo of a person")[0]
    negative = mapping["CLIPTextEncode"]().encode(clip, "")[0]
    options_before = repr(model.model_options)
    text_state = conditioning_state(positive), conditioning_state(negative)
    plain = ksampler(model, positive, negative)

    layout = mapping["RealisIDLayoutFromNumbers"].execute(0.5, 0.45, 0.5)[0]
    pos, neg, _ = mapping["RealisIDMultiFaceComposite"].execute(positive, negative, models[family], faces, layout, 1.0,
                                                                1.0, 0.0, 1.0, 0, "per_person", 0.0)
    controls = pos[0][1]["control"], neg[0][1]["control"]
    states = conditioning_state(pos), conditioning_state(neg), [control_state(c) for c in controls]

    by_ksampler = ksampler(model, pos, neg)
    realisid_guider = mapping["RealisIDGuider"].execute(model, pos, neg, CFG, CFG, 0.0)[0]
    by_realisid_guider = custom_advanced(realisid_guider)
    by_cfg_guider = custom_advanced(CFGGuider.execute(model, pos, neg, CFG).result[0])

    for out in (by_ksampler, by_realisid_guider, by_cfg_guider):
        assert out.shape == (2, 4, 16, 16) and torch.isfinite(out).all()
    assert (by_ksampler - plain).abs().max() > 1e-3  # the control acted
    assert (by_ksampler[0] - by_ksampler[1]).abs().max() > 1e-3  # two different noises, two different samples
    # same noise and schedule: the core guider reproduces KSampler, and Eq. 8 with lt = li = cfg is plain CFG
    # between the identity positive and the null-identity negative
    torch.testing.assert_close(by_cfg_guider, by_ksampler, atol=1e-5, rtol=0)
    torch.testing.assert_close(by_realisid_guider, by_ksampler, atol=1e-4, rtol=1e-4)

    # nothing incoming changed: MODEL, text CONDITIONING, RealisID CONDITIONING and its controls
    assert repr(model.model_options) == options_before
    assert torch.equal(ksampler(model, positive, negative), plain)
    assert_conditioning_unchanged(positive, text_state[0])
    assert_conditioning_unchanged(negative, text_state[1])
    assert "control" not in positive[0][1] and "control" not in negative[0][1]
    assert_conditioning_unchanged(pos, states[0])
    assert_conditioning_unchanged(neg, states[1])
    for control, state in zip(controls, states[2], strict=True):
        assert control_state(control) == state
    # the negative carries the positive control's null-identity twin (right under any guider)
    assert controls[1].identity_twin is controls[0] and controls[0].identity_enabled
    assert not controls[1].identity_enabled
