"""The RealisID model (local branch, global branch, identity projector): build, save, load, validate against
the base. The file format itself (header, config, checks before anything is built): `realisid.checkpoint_format`.
"""

from __future__ import annotations

import json
import logging
import os

import comfy.model_management as mm
import comfy.model_patcher
import safetensors.torch
import torch
from torch import nn

from realisid import branches, checkpoint_format, identity
from realisid.checkpoint_format import (
    FORMAT,
    GLOBAL_HINTS,
    LOCAL_HINT_CHANNELS,
    METADATA_KEY,
    VERSION,
    fail,
    parse_config,
    read_header,
)
from realisid.ip_adapter import TRAINED_WEIGHT, IPAdapterKV

log = logging.getLogger(__name__)

DEFAULT_CROP_SIZE = 64
# keys compared between a RealisID model and a base MODEL: the residuals must line up with the base UNet
COMPAT_KEYS = ("in_channels", "model_channels", "channel_mult", "num_res_blocks", "context_dim", "adm_in_channels")


class RealisIDNets(nn.Module):
    """Container of the networks; its state_dict keys are the file's keys (local., global., projector., and
    ip_adapter. for a model trained with identity tokens in the base's cross-attention)."""

    def __init__(self, local_net, global_net, projector, ip_adapter: IPAdapterKV | None = None):
        super().__init__()
        self.add_module("local", local_net)
        self.add_module("global", global_net)  # a keyword in Python, fine as a module name
        self.add_module("projector", projector)
        self.add_module("ip_adapter", ip_adapter)


def family_of(unet_config: dict) -> str:
    """"sdxl" for adm ('y') UNets, "sd15" otherwise (the two families RealisID branches are built for)."""
    return "sdxl" if unet_config.get("adm_in_channels") else "sd15"


