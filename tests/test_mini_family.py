"""The Mini family in ComfyUI's own checkpoint detection: Mini checkpoints load as MiniSDXL with the TAESD VAE;
every other checkpoint is detected as before. Random Mini weights are generated here (the shape is what matters)."""

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def mini_checkpoint(pack_node_ids, models_dir):
    import folder_paths

    from realisid.mini import base, family, vae

    family.register()
    unet_model, clip = base.build(seed=5)
    path = models_dir / "checkpoints" / "random_mini.safetensors"
    base.save_checkpoint(str(path), unet_model, unet_model.diffusion_model.state_dict(), clip.state_dict(),
                         vae.build_taesd(6).state_dict(), {"test": True})
    folder_paths.add_model_folder_path("checkpoints", str(models_dir / "checkpoints"))
    return path.name


def test_checkpoint_loader_node_reads_a_mini_checkpoint(mini_checkpoint):
    import comfy.taesd.taesd

    import nodes
    from realisid.mini import family

    model, clip, vae = nodes.CheckpointLoaderSimple().load_checkpoint(mini_checkpoint)
    assert type(model.model.model_config) is family.MiniSDXL
    assert isinstance(vae.first_stage_model, comfy.taesd.taesd.TAESD)
    cond = nodes.CLIPTextEncode().encode(clip, "one person, close-up portrait, in a park, wearing a red shirt")[0]
    assert cond[0][0].shape == (1, 77, family.CONTEXT_DIM)
    assert cond[0][1]["pooled_output"].shape == (1, family.POOLED_DIM)
    latent = nodes.EmptyLatentImage().generate(256, 256, 1)[0]
    out = nodes.common_ksampler(model, 0, 2, 4.0, "euler", "normal", cond, cond, latent)[0]
    image = vae.decode(out["samples"])
    assert image.shape == (1, 256, 256, 3) and torch.isfinite(image).all()


def test_other_checkpoints_keep_their_families(mini_checkpoint):
    import nodes
    from tests.helpers import tiny_host_models as tiny

    for name, family_cls in (("tiny_sdxl.safetensors", tiny.TinySDXL), ("tiny_sd15.safetensors", tiny.TinySD15)):
        model = nodes.CheckpointLoaderSimple().load_checkpoint(name)[0]
        assert type(model.model.model_config) is family_cls


def test_trainable_text_forward_equals_comfyuis(pack_node_ids):
    """The out-of-place twin of ComfyUI's CLIP layers computes the same outputs, and gradients reach the weights."""
    from realisid.mini import base

    _, reference = base.build(seed=2)
    _, trainable = base.build(seed=2)
    base.make_text_trainable(trainable)
    trainable.eval()  # dropout-free either way; eval keeps the comparison exact
    tokens = base.Tokens()(["two people, full-body shot, on a beach, the left one in a red shirt, the right one in "
                            "a blue shirt", ""])
    with torch.no_grad():
        ref_ctx, ref_pooled = base.encode_text(reference, *tokens)
    ctx, pooled = base.encode_text(trainable, *tokens)
    torch.testing.assert_close(ctx, ref_ctx, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pooled, ref_pooled, rtol=1e-5, atol=1e-5)
    (ctx.square().mean() + pooled.square().mean()).backward()
    grads = [p.grad for p in trainable.parameters() if p.grad is not None]
    assert len(grads) > 0.5 * len(list(trainable.parameters()))
    assert all(np.isfinite(g.abs().sum().item()) for g in grads)


def test_base_samples_through_comfys_sampler(mini_checkpoint, models_dir):
    """The base gate's sampler: ComfyUI's loader and sampler, one image per caption, seeded."""
    from realisid.mini import gates

    path = str(models_dir / "checkpoints" / mini_checkpoint)
    captions = ["one person, close-up portrait, in a park, wearing a red shirt", "two people, full-body shot, "
                "on a beach, the left one in a red shirt, the right one in a blue shirt", "three people"]
    first = gates.sample_base(path, captions, seed=3, steps=2, batch=2)
    again = gates.sample_base(path, captions, seed=3, steps=2, batch=2)
    assert len(first) == 3 and first[0].shape == (256, 256, 3) and first[0].dtype == np.uint8
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], first[1])  # each caption (and its noise) gives its own image
