"""The RealisID file format, read without ComfyUI: the header, the config and its validation.

File: ONE .safetensors. Tensors are prefixed `local.`, `global.`, `projector.`; the metadata key `realisid` holds
the JSON config: {"format": "realisid", "version": 1, "base_family", "identity_space", "crop_size", "projector",
"local": {"hint_channels": 3, "unet_config": {...}} | null, "global": {"hint_channels": 1, "hint": "box_mask",
"unet_config": {...}} | null} (the global hint: the box mask, RealisID's, or "face_hint": the face's landmark hint
placed in its box on the whole image, 3 channels, the InstantID-style baseline's), and optionally "ip_adapter":
{"widths": [...]} with tensors `ip_adapter.` (identity tokens in the base's cross-attention, `realisid.ip_adapter`).
Every check here runs on the header alone, before any tensor is read or any network built (`realisid.checkpoint`
builds and loads).
"""

from __future__ import annotations

import json
import os
from typing import NoReturn

import safetensors
import torch

from realisid import identity

FORMAT = "realisid"
VERSION = 1
METADATA_KEY = "realisid"
LOCAL_HINT_CHANNELS = 3  # the landmark image (RGB)
GLOBAL_HINT_CHANNELS = 1  # the box mask
GLOBAL_HINTS = {"box_mask": GLOBAL_HINT_CHANNELS, "face_hint": LOCAL_HINT_CHANNELS}  # kind -> channels


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
MAX_ATTENTION_LAYERS = 1024  # an IP-Adapter's cross-attention layers (SDXL has 70)
PROJECTOR_BOUNDS = {"dim": 8192, "depth": 64, "dim_head": 1024, "heads": 256, "num_queries": 1024,
                    "embedding_dim": 8192, "output_dim": 16384, "ff_mult": 16, "source_tokens": 4096}
FLOAT_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32}
HINT_CHANNELS = {"local": LOCAL_HINT_CHANNELS, "global": GLOBAL_HINT_CHANNELS}


def global_hint_kind(config: dict) -> str:
    """What the global branch's hint draws: "box_mask" (RealisID; files without the key) or "face_hint"."""
    return (config.get("global") or {}).get("hint", "box_mask")


class CheckpointError(ValueError):
    """A file given as a RealisID checkpoint cannot be one; the message names the file, the problem, the fix."""


def fail(path: str, problem: str, expected: str = EXPECTED_FILE) -> NoReturn:
    raise CheckpointError(f"{os.path.basename(path)}: {problem}. Expected {expected}")


def read_header(path: str) -> tuple[dict, dict[str, tuple[tuple[int, ...], str]]]:
    """(metadata, {key: (shape, dtype name)}) read without loading any tensor data."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"RealisID checkpoint not found: {path}")
    try:
        with safetensors.safe_open(path, framework="pt") as f:
            entries = {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}
            return f.metadata() or {}, entries
    except Exception as e:  # safetensors raises its own error types for malformed headers
        fail(path, f"not a readable .safetensors file (corrupt or another format: {e})")


def read_config(path: str) -> dict:
    """The validated RealisID config stored in a file's metadata (types, bounds, branches, crop size)."""
    return parse_config(path, *read_header(path))


def parse_config(path: str, metadata: dict, entries: dict) -> dict:
    if METADATA_KEY not in metadata:
        fail(path, f"not a RealisID checkpoint (no '{METADATA_KEY}' metadata; it looks like "
                    f"{_guess_kind(list(entries))}?)")
    try:
        config = json.loads(metadata[METADATA_KEY])
    except json.JSONDecodeError as e:
        fail(path, f"the '{METADATA_KEY}' metadata is not valid JSON ({e})")
    _check_config(path, config)
    return config


def _check_config(path: str, config) -> None:
    if not isinstance(config, dict):
        fail(path, f"the '{METADATA_KEY}' metadata is a JSON {type(config).__name__}, not an object")
    if config.get("format") != FORMAT:
        fail(path, f"metadata format is {config.get('format')!r}, expected {FORMAT!r}")
    if config.get("version") != VERSION:
        fail(path, f"RealisID format version {config.get('version')!r} is not supported (this code reads version "
                    f"{VERSION}); update the extension or re-export the file")
    for key in ("base_family", "identity_space", "crop_size", "projector", "local", "global"):
        if key not in config:
            fail(path, f"RealisID config lacks '{key}'")
    for key in ("base_family", "identity_space"):
        if not isinstance(config[key], str) or not config[key]:
            fail(path, f"config '{key}' is {config[key]!r}, expected a non-empty string")
    if config["local"] is None and config["global"] is None:
        fail(path, "both branches ('local' and 'global') are null; a RealisID model needs at least one branch")
    unet_configs = {name: _check_branch(path, name, config[name]) for name in ("local", "global")
                    if config[name] is not None}
    unet_config = unet_configs.get("local") or unet_configs["global"]  # the crop is the local branch's input
    _check_projector(path, config["projector"], unet_config)
    _check_crop_size(path, config["crop_size"], unet_config)
    _check_ip_adapter(path, config.get("ip_adapter"))


