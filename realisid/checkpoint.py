"""The RealisID model (local branch, global branch, identity projector) and its file format.

File: ONE .safetensors. Tensors are prefixed `local.`, `global.`, `projector.`; the metadata key `realisid` holds
the JSON config: {"format": "realisid", "version": 1, "base_family", "identity_space", "crop_size", "projector",
"local": {"hint_channels": 3, "unet_config": {...}} | null, "global": {...} | null}.
"""

from __future__ import annotations

import json
import logging
import os
from typing import NoReturn

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
    context_dim = int(cn_config["context_dim"])
    proj_config = identity.projector_config({**identity.widths_for_context(context_dim), **(projector_config or {})},
                                            output_dim=context_dim)
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


def _build_nets(config, dtype, manual_cast_dtype) -> RealisIDNets:
    local_net = _build_branch(config["local"], dtype, manual_cast_dtype)
    global_net = _build_branch(config["global"], dtype, manual_cast_dtype)
    return RealisIDNets(local_net, global_net, identity.build_projector(config["projector"]).to(dtype))


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


EXPECTED_FILE = (f"a RealisID .safetensors written by `python -m realisid.train` (metadata '{METADATA_KEY}': format "
                 f"{FORMAT!r}, version {VERSION})")
# Sanity bounds on declared sizes, far above SDXL's (320 channels, x4 mult, 2048 context, 2816 adm): a file
# declaring more is corrupt or hostile, and the shape check must not build a network of that size first.
UNET_BOUNDS = {"in_channels": 64, "model_channels": 4096, "context_dim": 16384, "adm_in_channels": 16384}
MAX_LEVELS, MAX_MULT, MAX_RES_BLOCKS, MAX_DEPTH, MAX_CROP = 8, 16, 16, 64, 512
PROJECTOR_BOUNDS = {"dim": 8192, "depth": 64, "dim_head": 1024, "heads": 256, "num_queries": 1024,
                    "embedding_dim": 8192, "output_dim": 16384, "ff_mult": 16, "source_tokens": 4096}
FLOAT_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32}
HINT_CHANNELS = {"local": branches.LOCAL_HINT_CHANNELS, "global": branches.GLOBAL_HINT_CHANNELS}


class CheckpointError(ValueError):
    """A file given as a RealisID checkpoint cannot be one; the message names the file, the problem, the fix."""


def _fail(path: str, problem: str, expected: str = EXPECTED_FILE) -> NoReturn:
    raise CheckpointError(f"{os.path.basename(path)}: {problem}. Expected {expected}")


def _read_header(path: str) -> tuple[dict, dict[str, tuple[tuple[int, ...], str]]]:
    """(metadata, {key: (shape, dtype name)}) read without loading any tensor data."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"RealisID checkpoint not found: {path}")
    try:
        with safetensors.safe_open(path, framework="pt") as f:
            entries = {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}
            return f.metadata() or {}, entries
    except Exception as e:  # safetensors raises its own error types for malformed headers
        _fail(path, f"not a readable .safetensors file (corrupt or another format: {e})")


def read_config(path: str) -> dict:
    """The validated RealisID config stored in a file's metadata (types, bounds, branches, crop size)."""
    return _parse_config(path, *_read_header(path))


def _parse_config(path: str, metadata: dict, entries: dict) -> dict:
    if METADATA_KEY not in metadata:
        _fail(path, f"not a RealisID checkpoint (no '{METADATA_KEY}' metadata; it looks like "
                    f"{_guess_kind(list(entries))}?)")
    try:
        config = json.loads(metadata[METADATA_KEY])
    except json.JSONDecodeError as e:
        _fail(path, f"the '{METADATA_KEY}' metadata is not valid JSON ({e})")
    _check_config(path, config)
    return config