class RealisIDModel:
    """One copy of each branch and the projector, wrapped in one ModelPatcher for ComfyUI's memory manager."""

    def __init__(self, config: dict, nets: RealisIDNets, load_device=None, offload_device=None,
                 manual_cast_dtype: torch.dtype | None = None):
        self.config = config
        self.nets = nets
        self.manual_cast_dtype = manual_cast_dtype
        self.load_device = load_device if load_device is not None else mm.get_torch_device()
        offload = offload_device if offload_device is not None else mm.unet_offload_device()
        self.patcher = comfy.model_patcher.ModelPatcher(nets, load_device=self.load_device, offload_device=offload)

    local_net = property(lambda self: self.nets._modules["local"])
    global_net = property(lambda self: self.nets._modules["global"])
    projector = property(lambda self: self.nets._modules["projector"])
    identity_space = property(lambda self: self.config["identity_space"])
    crop_size = property(lambda self: int(self.config["crop_size"]))
    base_family = property(lambda self: self.config["base_family"])
    global_hint = property(lambda self: checkpoint_format.global_hint_kind(self.config))
    ip_adapter = property(lambda self: self.nets._modules["ip_adapter"])  # None unless trained with one

    @property
    def weight_dtype(self) -> torch.dtype:
        return next(self.nets.parameters()).dtype

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype of the branches (the manual-cast dtype if set, else the weights' dtype)."""
        return self.manual_cast_dtype or self.weight_dtype

    @property
    def has_adm(self) -> bool:
        return bool(self.unet_config.get("adm_in_channels"))

    @property
    def unet_config(self) -> dict:
        branch = self.config.get("local") or self.config.get("global")
        return branch["unet_config"]

    def get_models(self) -> list:
        return [self.patcher]

    def project(self, identity_source: torch.Tensor) -> torch.Tensor:
        """Identity source ((B, N, E) tokens or (B, E) vector) -> p_id (B, num_queries, context_dim)."""
        tensors = {**dict(self.projector.named_parameters()), **dict(self.projector.named_buffers())}
        ref = next(iter(tensors.values()))
        if len({t.device for t in tensors.values()}) == 1:
            p_id = self.projector(identity_source.to(device=ref.device, dtype=ref.dtype))
        else:  # ComfyUI's memory manager left the (plain torch) projector partly offloaded: lowvram / partial unload
            p_id = call_on_device(self.projector, tensors, identity_source.to(ref.dtype), self.load_device)
        return p_id.to(self.dtype)

    def null_identity(self, batch: int = 1) -> torch.Tensor:
        """p_id of a zero identity source: the "no ID" input of condition dropout and of the guidance."""
        cfg = self.config["projector"]
        zeros = torch.zeros(batch, int(cfg["source_tokens"]), int(cfg["embedding_dim"]))
        return self.project(zeros)


def call_on_device(module: nn.Module, tensors: dict, x: torch.Tensor, device) -> torch.Tensor:
    """module(x) with every parameter/buffer in `tensors` copied to `device` for this call (the module is untouched,
    so ComfyUI's record of where its weights live stays true)."""
    moved = {name: t.to(device) for name, t in tensors.items()}
    return torch.func.functional_call(module, moved, (x.to(device),))


def build_realisid_model(unet_config: dict, base_state_dict: dict | None = None, identity_space: str = "unknown",
                         projector_config: dict | None = None, crop_size: int = DEFAULT_CROP_SIZE,
                         with_local: bool = True, with_global: bool = True, dtype: torch.dtype = torch.float32,
                         base_family: str | None = None, manual_cast_dtype: torch.dtype | None = None,
                         init: bool = True, global_hint: str = "box_mask",
                         ip_adapter_widths: list[int] | None = None) -> RealisIDModel:
    """A new RealisID model for a base UNet. With base_state_dict the branches start from the UNet encoder
    (ControlNet init); without it, random N(0, 0.02) with zero outputs. init=False leaves weights unset (loading).
    global_hint: "box_mask" (RealisID) or "face_hint" (the face drawing on the whole image: InstantID-style).
    ip_adapter_widths: the base's cross-attention widths (`ip_adapter.attn2_widths`) to add an IP-Adapter (zero;
    `ip_adapter.init_from_unet` starts it from the base)."""
    if not (with_local or with_global):
        raise ValueError("a RealisID model needs at least one branch (with_local or with_global)")
    if global_hint not in GLOBAL_HINTS:
        raise ValueError(f"global_hint must be one of {sorted(GLOBAL_HINTS)}, got {global_hint!r}")
    cn_config = branches.controlnet_config_from_unet(unet_config)
    context_dim = int(cn_config["context_dim"])
    proj_config = identity.projector_config({**identity.widths_for_context(context_dim), **(projector_config or {})},
                                            output_dim=context_dim)
    config = {"format": FORMAT, "version": VERSION, "base_family": base_family or family_of(unet_config),
              "identity_space": identity_space, "crop_size": int(crop_size), "projector": proj_config,
              "local": {"hint_channels": LOCAL_HINT_CHANNELS, "unet_config": cn_config} if with_local else None,
              "global": _global_section(cn_config, global_hint) if with_global else None}
    if ip_adapter_widths:
        config["ip_adapter"] = {"widths": [int(w) for w in ip_adapter_widths]}
    return _model_from_config(config, dtype, manual_cast_dtype, base_state_dict, init)


def _global_section(cn_config: dict, hint: str) -> dict:
    section = {"hint_channels": GLOBAL_HINTS[hint], "unet_config": cn_config}
    if hint != "box_mask":  # box-mask files (every RealisID model) keep the config they always had
        section["hint"] = hint
    return section


def _build_branch(section: dict | None, dtype, manual_cast_dtype):
    if section is None:
        return None
    return branches.build_branch(section["unet_config"], int(section["hint_channels"]), dtype=dtype,
                                 manual_cast_dtype=manual_cast_dtype)


def _init_branch(net, base_state_dict) -> None:
    if net is None:
        return
    if base_state_dict is not None:
        branches.init_branch_from_unet(net, base_state_dict)
    else:
        branches.init_branch_random(net)


def _build_nets(config, dtype, manual_cast_dtype) -> RealisIDNets:
    local_net = _build_branch(config["local"], dtype, manual_cast_dtype)
    global_net = _build_branch(config["global"], dtype, manual_cast_dtype)
    section = config.get("ip_adapter")
    ip_adapter = None if not section else IPAdapterKV.for_widths(section["widths"], config["projector"]["output_dim"])
    return RealisIDNets(local_net, global_net, identity.build_projector(config["projector"]).to(dtype),
                        None if ip_adapter is None else ip_adapter.to(dtype))


def _model_from_config(config, dtype, manual_cast_dtype, base_state_dict=None, init=True):
    nets = _build_nets(config, dtype, manual_cast_dtype)
    if init:
        _init_branch(nets._modules["local"], base_state_dict)
        _init_branch(nets._modules["global"], base_state_dict)
    return RealisIDModel(config, nets, manual_cast_dtype=manual_cast_dtype)


def save_realisid(model: RealisIDModel, path: str) -> None:
    """Write the model as one .safetensors with the config in the metadata."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.nets.state_dict().items()}
    safetensors.torch.save_file(tensors, path, metadata={METADATA_KEY: json.dumps(model.config)})


def _expected_shapes(path: str, config: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape under the config, from a build on the meta device (no memory is allocated)."""
    try:
        with torch.device("meta"):
            nets = _build_nets(config, torch.float32, None)
    except Exception as e:  # comfy's ControlNet asserts on inconsistent configs (heads, depths)
        fail(path, f"its config does not describe a buildable network ({type(e).__name__}: {e})")
    return {k: tuple(v.shape) for k, v in nets.state_dict().items()}


def _check_tensors(path: str, config: dict, entries: dict) -> torch.dtype:
    return checkpoint_format.check_tensors(path, _expected_shapes(path, config), entries)


def _load_state(path: str) -> dict:
    try:
        state = safetensors.torch.load_file(path)
    except Exception as e:  # a header that reads but data that does not (truncated file)
        fail(path, f"its tensor data cannot be read ({e})")
    for key, value in state.items():
        if not bool(torch.isfinite(value).all()):
            fail(path, f"tensor {key} holds NaN or infinite values (a diverged training run?)")
    return state


def load_realisid(path: str, dtype: torch.dtype | None = None, device=None) -> RealisIDModel:
    """Load and validate a RealisID .safetensors: config, then every tensor's key, shape and dtype, all before
    anything is built. dtype None keeps the stored dtype; ComfyUI picks a manual-cast dtype for the load device as
    it does for core ControlNets. `device` is where the weights rest (offload)."""
    metadata, entries = read_header(path)
    config = parse_config(path, metadata, entries)
    stored_dtype = _check_tensors(path, config, entries)
    state = _load_state(path)
    weight_dtype = dtype or stored_dtype
    manual_cast = mm.unet_manual_cast(weight_dtype, mm.get_torch_device())
    model = _model_from_config(config, weight_dtype, manual_cast, init=False)
    model.nets.load_state_dict(state, strict=True)
    if device is not None:
        model.nets.to(device)
    if model.ip_adapter is not None:  # the branches' conditioning does not apply it: the MODEL must be patched
        log.info("%s was trained with an IP-Adapter (identity tokens in the base's cross-attention): apply it to "
                 "the MODEL with RealisID InstantID Regional Attention, weight %g as trained", os.path.basename(path),
                 TRAINED_WEIGHT)
    return model


def _describe(config: dict) -> str:
    adm = config.get("adm_in_channels")
    return f"context {config.get('context_dim')}, {'adm ' + str(adm) if adm else 'no adm'}"


def check_base_compat(model: RealisIDModel, base_model) -> None:
    """Raise a clear error when the base MODEL's UNet cannot take this RealisID model's residuals/context."""
    base = branches.base_config_from_model(base_model)
    ours = model.unet_config
    diffs = [k for k in COMPAT_KEYS if branches.json_value(base.get(k)) != branches.json_value(ours.get(k))]
    if diffs:
        raise ValueError(f"RealisID model is for a {model.base_family.upper()} base ({_describe(ours)}) but the MODEL "
                         f"is {family_of(base).upper()}-like ({_describe(base)}); mismatched: {diffs}. "
                         f"Use a RealisID checkpoint trained for this base.")
