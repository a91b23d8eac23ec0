"""Branches: ControlNets shaped after the base UNet; ControlNet-style init; identity projector layout."""

import pytest
import torch

from realisid import branches, checkpoint_format, identity
from tests.helpers import tiny_realisid as T


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_branch_residuals_line_up_with_base_unet(family):
    net = branches.build_branch(T.tiny_unet_config(family), checkpoint_format.GLOBAL_HINT_CHANNELS)
    branches.init_branch_random(net, zero_outputs=False)
    assert net.input_hint_block[0].weight.shape[1] == 1
    assert (net.num_classes == "sequential") == (family == "sdxl")
    y = torch.randn(1, T.ADM_CHANNELS) if family == "sdxl" else None
    out = net(x=torch.randn(1, 4, 8, 8), hint=torch.rand(1, 1, 64, 64), timesteps=torch.tensor([10.0]),
              context=torch.randn(1, 3, T.CONTEXT_DIM), y=y)
    assert [tuple(t.shape[1:]) for t in out["output"]] == [(64, 8, 8), (64, 8, 8), (64, 4, 4), (128, 4, 4)]
    assert tuple(out["middle"][0].shape[1:]) == (128, 4, 4)


def test_config_drops_decoder_and_runtime_keys_and_rejects_non_unet():
    cfg = branches.controlnet_config_from_unet({**T.tiny_unet_config("sdxl"), "dtype": torch.float16})
    assert "out_channels" not in cfg and "transformer_depth_output" not in cfg and "dtype" not in cfg
    assert cfg["adm_in_channels"] == T.ADM_CHANNELS and cfg["context_dim"] == T.CONTEXT_DIM
    with pytest.raises(ValueError, match="lacks 'model_channels'"):
        branches.controlnet_config_from_unet({"in_channels": 4})


def test_init_from_unet_copies_encoder_and_zeroes_outputs():
    base = T.tiny_base_model("sdxl", seed=4)
    sd = base.model.state_dict()
    net = branches.build_branch(T.tiny_unet_config("sdxl"), 3)
    report = branches.init_branch_from_unet(net, sd)
    own = net.state_dict()
    encoder = [k for k in own if k.split(".")[0] in ("time_embed", "label_emb", "input_blocks", "middle_block")]
    assert report["not_in_unet"] == [] and report["copied"] == len(encoder) > 20
    for key in encoder:  # every encoder tensor, bit for bit
        assert torch.equal(own[key], sd["diffusion_model." + key]), key
    assert not torch.equal(own["input_hint_block.0.weight"].flatten()[:1], torch.zeros(1))  # random, not copied
    assert all(p.abs().sum() == 0 for zc in net.zero_convs for p in zc.parameters())
    assert net.middle_block_out[0].weight.abs().sum() == 0
    assert net.input_hint_block[0].weight.abs().sum() > 0
    out = net(x=torch.randn(1, 4, 8, 8), hint=torch.rand(1, 3, 64, 64), timesteps=torch.tensor([3.0]),
              context=torch.randn(1, 2, T.CONTEXT_DIM), y=torch.randn(1, T.ADM_CHANNELS))
    assert all(t.abs().max() == 0 for t in out["output"] + out["middle"])


def test_resampler_key_layout_matches_instantid_image_proj():
    proj = identity.build_projector({"dim": 32, "depth": 2, "dim_head": 8, "heads": 4, "num_queries": 16,
                                     "embedding_dim": 512, "output_dim": 64, "ff_mult": 4, "source_tokens": 1})
    keys = set(proj.state_dict())
    for k in ("latents", "proj_in.weight", "proj_in.bias", "proj_out.weight", "norm_out.weight",
              "layers.1.0.norm1.weight", "layers.1.0.norm2.weight", "layers.1.0.to_q.weight", "layers.1.0.to_kv.weight",
              "layers.1.0.to_out.weight", "layers.1.1.0.weight", "layers.1.1.1.weight", "layers.1.1.3.weight"):
        assert k in keys, k
    assert proj.state_dict()["layers.0.1.1.weight"].shape == (128, 32)
    vec = torch.randn(2, 512)
    torch.testing.assert_close(proj(vec), proj(vec[:, None]))
    assert proj(vec).shape == (2, 16, 64)
    with pytest.raises(ValueError, match="does not match this projector"):
        proj(torch.randn(2, 5, 100))
    with pytest.raises(ValueError, match="unknown projector config keys"):
        identity.build_projector({"depht": 2})


def test_perceiver_attention_matches_explicit_reference():
    torch.manual_seed(0)
    attn = identity.PerceiverAttention(dim=8, dim_head=4, heads=2)
    x, lat = torch.randn(1, 3, 8), torch.randn(1, 2, 8)
    xn, ln = attn.norm1(x), attn.norm2(lat)
    q = attn.to_q(ln).reshape(1, 2, 2, 4).transpose(1, 2)
    k, v = attn.to_kv(torch.cat([xn, ln], 1)).chunk(2, -1)
    k, v = (t.reshape(1, 5, 2, 4).transpose(1, 2) for t in (k, v))
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    ref = attn.to_out(ref.transpose(1, 2).reshape(1, 2, 8))
    torch.testing.assert_close(attn(x, lat), ref)
