"""RealisID file format: round trip, validation errors, base compatibility."""

import json

import pytest
import safetensors.torch
import torch

from realisid import checkpoint
from tests.helpers import tiny_realisid as T


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model = T.tiny_realisid_model("sdxl", identity_space="arcface-antelopev2-512")
    path = str(tmp_path_factory.mktemp("ck") / "tiny.safetensors")
    checkpoint.save_realisid(model, path)
    return model, path


def test_round_trip_keeps_weights_and_config(saved):
    model, path = saved
    loaded = checkpoint.load_realisid(path)
    assert loaded.config == model.config and loaded.identity_space == "arcface-antelopev2-512"
    assert loaded.base_family == "sdxl" and loaded.crop_size == T.CROP and loaded.has_adm
    for k, v in model.nets.state_dict().items():
        assert torch.equal(loaded.nets.state_dict()[k], v), k
    keys = safetensors.torch.load_file(path).keys()
    assert {k.split(".")[0] for k in keys} == {"local", "global", "projector"}
    torch.testing.assert_close(loaded.null_identity(2), model.null_identity(2))
    assert loaded.get_models() == [loaded.patcher]
    half = checkpoint.load_realisid(path, dtype=torch.float16)
    assert half.weight_dtype == torch.float16
    for k, v in model.nets.state_dict().items():  # the weights themselves, cast once
        assert torch.equal(half.nets.state_dict()[k], v.half()), k


def test_single_branch_model_saves_null_section(tmp_path):
    model = T.tiny_realisid_model("sd15", with_global=False)
    path = str(tmp_path / "local_only.safetensors")
    checkpoint.save_realisid(model, path)
    loaded = checkpoint.load_realisid(path)
    assert loaded.global_net is None and loaded.config["global"] is None and loaded.base_family == "sd15"
    with pytest.raises(ValueError, match="at least one branch"):
        checkpoint.build_realisid_model(T.tiny_unet_config("sd15"), with_local=False, with_global=False)


def test_not_safetensors_and_missing_file(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError, match="not a readable .safetensors"):
        checkpoint.load_realisid(str(bad))
    with pytest.raises(FileNotFoundError, match="not found"):
        checkpoint.load_realisid(str(tmp_path / "nope.safetensors"))


def test_controlnet_file_is_recognised(tmp_path):
    path = str(tmp_path / "cn.safetensors")
    safetensors.torch.save_file({"zero_convs.0.0.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(ValueError, match=r"not a RealisID checkpoint .*looks like a ControlNet"):
        checkpoint.load_realisid(path)


def _rewrite(src, dst, config=None, drop=None, extra=None):
    tensors = safetensors.torch.load_file(src)
    if drop:
        tensors.pop(drop)
    tensors.update(extra or {})
    safetensors.torch.save_file(tensors, dst, metadata={"realisid": json.dumps(config)})


def test_wrong_version_and_key_mismatch(saved, tmp_path):
    model, path = saved
    newer = str(tmp_path / "v2.safetensors")
    _rewrite(path, newer, {**model.config, "version": 2})
    with pytest.raises(ValueError, match="version 2 is not supported"):
        checkpoint.load_realisid(newer)
    broken = str(tmp_path / "broken.safetensors")
    _rewrite(path, broken, model.config, drop="projector.latents", extra={"local.bogus": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"1 missing \(e.g. \['projector.latents'\]\), 1 unexpected"):
        checkpoint.load_realisid(broken)


def test_check_base_compat():
    model = T.tiny_realisid_model("sdxl")
    checkpoint.check_base_compat(model, T.tiny_base_model("sdxl"))
    with pytest.raises(ValueError, match=r"for a SDXL base .* MODEL is SD15-like .*adm_in_channels"):
        checkpoint.check_base_compat(model, T.tiny_base_model("sd15"))


def test_projector_output_matches_context_dim():
    model = checkpoint.build_realisid_model(T.tiny_unet_config("sd15"), projector_config={
        "dim": 32, "depth": 1, "dim_head": 16, "heads": 2, "num_queries": 3, "embedding_dim": 8, "source_tokens": 2})
    assert model.config["projector"]["output_dim"] == T.CONTEXT_DIM
    a, b = torch.randn(1, 2, 8, generator=torch.Generator().manual_seed(0)), torch.randn(1, 2, 8)
    with torch.no_grad():
        out_a, both = model.project(a), model.project(torch.cat([a, b]))
    assert out_a.shape == (1, 3, T.CONTEXT_DIM) and both.shape == (2, 3, T.CONTEXT_DIM)  # the batch follows
    torch.testing.assert_close(both[:1], out_a, atol=1e-5, rtol=1e-5)  # per sample, not mixed across the batch
    gap = float((both[1] - out_a[0]).abs().max())
    assert gap > 1e-3 * float(out_a.abs().max())  # a function of its input


def test_projector_width_follows_the_base_context(pack_node_ids):
    """SDXL keeps InstantID's 1280-wide, 20-head projector; RealisID-Mini's 128-wide context gets a 128-wide one
    (an SDXL-wide projector there was 80 M parameters); an explicit width still wins."""
    from realisid import identity
    from realisid.mini import family

    assert identity.widths_for_context(2048) == {"dim": 1280, "heads": 20}
    mini = checkpoint.build_realisid_model(dict(family.UNET_CONFIG), identity_space="mini")
    assert mini.config["projector"]["dim"] == 128 and mini.config["projector"]["heads"] == 2
    assert mini.config["projector"]["output_dim"] == family.CONTEXT_DIM
    assert sum(p.numel() for p in mini.projector.parameters()) < 2_000_000
    wide = checkpoint.build_realisid_model(dict(family.UNET_CONFIG), identity_space="mini",
                                           projector_config={"dim": 256, "heads": 4}, with_global=False)
    assert wide.config["projector"]["dim"] == 256