def _check_config(path: str, config) -> None:
    if not isinstance(config, dict):
        _fail(path, f"the '{METADATA_KEY}' metadata is a JSON {type(config).__name__}, not an object")
    if config.get("format") != FORMAT:
        _fail(path, f"metadata format is {config.get('format')!r}, expected {FORMAT!r}")
    if config.get("version") != VERSION:
        _fail(path, f"RealisID format version {config.get('version')!r} is not supported (this code reads version "
                    f"{VERSION}); update the extension or re-export the file")
    for key in ("base_family", "identity_space", "crop_size", "projector", "local", "global"):
        if key not in config:
            _fail(path, f"RealisID config lacks '{key}'")
    for key in ("base_family", "identity_space"):
        if not isinstance(config[key], str) or not config[key]:
            _fail(path, f"config '{key}' is {config[key]!r}, expected a non-empty string")
    if config["local"] is None and config["global"] is None:
        _fail(path, "both branches ('local' and 'global') are null; a RealisID model needs at least one branch")
    unet_configs = {name: _check_branch(path, name, config[name]) for name in ("local", "global")
                    if config[name] is not None}
    unet_config = unet_configs.get("local") or unet_configs["global"]  # the crop is the local branch's input
    _check_projector(path, config["projector"], unet_config)
    _check_crop_size(path, config["crop_size"], unet_config)


