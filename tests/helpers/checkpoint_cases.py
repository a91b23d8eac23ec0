"""Hostile RealisID checkpoint headers, shared by the unit tier (the format read without ComfyUI,
tests/unit/test_checkpoint_format.py) and the host tier (the loader, tests/test_bad_inputs_loaders.py)."""

from __future__ import annotations

import pathlib
import pickle

import torch

# the config save_realisid writes for tests/helpers/tiny_realisid.py's SDXL model (written out here, so the unit
# tier needs no ComfyUI to build one)
_TINY_UNET = {"use_checkpoint": False, "image_size": 32, "in_channels": 4, "model_channels": 64,
              "num_res_blocks": [1, 1], "channel_mult": [1, 2], "transformer_depth": [0, 1],
              "transformer_depth_middle": 1, "use_spatial_transformer": True, "legacy": False,
              "use_linear_in_transformer": True, "context_dim": 32, "adm_in_channels": 1568,
              "num_classes": "sequential", "num_heads": -1, "num_head_channels": 32}
VALID_CONFIG = {"format": "realisid", "version": 1, "base_family": "sdxl", "identity_space": "test-space-16",
                "crop_size": 8, "projector": {"dim": 32, "depth": 1, "dim_head": 16, "heads": 2, "num_queries": 4,
                                              "embedding_dim": 16, "output_dim": 32, "ff_mult": 2,
                                              "source_tokens": 1},
                "local": {"hint_channels": 3, "unet_config": dict(_TINY_UNET)},
                "global": {"hint_channels": 1, "unet_config": dict(_TINY_UNET)}}


def unet(cfg, branch="local"):
    return cfg[branch]["unet_config"]


def setter(*path, value):
    """A config mutation that sets cfg[path...] = value."""
    def mutate(cfg):
        target = cfg
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return mutate


def deleter(key):
    return lambda cfg: cfg.pop(key)


def unet_setter(key, value, branch="local"):
    def mutate(cfg):
        unet(cfg, branch)[key] = value
    return mutate


