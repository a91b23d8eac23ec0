"""The RealisID model (local branch, global branch, identity projector) and its file format.

File: ONE .safetensors. Tensors are prefixed `local.`, `global.`, `projector.`; the metadata key `realisid` holds
the JSON config: {"format": "realisid", "version": 1, "base_family", "identity_space", "crop_size", "projector",
"local": {"hint_channels": 3, "unet_config": {...}} | null, "global": {...} | null}.
"""

from __future__ import annotations

import json
import logging
import os

import comfy.model_management as mm
import comfy.model_patcher
import safetensors
import safetensors.torch
import torch
from torch import nn

from realisid import branches, identity

log = logging.getLogger(__name__)

FORMAT = "realisid"
VERSION = 1
METADATA_KEY = "realisid"
DEFAULT_CROP_SIZE = 64
# keys compared between a RealisID model and a base MODEL: the residuals must line up with the base UNet
COMPAT_KEYS = ("in_channels", "model_channels", "channel_mult", "num_res_blocks", "context_dim", "adm_in_channels")


class RealisIDNets(nn.Module):
    """Container of the three networks; its state_dict keys are the file's keys (local., global., projector.)."""

    def __init__(self, local_net, global_net, projector):
        super().__init__()
        self.add_module("local", local_net)
        self.add_module("global", global_net)  # a keyword in Python, fine as a module name
        self.add_module("projector", projector)


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
                         init: bool = True) -> RealisIDModel:
    """A new RealisID model for a base UNet. With base_state_dict the branches start from the UNet encoder
    (ControlNet init); without it, random N(0, 0.02) with zero outputs. init=False leaves weights unset (loading)."""
    if not (with_local or with_global):
        raise ValueError("a RealisID model needs at least one branch (with_local or with_global)")
    cn_config = branches.controlnet_config_from_unet(unet_config)
    proj_config = identity.projector_config(projector_config or {}, output_dim=int(cn_config["context_dim"]))
    config = {"format": FORMAT, "version": VERSION, "base_family": base_family or family_of(unet_config),
              "identity_space": identity_space, "crop_size": int(crop_size), "projector": proj_config,
              "local": {"hint_channels": branches.LOCAL_HINT_CHANNELS, "unet_config": cn_config} if with_local else None,
              "global": {"hint_channels": branches.GLOBAL_HINT_CHANNELS, "unet_config": cn_config}
              if with_global else None}
    return _model_from_config(config, dtype, manual_cast_dtype, base_state_dict, init)


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


def _model_from_config(config, dtype, manual_cast_dtype, base_state_dict=None, init=True):
    local_net = _build_branch(config["local"], dtype, manual_cast_dtype)
    global_net = _build_branch(config["global"], dtype, manual_cast_dtype)
    projector = identity.build_projector(config["projector"]).to(dtype)
    if init:
        _init_branch(local_net, base_state_dict)
        _init_branch(global_net, base_state_dict)
    return RealisIDModel(config, RealisIDNets(local_net, global_net, projector), manual_cast_dtype=manual_cast_dtype)


def save_realisid(model: RealisIDModel, path: str) -> None:
    """Write the model as one .safetensors with the config in the metadata."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.nets.state_dict().items()}
    safetensors.torch.save_file(tensors, path, metadata={METADATA_KEY: json.dumps(model.config)})


def _guess_kind(keys: list[str]) -> str:
    """What a non-RealisID file most likely is, for the error message."""
    def has(fragment):
        return any(fragment in k for k in keys)
    if has("zero_convs.0.0.weight") or has("controlnet_cond_embedding") or has("controlnet_down_blocks"):
        return "a ControlNet"
    if has("image_proj.") or has("ip_adapter."):
        return "an IP-Adapter / InstantID file"
    if has("model.diffusion_model."):
        return "a full SD checkpoint"
    if has("lora_") or has(".lora."):
        return "a LoRA"
    return "an unknown model"


def _read_header(path: str) -> tuple[dict, list[str]]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"RealisID checkpoint not found: {path}")
    try:
        with safetensors.safe_open(path, framework="pt") as f:
            return f.metadata() or {}, list(f.keys())
    except Exception as e:  # safetensors raises its own error types for malformed headers
        raise ValueError(f"{path} is not a readable .safetensors file (corrupt or another format): {e}") from e


def read_config(path: str) -> dict:
    """The validated RealisID config stored in a file's metadata."""
    metadata, keys = _read_header(path)
    if METADATA_KEY not in metadata:
        raise ValueError(f"{os.path.basename(path)} is not a RealisID checkpoint (no '{METADATA_KEY}' metadata; "
                         f"it looks like {_guess_kind(keys)}?)")
    try:
        config = json.loads(metadata[METADATA_KEY])
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: the '{METADATA_KEY}' metadata is not valid JSON: {e}") from e
    if config.get("format") != FORMAT:
        raise ValueError(f"{path}: metadata format is {config.get('format')!r}, expected {FORMAT!r}")
    if config.get("version") != VERSION:
        raise ValueError(f"{path}: RealisID format version {config.get('version')!r} is not supported "
                         f"(this code reads version {VERSION}); update the extension or re-export the file")
    for key in ("base_family", "identity_space", "crop_size", "projector", "local", "global"):
        if key not in config:
            raise ValueError(f"{path}: RealisID config lacks '{key}'")
    return config


def _check_keys(path: str, expected: set[str], found: set[str]) -> None:
    missing, unexpected = sorted(expected - found), sorted(found - expected)
    if missing or unexpected:
        raise ValueError(f"{path}: tensors do not match its RealisID config: {len(missing)} missing "
                         f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})")


def load_realisid(path: str, dtype: torch.dtype | None = None, device=None) -> RealisIDModel:
    """Load and validate a RealisID .safetensors. dtype None keeps the stored dtype; ComfyUI picks a manual-cast
    dtype for the load device as it does for core ControlNets. `device` is where the weights rest (offload)."""
    config = read_config(path)
    state = safetensors.torch.load_file(path)
    weight_dtype = dtype or next(iter(state.values())).dtype
    manual_cast = mm.unet_manual_cast(weight_dtype, mm.get_torch_device())
    model = _model_from_config(config, weight_dtype, manual_cast, init=False)
    _check_keys(path, set(model.nets.state_dict()), set(state))
    model.nets.load_state_dict(state, strict=True)
    if device is not None:
        model.nets.to(device)
    return model


def _describe(config: dict) -> str:
    adm = config.get("adm_in_channels")
    return f"context {config.get('context_dim')}, {'adm ' + str(adm) if adm else 'no adm'}"


def check_base_compat(model: RealisIDModel, base_model) -> None:
    """Raise a clear error when the base MODEL's UNet cannot take this RealisID model's residuals/context."""
    base = branches.base_config_from_model(base_model)
    ours = model.unet_config
    diffs = [k for k in COMPAT_KEYS if _jsonable(base.get(k)) != _jsonable(ours.get(k))]
    if diffs:
        raise ValueError(f"RealisID model is for a {model.base_family.upper()} base ({_describe(ours)}) but the MODEL "
                         f"is {family_of(base).upper()}-like ({_describe(base)}); mismatched: {diffs}. "
                         f"Use a RealisID checkpoint trained for this base.")


def _jsonable(value):
    return list(value) if isinstance(value, tuple) else value