def _check_ip_adapter(path: str, section) -> None:
    """Optional: {"widths": [...]}, the base's cross-attention widths in processor order (`realisid.ip_adapter`)."""
    if section is None:
        return
    if not isinstance(section, dict):
        fail(path, f"config 'ip_adapter' is a {type(section).__name__}, expected {{'widths': [...]}} or null")
    widths = section.get("widths")
    if isinstance(widths, list) and len(widths) > MAX_ATTENTION_LAYERS:
        fail(path, f"config ip_adapter.widths lists {len(widths)} layers, more than {MAX_ATTENTION_LAYERS}")
    _check_int_list(path, "ip_adapter.widths", widths, 1, UNET_BOUNDS["model_channels"] * MAX_MULT)


def _check_int(path: str, where: str, value, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        fail(path, f"config {where} is {value!r}, expected a whole number in [{low}, {high}]")
    return value


def _check_int_list(path: str, where: str, value, low: int, high: int, length: int | None = None) -> list:
    if not isinstance(value, list) or not value or (length is not None and len(value) != length):
        wanted = f"{length} entries" if length is not None else "a non-empty list"
        fail(path, f"config {where} is {value!r}, expected {wanted} of whole numbers in [{low}, {high}]")
    return [_check_int(path, f"{where}[{i}]", v, low, high) for i, v in enumerate(value)]


def _check_branch(path: str, name: str, section) -> dict:
    """A branch section's hint channels and the bounded sizes of its UNet config; returns the UNet config."""
    if not isinstance(section, dict) or not isinstance(section.get("unet_config"), dict):
        fail(path, f"config '{name}' is {type(section).__name__} without a 'unet_config' object, expected "
                    f"{{'hint_channels': {HINT_CHANNELS[name]}, 'unet_config': {{...}}}} or null")
    channels = HINT_CHANNELS[name]
    if name == "global":
        kind = section.get("hint", "box_mask")
        if kind not in GLOBAL_HINTS:
            fail(path, f"config global.hint is {kind!r}, expected one of {sorted(GLOBAL_HINTS)}")
        channels = GLOBAL_HINTS[kind]
    if section.get("hint_channels") != channels:
        fail(path, f"config {name}.hint_channels is {section.get('hint_channels')!r}, expected {channels}")
    unet = section["unet_config"]
    where = f"{name}.unet_config"
    for key, high in UNET_BOUNDS.items():
        if key == "adm_in_channels" and unet.get(key) is None:
            continue
        _check_int(path, f"{where}.{key}", unet.get(key), 1, high)
    levels = len(_check_int_list(path, f"{where}.channel_mult", unet.get("channel_mult"), 1, MAX_MULT))
    if levels > MAX_LEVELS:
        fail(path, f"config {where}.channel_mult has {levels} levels, expected at most {MAX_LEVELS}")
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
        fail(path, f"config 'projector' is {projector!r}, expected an object with {list(PROJECTOR_BOUNDS)}")
    unknown = sorted(set(projector) - set(PROJECTOR_BOUNDS))
    if unknown:
        fail(path, f"config 'projector' has unknown keys {unknown}, expected only {list(PROJECTOR_BOUNDS)}")
    for key, high in PROJECTOR_BOUNDS.items():
        if key in projector:
            _check_int(path, f"projector.{key}", projector[key], 1, high)
    if projector.get("output_dim", identity.DEFAULT_CONFIG["output_dim"]) != unet_config["context_dim"]:
        fail(path, f"config projector.output_dim is {projector.get('output_dim')!r} but the branches cross-attend "
                    f"to {unet_config['context_dim']}-wide tokens (unet_config.context_dim); they must be equal")


def _check_crop_size(path: str, crop_size, unet_config: dict) -> None:
    """The crop must downsample evenly through every level of the local branch (2x per level after the first)."""
    step = 2 ** (len(unet_config["channel_mult"]) - 1)
    if (isinstance(crop_size, bool) or not isinstance(crop_size, int) or not step <= crop_size <= MAX_CROP
            or crop_size % step):
        fail(path, f"config crop_size is {crop_size!r}, expected a whole number of latent cells in "
                    f"[{step}, {MAX_CROP}] divisible by {step} (the branch's downsampling)")


def _check_keys(path: str, expected: set[str], found: set[str]) -> None:
    missing, unexpected = sorted(expected - found), sorted(found - expected)
    if missing or unexpected:
        fail(path, f"tensors do not match its RealisID config: {len(missing)} missing (e.g. {missing[:3]}), "
                    f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")


def check_tensors(path: str, expected: dict[str, tuple[int, ...]], entries: dict) -> torch.dtype:
    """Keys, shapes and dtypes of the file's tensors against the shapes its config gives; returns the stored
    dtype."""
    _check_keys(path, set(expected), set(entries))
    for key, (shape, dtype) in entries.items():
        if shape != expected[key]:
            fail(path, f"tensor {key} has shape {list(shape)}, but its config makes it {list(expected[key])}")
        if dtype not in FLOAT_DTYPES:
            fail(path, f"tensor {key} is {dtype}, expected a float tensor ({', '.join(FLOAT_DTYPES)})")
    dtypes = sorted({dtype for _, dtype in entries.values()})
    if len(dtypes) > 1:
        fail(path, f"its tensors mix dtypes {dtypes}, expected one float dtype throughout")
    return FLOAT_DTYPES[dtypes[0]]