def _check_int(path: str, where: str, value, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        _fail(path, f"config {where} is {value!r}, expected a whole number in [{low}, {high}]")
    return value


def _check_int_list(path: str, where: str, value, low: int, high: int, length: int | None = None) -> list:
    if not isinstance(value, list) or not value or (length is not None and len(value) != length):
        wanted = f"{length} entries" if length is not None else "a non-empty list"
        _fail(path, f"config {where} is {value!r}, expected {wanted} of whole numbers in [{low}, {high}]")
    return [_check_int(path, f"{where}[{i}]", v, low, high) for i, v in enumerate(value)]


def _check_branch(path: str, name: str, section) -> dict:
    """A branch section's hint channels and the bounded sizes of its UNet config; returns the UNet config."""
    if not isinstance(section, dict) or not isinstance(section.get("unet_config"), dict):
        _fail(path, f"config '{name}' is {type(section).__name__} without a 'unet_config' object, expected "
                    f"{{'hint_channels': {HINT_CHANNELS[name]}, 'unet_config': {{...}}}} or null")
    if section.get("hint_channels") != HINT_CHANNELS[name]:
        _fail(path, f"config {name}.hint_channels is {section.get('hint_channels')!r}, expected {HINT_CHANNELS[name]}")
    unet = section["unet_config"]
    where = f"{name}.unet_config"
    for key, high in UNET_BOUNDS.items():
        if key == "adm_in_channels" and unet.get(key) is None:
            continue
        _check_int(path, f"{where}.{key}", unet.get(key), 1, high)
    levels = len(_check_int_list(path, f"{where}.channel_mult", unet.get("channel_mult"), 1, MAX_MULT))
    if levels > MAX_LEVELS:
        _fail(path, f"config {where}.channel_mult has {levels} levels, expected at most {MAX_LEVELS}")
    res = unet.get("num_res_blocks")
    if isinstance(res, list):
        _check_int_list(path, f"{where}.num_res_blocks", res, 1, MAX_RES_BLOCKS, length=levels)
    else:
        _check_int(path, f"{where}.num_res_blocks", res, 1, MAX_RES_BLOCKS)
    depth = unet.get("transformer_depth")
    if depth is not None:
        _check_int_list(path, f"{where}.transformer_depth", depth, 0, MAX_DEPTH)
    if unet.get("transformer_depth_middle") is not None:
        _check_int(path, f"{where}.transformer_depth_middle", unet["transformer_depth_middle"], -1, MAX_DEPTH)
    return unet


def _check_projector(path: str, projector, unet_config: dict) -> None:
    if not isinstance(projector, dict):
        _fail(path, f"config 'projector' is {projector!r}, expected an object with {list(PROJECTOR_BOUNDS)}")
    unknown = sorted(set(projector) - set(PROJECTOR_BOUNDS))
    if unknown:
        _fail(path, f"config 'projector' has unknown keys {unknown}, expected only {list(PROJECTOR_BOUNDS)}")
    for key, high in PROJECTOR_BOUNDS.items():
        if key in projector:
            _check_int(path, f"projector.{key}", projector[key], 1, high)
    if projector.get("output_dim", identity.DEFAULT_CONFIG["output_dim"]) != unet_config["context_dim"]:
        _fail(path, f"config projector.output_dim is {projector.get('output_dim')!r} but the branches cross-attend "
                    f"to {unet_config['context_dim']}-wide tokens (unet_config.context_dim); they must be equal")


def _check_crop_size(path: str, crop_size, unet_config: dict) -> None:
    """The crop must downsample evenly through every level of the local branch (2x per level after the first)."""
    step = 2 ** (len(unet_config["channel_mult"]) - 1)
    if (isinstance(crop_size, bool) or not isinstance(crop_size, int) or not step <= crop_size <= MAX_CROP
            or crop_size % step):
        _fail(path, f"config crop_size is {crop_size!r}, expected a whole number of latent cells in "
                    f"[{step}, {MAX_CROP}] divisible by {step} (the branch's downsampling)")


def _check_keys(path: str, expected: set[str], found: set[str]) -> None:
    missing, unexpected = sorted(expected - found), sorted(found - expected)
    if missing or unexpected:
        _fail(path, f"tensors do not match its RealisID config: {len(missing)} missing (e.g. {missing[:3]}), "
                    f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")


def _expected_shapes(path: str, config: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape under the config, from a build on the meta device (no memory is allocated)."""
    try:
        with torch.device("meta"):
            nets = _build_nets(config, torch.float32, None)
    except Exception as e:  # comfy's ControlNet asserts on inconsistent configs (heads, depths)
        _fail(path, f"its config does not describe a buildable network ({type(e).__name__}: {e})")
    return {k: tuple(v.shape) for k, v in nets.state_dict().items()}


def _check_tensors(path: str, config: dict, entries: dict) -> torch.dtype:
    """Keys, shapes and dtypes of the file's tensors against the config; returns the stored dtype."""
    expected = _expected_shapes(path, config)
    _check_keys(path, set(expected), set(entries))
    for key, (shape, dtype) in entries.items():
        if shape != expected[key]:
            _fail(path, f"tensor {key} has shape {list(shape)}, but its config makes it {list(expected[key])}")
        if dtype not in FLOAT_DTYPES:
            _fail(path, f"tensor {key} is {dtype}, expected a float tensor ({', '.join(FLOAT_DTYPES)})")
    dtypes = sorted({dtype for _, dtype in entries.values()})
    if len(dtypes) > 1:
        _fail(path, f"its tensors mix dtypes {dtypes}, expected one float dtype throughout")
    return FLOAT_DTYPES[dtypes[0]]


def _load_state(path: str) -> dict:
    try:
        state = safetensors.torch.load_file(path)
    except Exception as e:  # a header that reads but data that does not (truncated file)
        _fail(path, f"its tensor data cannot be read ({e})")
    for key, value in state.items():
        if not bool(torch.isfinite(value).all()):
            _fail(path, f"tensor {key} holds NaN or infinite values (a diverged training run?)")
    return state


def load_realisid(path: str, dtype: torch.dtype | None = None, device=None) -> RealisIDModel:
    """Load and validate a RealisID .safetensors: config, then every tensor's key, shape and dtype, all before
    anything is built. dtype None keeps the stored dtype; ComfyUI picks a manual-cast dtype for the load device as
    it does for core ControlNets. `device` is where the weights rest (offload)."""
    metadata, entries = _read_header(path)
    config = _parse_config(path, metadata, entries)
    stored_dtype = _check_tensors(path, config, entries)
    state = _load_state(path)
    weight_dtype = dtype or stored_dtype
    manual_cast = mm.unet_manual_cast(weight_dtype, mm.get_torch_device())
    model = _model_from_config(config, weight_dtype, manual_cast, init=False)
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
    diffs = [k for k in COMPAT_KEYS if branches.json_value(base.get(k)) != branches.json_value(ours.get(k))]
    if diffs:
        raise ValueError(f"RealisID model is for a {model.base_family.upper()} base ({_describe(ours)}) but the MODEL "
                         f"is {family_of(base).upper()}-like ({_describe(base)}); mismatched: {diffs}. "
                         f"Use a RealisID checkpoint trained for this base.")