# (case id, config mutation, fragments the message must contain besides the file name)
CONFIG_CASES = [
    ("format-missing", deleter("format"), "format is None"),
    ("format-other", setter("format", value="ipadapter"), "format is 'ipadapter'"),
    ("version-2", setter("version", value=2), "version 2 is not supported"),
    ("version-string", setter("version", value="1"), "version '1'"),
    ("version-null", setter("version", value=None), "version None"),
    *[(f"lacks-{k}", deleter(k), f"lacks '{k}'")
      for k in ("base_family", "identity_space", "crop_size", "projector", "local", "global")],
    ("base_family-int", setter("base_family", value=5), "'base_family' is 5"),
    ("base_family-empty", setter("base_family", value=""), "'base_family'"),
    ("identity_space-null", setter("identity_space", value=None), "'identity_space' is None"),
    ("identity_space-list", setter("identity_space", value=["a"]), "'identity_space'"),
    ("both-branches-null", lambda c: c.update(local=None, **{"global": None}), "both branches"),
    ("local-list", setter("local", value=[]), "'local' is list"),
    ("local-string", setter("local", value="x"), "'local' is str"),
    ("local-no-unet_config", setter("local", value={"hint_channels": 3}), "'local' is dict without a 'unet_config'"),
    ("global-unet_config-list", setter("global", "unet_config", value=[1]), "'global'"),
    ("local-hint-4", setter("local", "hint_channels", value=4), "local.hint_channels is 4, expected 3"),
    ("local-hint-string", setter("local", "hint_channels", value="3"), "local.hint_channels is '3'"),
    ("local-hint-null", setter("local", "hint_channels", value=None), "local.hint_channels is None"),
    ("global-hint-3", setter("global", "hint_channels", value=3), "global.hint_channels is 3, expected 1"),
    ("global-hint-kind-unknown", setter("global", "hint", value="keypoints"), "global.hint is 'keypoints'"),
    ("global-face_hint-1-channel", setter("global", "hint", value="face_hint"),
     "global.hint_channels is 1, expected 3"),
    *[(f"model_channels-{v!r}", unet_setter("model_channels", v), f"local.unet_config.model_channels is {v!r}")
      for v in (10**6, 0, -1, "abc", 3.5, True, None)],
    ("global-model_channels-huge", unet_setter("model_channels", 10**6, "global"),
     "global.unet_config.model_channels is 1000000"),
    ("in_channels-huge", unet_setter("in_channels", 10**4), "unet_config.in_channels is 10000"),
    ("context_dim-huge", unet_setter("context_dim", 10**9), "unet_config.context_dim is 1000000000"),
    ("context_dim-missing", lambda c: unet(c).pop("context_dim"), "unet_config.context_dim is None"),
    ("adm-huge", unet_setter("adm_in_channels", 10**7), "unet_config.adm_in_channels is 10000000"),
    ("adm-string", unet_setter("adm_in_channels", "x"), "unet_config.adm_in_channels is 'x'"),
    ("channel_mult-empty", unet_setter("channel_mult", []), "unet_config.channel_mult is []"),
    ("channel_mult-huge", unet_setter("channel_mult", [1, 10**6]), "unet_config.channel_mult[1] is 1000000"),
    ("channel_mult-string", unet_setter("channel_mult", "abc"), "unet_config.channel_mult is 'abc'"),
    ("channel_mult-9-levels", unet_setter("channel_mult", [1] * 9), "channel_mult has 9 levels"),
    ("num_res_blocks-short", unet_setter("num_res_blocks", [1]), "unet_config.num_res_blocks is [1]"),
    ("num_res_blocks-huge", unet_setter("num_res_blocks", 10**3), "unet_config.num_res_blocks is 1000"),
    ("num_res_blocks-string-entry", unet_setter("num_res_blocks", [1, "a"]), "unet_config.num_res_blocks[1] is 'a'"),
    ("transformer_depth-huge", unet_setter("transformer_depth", [0, 10**4]),
     "unet_config.transformer_depth[1] is 10000"),
    ("transformer_depth-string", unet_setter("transformer_depth", "x"), "unet_config.transformer_depth is 'x'"),
    ("transformer_depth_middle-huge", unet_setter("transformer_depth_middle", 10**5),
     "unet_config.transformer_depth_middle is 100000"),
    ("projector-list", setter("projector", value=[1, 2]), "'projector' is [1, 2]"),
    ("projector-unknown-key", setter("projector", "bogus", value=1), "unknown keys ['bogus']"),
    ("projector-dim-huge", setter("projector", "dim", value=10**6), "projector.dim is 1000000"),
    ("projector-heads-0", setter("projector", "heads", value=0), "projector.heads is 0"),
    ("projector-depth-negative", setter("projector", "depth", value=-1), "projector.depth is -1"),
    ("projector-num_queries-string", setter("projector", "num_queries", value="x"), "projector.num_queries is 'x'"),
    ("projector-output_dim-mismatch", setter("projector", "output_dim", value=64), "projector.output_dim is 64"),
    *[(f"crop_size-{v!r}", setter("crop_size", value=v), f"crop_size is {v!r}")
      for v in (0, -8, "abc", 3, 10**6, 8.0, True, None, [8])],
]


METADATA_CASES = [("json-list", "[1, 2]", "JSON list"), ("json-string", '"abc"', "JSON str"),
                  ("json-null", "null", "JSON NoneType"), ("json-number", "7", "JSON int"),
                  ("not-json", "{format: realisid", "not valid JSON"), ("empty-metadata", "", "not valid JSON")]


def _truncated(valid: bytes) -> bytes:
    return valid[: len(valid) // 2]


class Unsafe:
    """A pickle that would run code when unpickled (it must never be)."""

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path("/tmp/realisid_unpickled_checkpoint"),))


FILE_CASES = [
    ("garbage", lambda valid: b"\x00garbage" * 10, "not a readable .safetensors"),
    ("empty", lambda valid: b"", "not a readable .safetensors"),
    ("header-too-large", lambda valid: (2**40).to_bytes(8, "little") + b"{}", "not a readable .safetensors"),
    ("truncated", _truncated, "not a readable .safetensors"),
    ("pickle", lambda valid: pickle.dumps(Unsafe()), "not a readable .safetensors"),
    ("json-text", lambda valid: b'{"realisid": {}}', "not a readable .safetensors"),
]


FOREIGN_CASES = [
    ("controlnet", {"zero_convs.0.0.weight": torch.zeros(2)}, "looks like a ControlNet"),
    ("ip_adapter", {"image_proj.latents": torch.zeros(2)}, "looks like an IP-Adapter"),
    ("sd_checkpoint", {"model.diffusion_model.out.0.weight": torch.zeros(2)}, "looks like a full SD checkpoint"),
    ("lora", {"lora_unet_down.weight": torch.zeros(2)}, "looks like a LoRA"),
    ("unknown", {"w": torch.zeros(2)}, "looks like an unknown model"),
]
