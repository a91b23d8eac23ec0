"""The Mini weight files: where they live, how they are written (fp16 safetensors) and read back (validated)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import safetensors
import safetensors.torch
import torch

MODELS_DIR = Path(__file__).resolve().parents[2] / "models" / "mini"
CHECKPOINTS_DIR = MODELS_DIR / "checkpoints"  # registered as a ComfyUI "checkpoints" folder
REALISID_DIR = MODELS_DIR / "realisid"  # registered as a "realisid" folder
VARIANTS_DIR = MODELS_DIR / "variants"  # issue 14's trained variants: read by `realisid.mini paper` only
FACES_DIR = MODELS_DIR / "faces"  # read by the mini face backend and the judge
VAE_DIR = MODELS_DIR / "vae"  # the Mini VAE on its own (the base checkpoint holds the same weights)
VAE_FILE = "mini_vae.safetensors"
BASE_FILE = "realisid_mini_base.safetensors"
FACES_FILE = "mini_faces.safetensors"
JUDGE_FILE = "mini_judge.safetensors"
REALISID_FILE = "realisid_mini.safetensors"  # the RealisID-Mini branches, trained by `python -m realisid.train fit`


def variant_file(name: str) -> str:
    return f"realisid_mini_{name}.safetensors"
METADATA_KEY = "realisid_mini"


def save_networks(path: str | os.PathLike, networks: dict[str, torch.nn.Module], kind: str, **info) -> None:
    """fp16 tensors prefixed by network name; `kind` and `info` (JSON) in the metadata."""
    tensors = {}
    for name, net in networks.items():
        for key, value in net.state_dict().items():
            if value.is_floating_point():
                value = value.half()
            tensors[f"{name}.{key}"] = value.detach().contiguous().cpu()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps({"kind": kind, **info})})


def read_info(path: str | os.PathLike, kind: str) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"RealisID-Mini file not found: {path} (it ships in the pack's models/mini/; "
                                f"retrain it with `python -m realisid.mini train ...`)")
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for malformed headers
        raise ValueError(f"{path} is not a readable .safetensors file: {e}") from e
    try:
        info = json.loads(metadata[METADATA_KEY])
    except (KeyError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not a RealisID-Mini file (no valid '{METADATA_KEY}' metadata)") from e
    if not isinstance(info, dict) or info.get("kind") != kind:
        raise ValueError(f"{path} holds {info.get('kind') if isinstance(info, dict) else info!r}, expected a "
                         f"RealisID-Mini '{kind}' file")
    return info


def load_networks(path: str | os.PathLike, kind: str, networks: dict[str, torch.nn.Module]) -> dict:
    """Fill `networks` (float32, eval mode) from a file written by save_networks; returns its info."""
    info = read_info(path, kind)
    state = safetensors.torch.load_file(str(path))  # a truncated file already failed read_info's header check
    broken = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if broken:
        raise ValueError(f"{path}: {len(broken)} tensor(s) hold NaN or infinite values (e.g. {broken[:3]}); the file "
                         f"is corrupt, restore it from the pack or retrain it")
    for name, net in networks.items():
        prefix = f"{name}."
        own = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        expected = net.state_dict()
        bad = [k for k in expected if k not in own or own[k].shape != expected[k].shape]
        if bad or len(own) != len(expected):
            raise ValueError(f"{path}: the '{name}' tensors do not match this code's network "
                             f"({len(bad)} missing or misshapen, e.g. {bad[:3]})")
        net.load_state_dict({k: v.to(expected[k].dtype) for k, v in own.items()})
        net.eval()
    return info
