"""InstantID's public weights as RealisID's local branch (a training-free stand-in; method.md §6).

Two files (InstantID model card, https://huggingface.co/InstantX/InstantID):
* `ControlNetModel/diffusion_pytorch_model.safetensors`: IdentityNet, a diffusers-format SDXL ControlNet whose
  cross-attention reads the 16 ArcFace identity tokens (instead of text) and whose hint is the 5-keypoint image.
* `ip-adapter.bin`: {"image_proj": Resampler (512-d ArcFace vector -> 16 x 2048 tokens),
  "ip_adapter": {"<i>.to_k_ip.weight", "<i>.to_v_ip.weight"} for every odd i = the UNet's cross-attention
  processors in diffusers order}. A .safetensors copy with flattened "image_proj." / "ip_adapter." keys works too.

IdentityNet becomes the local branch of a RealisIDModel (no global branch); the Resampler is its projector.
What is checked: the ControlNet is diffusers-format with a 3-channel hint, an SDXL-style `add_embedding` (adm),
cross-attention whose width equals the Resampler's output width, and no union/control-lora extras. An ordinary
SDXL ControlNet with exactly IdentityNet's architecture passes these checks: shapes cannot tell them apart.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re

import comfy.model_management as mm
import comfy.utils
import safetensors.torch
import torch

from realisid import branches, checkpoint, checkpoint_format, geometry, identity, validation
from realisid.ip_adapter import IPAdapterKV

log = logging.getLogger(__name__)

IDENTITY_SPACE = "arcface-antelopev2-512"
# InstantID was trained at 1024 px: 128 latent cells. The local branch re-renders each face crop at this size.
DEFAULT_CROP_SIZE = 128
ARCFACE_DIM = 512
# diffusers' ControlNet heads are 64 channels wide for SDXL; weights do not record the head count
NUM_HEAD_CHANNELS = 64
# The IdentityNet crop is the face box widened by this factor (same centre), so IdentityNet sees a face framed like
# its training portraits instead of one filling the whole crop. 2.0 (face box = half the crop side) is PROVISIONAL:
# it sits in the range of InstantID's head-and-shoulders portraits, where the detector's face box spans about a
# third to a half of the image side (an estimate from its example inputs, not a measurement of its training set),
# and at the default crop of 128 cells (1024 px) it still gives the face box 512 px, about the face size of a 1024 px
# InstantID portrait; wider frames leave the face fewer pixels and paste residuals further into neighbouring faces.
# To be set by "The paper's claims, measured on RealisID-Mini" (issue 16).
DEFAULT_CROP_FRAME = 2.0
MAX_CROP_FRAME = 4.0
# Whether IdentityNet's crops get fresh noise where up-sampling lowered their noise level below the latent's
# (`realisid.geometry.crop_noise_deficit`): measured on the Mini twins of the InstantID-style baseline
# (docs/results-mini.md, "The public-weights trick"); see docs/instantid.md.
DEFAULT_RESTORE_NOISE = False
# Resampler heads of InstantID are 64 wide (heads=20 x 64 = 1280); weights record only heads * dim_head
RESAMPLER_DIM_HEAD = 64
# Used only when a face record lacks its raw ArcFace norm (records from before `embedding_norm` existed).
FALLBACK_ARCFACE_NORM = 22.0
EXPECTED_CONTROLNET = ("InstantID's IdentityNet: ControlNetModel/diffusion_pytorch_model.safetensors from "
                       "InstantX/InstantID, in models/controlnet")
EXPECTED_IP_ADAPTER = "InstantID's ip-adapter.bin (or a .safetensors copy) from InstantX/InstantID, in models/instantid"


class InstantIDFileError(ValueError):
    """A file given as an InstantID part is not one; the message says what was found and what is expected."""


# --------------------------------------------------------------------------------------------- ControlNet --------
def _count(state: dict, pattern: str) -> int:
    """Number of consecutive indices i for which some key starts with pattern.format(i)."""
    n = 0
    while any(k.startswith(pattern.format(n)) for k in state):
        n += 1
    return n


def _transformer_depths(state: dict, prefix: str, res_blocks: int) -> list[int]:
    return [_count(state, f"{prefix}.attentions.{j}.transformer_blocks.{{}}.") for j in range(res_blocks)]


def controlnet_config_from_diffusers(state: dict, name: str = "ControlNet") -> dict:
    """A comfy.cldm ControlNet config read from a diffusers ControlNet's tensor shapes (any size, tiny ones too)."""
    if "controlnet_cond_embedding.conv_in.weight" not in state or "conv_in.weight" not in state:
        raise InstantIDFileError(f"{name} is not a diffusers-format ControlNet (no controlnet_cond_embedding / "
                                 f"conv_in); expected {EXPECTED_CONTROLNET}")
    model_channels, in_channels = state["conv_in.weight"].shape[:2]
    levels = _count(state, "down_blocks.{}.")
    channel_mult, res_blocks, depth = [], [], []
    for i in range(levels):
        channel_mult.append(state[f"down_blocks.{i}.resnets.0.conv2.weight"].shape[0] // model_channels)
        res_blocks.append(_count(state, f"down_blocks.{i}.resnets.{{}}."))
        depth.extend(_transformer_depths(state, f"down_blocks.{i}", res_blocks[-1]))
    to_k = [v for k, v in state.items() if k.endswith("attn2.to_k.weight")]
    proj_in = [v for k, v in state.items() if k.endswith("attentions.0.proj_in.weight")]
    adm = state.get("add_embedding.linear_1.weight")
    return {
        "image_size": 32, "in_channels": int(in_channels), "model_channels": int(model_channels),
        "num_res_blocks": res_blocks, "channel_mult": channel_mult, "transformer_depth": depth,
        "transformer_depth_middle": _count(state, "mid_block.attentions.0.transformer_blocks.{}."),
        "context_dim": int(to_k[0].shape[1]) if to_k else None,
        "use_linear_in_transformer": bool(proj_in) and proj_in[0].ndim == 2,
        "adm_in_channels": None if adm is None else int(adm.shape[1]),
        "num_classes": None if adm is None else "sequential",
        "num_head_channels": NUM_HEAD_CHANNELS, "num_heads": -1, "use_spatial_transformer": True, "legacy": False,
        "use_checkpoint": False, "use_temporal_attention": False, "use_temporal_resblock": False,
        "hint_channels": int(state["controlnet_cond_embedding.conv_in.weight"].shape[1]),
    }


def check_identitynet_config(config: dict, name: str) -> None:
    """Refuse ControlNets that cannot be IdentityNet; say what was found."""
    found = (f"found: hint channels {config['hint_channels']}, context {config['context_dim']}, "
             f"adm {config['adm_in_channels']}, channels {config['model_channels']} x {config['channel_mult']}")
    if config["adm_in_channels"] is None:
        raise InstantIDFileError(f"{name} is an SD1.5-style ControlNet (no add_embedding); InstantID's IdentityNet "
                                 f"is an SDXL ControlNet ({found}). Expected {EXPECTED_CONTROLNET}")
    if config["hint_channels"] != 3:
        raise InstantIDFileError(f"{name} takes a {config['hint_channels']}-channel hint, IdentityNet takes the "
                                 f"3-channel keypoint image ({found}). Expected {EXPECTED_CONTROLNET}")
    if config["context_dim"] is None or not any(config["transformer_depth"]):
        raise InstantIDFileError(f"{name} has no cross-attention blocks, so it cannot read identity tokens "
                                 f"({found}). Expected {EXPECTED_CONTROLNET}")


def _attention_widths(state: dict) -> dict[str, int]:
    """{attention module prefix: its inner width} for every self- and cross-attention of a diffusers ControlNet."""
    suffix = ".to_q.weight"
    return {k[: -len(suffix)]: int(v.shape[0]) for k, v in state.items()
            if k.endswith(suffix) and (".attn1" in k or ".attn2" in k)}


def _diffusers_config(path: str) -> dict | None:
    """The diffusers `config.json` saved next to the weights (the ControlNetModel/ folder layout), if any."""
    candidate = os.path.join(os.path.dirname(path), "config.json")
    try:
        with open(candidate, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError):  # absent or not JSON: nothing said about the heads
        return None
    return config if isinstance(config, dict) and config.get("_class_name") == "ControlNetModel" else None


def _configured_head_widths(config: dict) -> list[float] | None:
    """Per down level: channels / heads from a diffusers ControlNetModel config. diffusers reads
    `num_attention_heads` and, when it is unset, the misnamed `attention_head_dim` as the HEAD COUNT."""
    heads = config.get("num_attention_heads") or config.get("attention_head_dim")
    channels = config.get("block_out_channels")
    if heads is None or not isinstance(channels, list) or not channels:
        return None
    heads = heads if isinstance(heads, list) else [heads] * len(channels)
    if len(heads) != len(channels) or not all(isinstance(h, int) and h > 0 for h in heads):
        return None
    return [c / h for c, h in zip(channels, heads, strict=True)]


def check_head_widths(state: dict, name: str, path: str | None = None) -> None:
    """Refuse an IdentityNet whose attention heads are not NUM_HEAD_CHANNELS wide.

    The weights do not record the head count, and the loader builds NUM_HEAD_CHANNELS-wide heads (SDXL's, and
    InstantID's IdentityNet's: attention_head_dim [5, 10, 20] over [320, 640, 1280] channels). Loading a file with
    other heads would compute a different network with the same weights. Two things can tell: an attention width
    that 64-wide heads cannot tile, and the diffusers config.json saved next to the file.
    """
    advice = (f"the loader assumes {NUM_HEAD_CHANNELS}-channel attention heads, as InstantID's IdentityNet has; "
              f"use {EXPECTED_CONTROLNET}")
    for module, width in _attention_widths(state).items():
        if width % NUM_HEAD_CHANNELS:
            raise InstantIDFileError(f"{name}: attention {module} is {width} channels wide, which "
                                     f"{NUM_HEAD_CHANNELS}-channel heads cannot split, so its heads are of another "
                                     f"width: {advice}")
    config = _diffusers_config(path) if path else None
    widths = _configured_head_widths(config) if config else None
    if widths and any(w != NUM_HEAD_CHANNELS for w in widths):
        raise InstantIDFileError(f"{name}: its config.json gives attention heads {[round(w, 2) for w in widths]} "
                                 f"channels wide per level (block_out_channels / heads), but {advice}")


def _controlnet_key_map(config: dict, state: dict) -> dict:
    """diffusers key -> comfy.cldm key: the UNet encoder map plus the ControlNet-only parts."""
    unet = {**config, "transformer_depth_output": [0] * (sum(config["num_res_blocks"]) + len(config["num_res_blocks"]))}
    mapping = dict(comfy.utils.unet_to_diffusers(unet))
    mapping["controlnet_mid_block.weight"] = "middle_block_out.0.weight"
    mapping["controlnet_mid_block.bias"] = "middle_block_out.0.bias"
    blocks = _count(state, "controlnet_cond_embedding.blocks.{}.")
    for suffix in ("weight", "bias"):
        for i in range(_count(state, "controlnet_down_blocks.{}.")):
            mapping[f"controlnet_down_blocks.{i}.{suffix}"] = f"zero_convs.{i}.0.{suffix}"
        # cldm's hint block is Sequential(conv, SiLU, conv, SiLU, ...): convolution j sits at index 2 * j
        mapping[f"controlnet_cond_embedding.conv_in.{suffix}"] = f"input_hint_block.0.{suffix}"
        for j in range(blocks):
            mapping[f"controlnet_cond_embedding.blocks.{j}.{suffix}"] = f"input_hint_block.{2 * (j + 1)}.{suffix}"
        mapping[f"controlnet_cond_embedding.conv_out.{suffix}"] = f"input_hint_block.{2 * (blocks + 1)}.{suffix}"
    return mapping


def _check_weights(state: dict, name: str, expected: str) -> None:
    """Every value a finite float tensor (a pickle may hold anything; NaN weights give an all-NaN image)."""
    for key, value in state.items():
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            found = value.dtype if isinstance(value, torch.Tensor) else type(value).__name__
            raise InstantIDFileError(f"{name}: entry {key!r} is {found}, not a float tensor. Expected {expected}")
        if not bool(torch.isfinite(value).all()):
            raise InstantIDFileError(f"{name}: tensor {key!r} holds NaN or infinite values. Expected {expected}")


def _read_controlnet(path: str, name: str) -> dict:
    try:
        state = comfy.utils.load_torch_file(path, safe_load=True)
    except Exception as e:  # corrupt safetensors, refused pickles: each library raises its own type
        raise InstantIDFileError(f"{name} (the control_net file) cannot be read as weights (a .safetensors, or a "
                                 f"weights-only torch pickle): {type(e).__name__}: {e}. Expected {EXPECTED_CONTROLNET}") from e
    if not isinstance(state, dict) or not state:
        raise InstantIDFileError(f"{name} (the control_net file) holds no tensors (found {type(state).__name__}). "
                                 f"Expected {EXPECTED_CONTROLNET}")
    _check_weights(state, name, EXPECTED_CONTROLNET)
    return state


def load_identitynet(path: str, dtype: torch.dtype | None = None):
    """IdentityNet as a comfy.cldm.cldm.ControlNet plus its config; raises InstantIDFileError on other files."""
    name = os.path.basename(path)
    state = _read_controlnet(path, name)
    if any(k.startswith(("control_add_embedding.", "task_embedding")) for k in state) or "lora_controlnet" in state:
        raise InstantIDFileError(f"{name} is a union / control-LoRA ControlNet, not IdentityNet. "
                                 f"Expected {EXPECTED_CONTROLNET}")
    try:
        config = controlnet_config_from_diffusers(state, name)
    except (KeyError, ValueError, IndexError, ZeroDivisionError) as e:  # keys present, shapes not a ControlNet's
        if isinstance(e, InstantIDFileError):
            raise
        raise InstantIDFileError(f"{name}: its tensors do not describe a diffusers ControlNet ({type(e).__name__}: "
                                 f"{e}). Expected {EXPECTED_CONTROLNET}") from e
    check_identitynet_config(config, name)
    check_head_widths(state, name, path)
    hint_channels = config.pop("hint_channels")
    mapping = _controlnet_key_map(config, state)
    converted = {mapping[k]: v for k, v in state.items() if k in mapping}
    weight_dtype = dtype or next(iter(state.values())).dtype
    manual_cast = mm.unet_manual_cast(weight_dtype, mm.get_torch_device())
    net = branches.build_branch(config, hint_channels, dtype=weight_dtype, manual_cast_dtype=manual_cast)
    expected = set(net.state_dict())
    leftover = sorted(set(state) - set(mapping))
    missing = sorted(expected - set(converted))
    if leftover or missing:
        raise InstantIDFileError(f"{name}: tensors do not form an IdentityNet-shaped ControlNet: {len(missing)} "
                                 f"missing (e.g. {missing[:3]}), {len(leftover)} unexpected (e.g. {leftover[:3]}). "
                                 f"Expected {EXPECTED_CONTROLNET}")
    try:
        net.load_state_dict(converted, strict=True)
    except RuntimeError as e:  # a shape mismatch: the file's layout is not the one its shapes suggested
        raise InstantIDFileError(f"{name}: tensor shapes do not fit an IdentityNet-shaped ControlNet: {e}") from e
    return net, hint_channels, manual_cast, config


# --------------------------------------------------------------------------------------------- IP-Adapter --------
def ip_adapter_from_weights(weights: dict[str, torch.Tensor], name: str = "ip_adapter") -> IPAdapterKV:
    """InstantID's `<i>.to_k_ip.weight` / `<i>.to_v_ip.weight` tensors (diffusers processor index i, odd: the attn2
    processors) as the pack's IPAdapterKV, every key and shape checked first."""
    shapes: dict[str, dict[str, tuple[int, int]]] = {"k": {}, "v": {}}
    for key, value in weights.items():
        index, kind = _ip_key(key, name)
        if value.ndim != 2:
            raise InstantIDFileError(f"{name}: ip_adapter weight {key!r} has shape {list(value.shape)}, expected a "
                                     f"2-d (width, context) matrix. Expected {EXPECTED_IP_ADAPTER}")
        shapes[kind][index] = tuple(value.shape)
    if set(shapes["k"]) != set(shapes["v"]):
        raise InstantIDFileError(f"{name}: ip_adapter to_k_ip and to_v_ip indices differ "
                                 f"({sorted(set(shapes['k']) ^ set(shapes['v']), key=int)[:5]})")
    contexts = {shape[1] for table in shapes.values() for shape in table.values()}
    if len(contexts) != 1 or any(shapes["k"][i] != shapes["v"][i] for i in shapes["k"]):
        raise InstantIDFileError(f"{name}: ip_adapter projections differ in shape (context widths {sorted(contexts)}); "
                                 f"every to_k_ip / to_v_ip pair must map one context width. Expected "
                                 f"{EXPECTED_IP_ADAPTER}")
    ip_adapter = IPAdapterKV({int(i): shape[0] for i, shape in shapes["k"].items()}, contexts.pop())
    with torch.no_grad():
        for key, value in weights.items():
            index, kind = _ip_key(key, name)
            (ip_adapter.to_k if kind == "k" else ip_adapter.to_v)[index].weight.copy_(value.float())
    return ip_adapter


_IP_KEY = re.compile(r"^(\d+)\.to_([kv])_ip\.weight$")


def _ip_key(key: str, name: str) -> tuple[str, str]:
    match = _IP_KEY.match(key)
    if not match:
        raise InstantIDFileError(f"{name}: unexpected ip_adapter key {key!r}; InstantID's are '<i>.to_k_ip.weight' and "
                                 f"'<i>.to_v_ip.weight'. Expected {EXPECTED_IP_ADAPTER}")
    return match.group(1), match.group(2)


def read_ip_adapter_file(path: str) -> tuple[dict, dict]:
    """(image_proj state dict, ip_adapter state dict) from InstantID's .bin (weights-only unpickling) or a
    .safetensors with flattened 'image_proj.' / 'ip_adapter.' keys."""
    name = os.path.basename(path)
    try:
        data = _read_ip_adapter_data(path)
    except Exception as e:  # corrupt safetensors, refused or broken pickles: each library raises its own type
        raise InstantIDFileError(f"{name} (the ip_adapter file) cannot be read as weights (a .safetensors, or a "
                                 f"weights-only torch pickle): {type(e).__name__}: {e}. Expected {EXPECTED_IP_ADAPTER}") from e
    sections = [data.get(k) for k in ("image_proj", "ip_adapter")] if isinstance(data, dict) else []
    if not sections or not all(isinstance(v, dict) and v for v in sections):
        found = sorted(map(str, data))[:6] if isinstance(data, dict) else type(data).__name__
        raise InstantIDFileError(f"{name} has no 'image_proj' and 'ip_adapter' sections (found {found}); "
                                 f"expected {EXPECTED_IP_ADAPTER}")
    for section in sections:
        _check_weights(section, name, EXPECTED_IP_ADAPTER)
    return dict(sections[0]), dict(sections[1])


def _read_ip_adapter_data(path: str):
    """The raw content: InstantID's pickle (weights-only) or a .safetensors with flattened section keys."""
    if not path.lower().endswith(".safetensors"):
        return torch.load(path, map_location="cpu", weights_only=True)
    data = {"image_proj": {}, "ip_adapter": {}}
    for key, value in safetensors.torch.load_file(path).items():
        head, _, rest = key.partition(".")
        if head in data:
            data[head][rest] = value
    return data


def resampler_config_from_state(state: dict, name: str = "image_proj") -> dict:
    """The Resampler config that InstantID's image_proj weights describe (heads assume 64-wide heads)."""
    try:
        _, num_queries, dim = state["latents"].shape
        inner = state["layers.0.0.to_q.weight"].shape[0]
        config = {"dim": int(dim), "depth": _count(state, "layers.{}."), "dim_head": RESAMPLER_DIM_HEAD,
                  "heads": max(1, int(inner) // RESAMPLER_DIM_HEAD), "num_queries": int(num_queries),
                  "embedding_dim": int(state["proj_in.weight"].shape[1]),
                  "output_dim": int(state["proj_out.weight"].shape[0]),
                  "ff_mult": int(state["layers.0.1.1.weight"].shape[0]) // int(dim), "source_tokens": 1}
    except KeyError as e:
        raise InstantIDFileError(f"{name}: the image_proj section lacks {e}; it is not InstantID's Resampler. "
                                 f"Expected {EXPECTED_IP_ADAPTER}") from e
    except (ValueError, IndexError, ZeroDivisionError) as e:  # tensors of the wrong rank or an empty width
        raise InstantIDFileError(f"{name}: the image_proj tensors have shapes no Resampler has ({e}). "
                                 f"Expected {EXPECTED_IP_ADAPTER}") from e
    if config["embedding_dim"] != ARCFACE_DIM:
        raise InstantIDFileError(f"{name}: its Resampler takes {config['embedding_dim']}-d inputs; InstantID's "
                                 f"takes the {ARCFACE_DIM}-d ArcFace embedding (a CLIP-image IP-Adapter?). "
                                 f"Expected {EXPECTED_IP_ADAPTER}")
    if inner % RESAMPLER_DIM_HEAD:
        config.update(dim_head=int(inner), heads=1)
    return config


def load_projector(image_proj: dict, name: str) -> tuple[identity.Resampler, dict]:
    config = resampler_config_from_state(image_proj, name)
    projector = identity.build_projector(config)
    try:
        projector.load_state_dict({k: v.float() for k, v in image_proj.items()}, strict=True)
    except RuntimeError as e:
        raise InstantIDFileError(f"{name}: image_proj weights do not fit InstantID's Resampler: {e}") from e
    return projector, config


# --------------------------------------------------------------------------------------------- model ---------
class InstantIDModel(checkpoint.RealisIDModel):
    """A RealisIDModel whose local branch is IdentityNet and whose projector is InstantID's Resampler.

    `ip_adapter` (IPAdapterKV, kept on the CPU) feeds the optional regional IP-Adapter patch of the base UNet.
    `project()` takes raw ArcFace vectors (norm ~20-30, as InstantID was trained); unit vectors are rescaled by
    FALLBACK_ARCFACE_NORM with a warning (pass record.embedding * record.embedding_norm instead).
    """

    def __init__(self, config, nets, ip_adapter: IPAdapterKV, **kwargs):
        super().__init__(config, nets, **kwargs)
        self._ip_adapter = ip_adapter

    @property
    def ip_adapter(self) -> IPAdapterKV:
        """InstantID's, kept out of `nets` (its file is separate from IdentityNet's)."""
        return self._ip_adapter

    def project(self, identity_source: torch.Tensor) -> torch.Tensor:
        norms = identity_source.float().norm(dim=-1, keepdim=True)
        unit = (norms - 1.0).abs() < 1e-2
        if bool(unit.any()):
            log.warning("InstantID: identity embedding is L2-normalised; rescaling to norm %.1f. Its Resampler was "
                        "trained on raw ArcFace vectors: use a face record with embedding_norm.",
                        FALLBACK_ARCFACE_NORM)
            identity_source = torch.where(unit, identity_source * FALLBACK_ARCFACE_NORM, identity_source)
        return super().project(identity_source)


def instantid_config(cn_config: dict, proj_config: dict, crop_size: int, files: dict,
                     crop_frame: float = DEFAULT_CROP_FRAME, restore_noise: bool = DEFAULT_RESTORE_NOISE) -> dict:
    unet_config = {k: v for k, v in cn_config.items() if k != "hint_channels"}
    return {"format": checkpoint_format.FORMAT, "version": checkpoint_format.VERSION, "kind": "instantid",
            "identity_space": IDENTITY_SPACE, "identity_input": "raw_arcface", "crop_size": int(crop_size),
            "crop_frame": float(crop_frame), "restore_noise": bool(restore_noise), "hint": "kps5",
            "base_family": "sdxl", "projector": proj_config,
            "local": {"hint_channels": 3, "unet_config": branches.controlnet_config_from_unet(unet_config)},
            "global": None, "files": files}


def load_instantid(control_net_path: str, ip_adapter_path: str, crop_size: int = DEFAULT_CROP_SIZE,
                   dtype: torch.dtype | None = None, crop_frame: float = DEFAULT_CROP_FRAME,
                   restore_noise: bool = DEFAULT_RESTORE_NOISE) -> InstantIDModel:
    """IdentityNet + InstantID's Resampler as a RealisID model (local branch only), with the IP-Adapter K/V.

    crop_size: latent cells each face crop is re-rendered at (default 128 = InstantID's 1024 px training scale).
    crop_frame: side of IdentityNet's crop over the face box's side (DEFAULT_CROP_FRAME, provisional), see
    `framed_box`. restore_noise: top the crops' noise back up to the latent's level (`control.restores_noise`).
    """
    crop_size = validation.positive_int("crop_size", crop_size, multiple_of=8, maximum=checkpoint_format.MAX_CROP)
    crop_frame = checked_crop_frame(crop_frame)
    image_proj, ip_weights = read_ip_adapter_file(ip_adapter_path)
    ip_name = os.path.basename(ip_adapter_path)
    projector, proj_config = load_projector(image_proj, ip_name)
    ip_adapter = ip_adapter_from_weights(ip_weights, ip_name)
    net, _, manual_cast, cn_config = load_identitynet(control_net_path, dtype)
    cn_name = os.path.basename(control_net_path)
    if cn_config["context_dim"] != proj_config["output_dim"] or ip_adapter.context_dim() != proj_config["output_dim"]:
        raise InstantIDFileError(
            f"{cn_name} cross-attends to {cn_config['context_dim']}-wide tokens, but {ip_name} makes "
            f"{proj_config['output_dim']}-wide identity tokens (IP-Adapter K/V take {ip_adapter.context_dim()}): "
            f"these two files are not InstantID's pair. Expected {EXPECTED_CONTROLNET} and {EXPECTED_IP_ADAPTER}")
    files = {"control_net": cn_name, "ip_adapter": ip_name}
    config = instantid_config(cn_config, proj_config, crop_size, files, crop_frame, bool(restore_noise))
    nets = checkpoint.RealisIDNets(net, None, projector.to(next(net.parameters()).dtype))
    log.info("InstantID loaded: IdentityNet %s (context %d), Resampler %s, %d IP-Adapter layers, crop %d",
             cn_name, cn_config["context_dim"], ip_name, len(ip_adapter.indices), crop_size)
    return InstantIDModel(config, nets, ip_adapter, manual_cast_dtype=manual_cast)


def checked_crop_frame(crop_frame) -> float:
    frame = validation.finite_number("crop_frame", crop_frame)
    if not 1.0 <= frame <= MAX_CROP_FRAME:
        raise validation.InputError(f"crop_frame is IdentityNet's crop side over the face box side, in "
                                    f"[1, {MAX_CROP_FRAME}] (1 = the face fills the crop), got {crop_frame}")
    return frame


def crop_frame(model) -> float:
    """The model's crop frame: the one its config declares (InstantID's; a full-latent network run as the local
    branch, as `realisid.mini.paper`'s baseline twins are), else 1 (the crop is the face box): trained RealisID
    models learnt their own framing (`box_expand`)."""
    return checked_crop_frame(model.config.get("crop_frame", 1.0))


def framed_box(box, frame: float):
    """The crop around a face box: same centre, side x `frame`. A geometry.FaceSquare stays one (so it is still
    resolved square against each latent); (x0, y0, x1, y1) fractions are widened about their centre.

    A face condition framed this way pairs with its hint drawn in the driver's square_box(expand * frame): the
    keypoints then land on the face box inside the wider crop, as InstantID draws them on a whole portrait.
    """
    if isinstance(box, geometry.FaceSquare):
        return dataclasses.replace(box, side=box.side * frame)
    x0, y0, x1, y1 = (float(v) for v in box)
    cx, cy, hw, hh = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) * frame / 2, (y1 - y0) * frame / 2
    return (cx - hw, cy - hh, cx + hw, cy + hh)


def check_base(model, base_model) -> None:
    """An InstantID model needs an SDXL base whose UNet its residuals fit; SD1.5 gets a clear error."""
    base = branches.base_config_from_model(base_model)
    if checkpoint.family_of(base) != "sdxl":
        raise ValueError("InstantID works only with SDXL checkpoints (its SD1.5 model was never released); the "
                         f"MODEL is an SD1.5-style UNet (context {base.get('context_dim')}, no adm). "
                         "Load an SDXL checkpoint.")
    checkpoint.check_base_compat(model, base_model)


def is_instantid(model) -> bool:
    return getattr(model, "config", {}).get("kind") == "instantid"
