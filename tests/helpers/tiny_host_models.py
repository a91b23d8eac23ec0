"""Tiny random SD1.5- and SDXL-shaped checkpoints that ComfyUI's REAL loader nodes read from files.

ComfyUI recognises a checkpoint by matching its detected UNet config against `comfy.supported_models.models`.
Real SD1.5/SDXL shapes are hundreds of MB, so the tests register two tiny model families with the same
classes (model_base.BaseModel / model_base.SDXL, the real tokenizers, CLIP text encoders with a tiny config,
TAESD as the VAE) and write genuine single-file checkpoints in the real key layout. Everything after detection
(loading, CLIP encoding, sampling, VAE decoding) is ComfyUI's own code.
"""

import json
import pathlib

import comfy.clip_vision
import comfy.model_patcher
import comfy.sd1_clip
import comfy.sdxl_clip
import comfy.supported_models
import comfy.supported_models_base
import comfy.taesd.taesd
import comfy.utils
import torch

TINY_CLIP_L = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 3,
               "projection_dim": 32}
# projection_dim == hidden_size for G: the v2.0 key conversion ComfyUI applies when saving transposes the projection
TINY_CLIP_G = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2, "num_hidden_layers": 3,
               "projection_dim": 64}
SDXL_CONTEXT_DIM = TINY_CLIP_L["hidden_size"] + TINY_CLIP_G["hidden_size"]
SDXL_POOLED_DIM = TINY_CLIP_G["projection_dim"]
SDXL_ADM_CHANNELS = SDXL_POOLED_DIM + 6 * 256  # pooled text + six 256-d size/crop embeddings (model_base.SDXL)
SD15_CONTEXT_DIM = TINY_CLIP_L["hidden_size"]

CLIP_VISION_HIDDEN = 64
TINY_CLIP_VISION = {
    "attention_dropout": 0.0, "dropout": 0.0, "hidden_act": "gelu", "hidden_size": CLIP_VISION_HIDDEN,
    "image_size": 224, "initializer_factor": 1.0, "initializer_range": 0.02, "intermediate_size": 128,
    "layer_norm_eps": 1e-05, "model_type": "clip_vision_model", "num_attention_heads": 2, "num_channels": 3,
    "num_hidden_layers": 3, "patch_size": 14, "projection_dim": 32, "torch_dtype": "float32",
}


def _tiny_text_options(model_options: dict) -> dict:
    return {**model_options, "clip_l_model_config": dict(TINY_CLIP_L), "clip_g_model_config": dict(TINY_CLIP_G)}


class TinySD1ClipModel(comfy.sd1_clip.SD1ClipModel):
    def __init__(self, device="cpu", dtype=None, model_options=None, **kwargs):
        super().__init__(device=device, dtype=dtype, model_options=_tiny_text_options(model_options or {}), **kwargs)


class TinySDXLClipModel(comfy.sdxl_clip.SDXLClipModel):
    def __init__(self, device="cpu", dtype=None, model_options=None):
        super().__init__(device=device, dtype=dtype, model_options=_tiny_text_options(model_options or {}))


class TinySD15(comfy.supported_models.SD15):
    unet_config = {"context_dim": SD15_CONTEXT_DIM, "model_channels": 64, "use_linear_in_transformer": False,
                   "adm_in_channels": None, "use_temporal_attention": False}

    def clip_target(self, state_dict=None):
        return comfy.supported_models_base.ClipTarget(comfy.sd1_clip.SD1Tokenizer, TinySD1ClipModel)


class TinySDXL(comfy.supported_models.SDXL):
    unet_config = {"model_channels": 64, "use_linear_in_transformer": True, "transformer_depth": [0, 1],
                   "context_dim": SDXL_CONTEXT_DIM, "adm_in_channels": SDXL_ADM_CHANNELS,
                   "use_temporal_attention": False}

    def clip_target(self, state_dict=None):
        return comfy.supported_models_base.ClipTarget(comfy.sdxl_clip.SDXLTokenizer, TinySDXLClipModel)


FAMILIES = {"sd15": TinySD15, "sdxl": TinySDXL}


def unet_config(family: str) -> dict:
    """The full UNet config ComfyUI's detection produces for the tiny checkpoint of `family`."""
    common = dict(use_checkpoint=False, image_size=32, in_channels=4, out_channels=4, model_channels=64,
                  num_res_blocks=[1, 1], channel_mult=[1, 2], transformer_depth_middle=1,
                  use_spatial_transformer=True, legacy=False, use_temporal_attention=False,
                  use_temporal_resblock=False)
    if family == "sd15":
        return {**common, "transformer_depth": [1, 1], "transformer_depth_output": [1, 1, 1, 1],
                "use_linear_in_transformer": False, "adm_in_channels": None, "context_dim": SD15_CONTEXT_DIM,
                "num_heads": 8, "num_head_channels": -1}
    return {**common, "transformer_depth": [0, 1], "transformer_depth_output": [0, 0, 1, 1],
            "use_linear_in_transformer": True, "adm_in_channels": SDXL_ADM_CHANNELS, "num_classes": "sequential",
            "context_dim": SDXL_CONTEXT_DIM, "num_heads": -1, "num_head_channels": 64}


def register_tiny_families() -> None:
    """Let ComfyUI's model detection recognise the tiny checkpoints (idempotent)."""
    for cls in FAMILIES.values():
        if cls not in comfy.supported_models.models:
            comfy.supported_models.models.insert(0, cls)
    _register_tiny_clip_vision()


def randomize_(module: torch.nn.Module, seed: int, std: float = 0.02) -> torch.nn.Module:
    """comfy ops skip weight init: give every parameter deterministic values (norm weights 1, biases 0)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name.endswith("bias"):
                param.zero_()
            elif "norm" in name and param.ndim == 1:
                param.fill_(1.0)
            else:
                param.copy_(torch.randn(param.shape, generator=generator) * std)
    return module


def build_base_model(family: str, seed: int = 0) -> comfy.model_patcher.ModelPatcher:
    """A tiny base model in memory, the way CheckpointLoaderSimple would return it."""
    config = FAMILIES[family](unet_config(family))
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({}, device="cpu")
    randomize_(model.diffusion_model, seed)
    return comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


def _text_encoder(family: str, seed: int) -> torch.nn.Module:
    cls = TinySD1ClipModel if family == "sd15" else TinySDXLClipModel
    encoder = cls(device="cpu", dtype=torch.float32)
    return randomize_(encoder, seed)


def write_checkpoint(path: pathlib.Path, family: str, seed: int = 0) -> pathlib.Path:
    """A single-file checkpoint (UNet + CLIP + TAESD VAE) in the real key layout of `family`."""
    base = build_base_model(family, seed)
    clip_sd = _text_encoder(family, seed + 1).state_dict()
    vae_sd = randomize_(comfy.taesd.taesd.TAESD(latent_channels=4), seed + 2, std=0.05).state_dict()
    state_dict = base.model.state_dict_for_saving(clip_sd, vae_sd)
    path.parent.mkdir(parents=True, exist_ok=True)
    comfy.utils.save_torch_file({k: v.contiguous() for k, v in state_dict.items()}, str(path))
    return path


def write_controlnet(path: pathlib.Path, family: str, hint_channels: int = 3, seed: int = 0) -> pathlib.Path:
    """A tiny ControlNet in ComfyUI's (ldm) key layout, readable by the core ControlNetLoader."""
    import comfy.cldm.cldm
    import comfy.ops

    cfg = {k: v for k, v in unet_config(family).items() if k not in ("out_channels", "transformer_depth_output")}
    net = comfy.cldm.cldm.ControlNet(hint_channels=hint_channels, dtype=torch.float32, device="cpu",
                                     operations=comfy.ops.disable_weight_init, **cfg)
    randomize_(net, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    comfy.utils.save_torch_file({f"control_model.{k}": v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


_TINY_VISION_JSON: pathlib.Path | None = None


def _register_tiny_clip_vision() -> None:
    """Teach comfy.clip_vision's key-based config picker the tiny ViT (real ones have >= 23 layers)."""
    original = comfy.clip_vision.load_clipvision_from_sd
    if getattr(original, "_realisid_tiny", False):
        return

    def load_with_tiny(sd, prefix="", convert_keys=False):
        model = original(sd, prefix, convert_keys)
        width = sd.get("vision_model.encoder.layers.0.layer_norm1.weight")
        if model is None and width is not None and width.shape[0] == CLIP_VISION_HIDDEN:
            model = comfy.clip_vision.ClipVisionModel(str(_tiny_vision_json()))
            model.load_sd(sd)
        return model

    load_with_tiny._realisid_tiny = True
    comfy.clip_vision.load_clipvision_from_sd = load_with_tiny


def _tiny_vision_json() -> pathlib.Path:
    global _TINY_VISION_JSON
    if _TINY_VISION_JSON is None:
        import tempfile

        _TINY_VISION_JSON = pathlib.Path(tempfile.mkdtemp(prefix="realisid-clipvision-")) / "tiny_vit.json"
        _TINY_VISION_JSON.write_text(json.dumps(TINY_CLIP_VISION))
    return _TINY_VISION_JSON


def write_clip_vision(path: pathlib.Path, seed: int = 0) -> pathlib.Path:
    """A tiny CLIP-vision ViT in the transformers key layout that CLIPVisionLoader reads."""
    model = comfy.clip_vision.ClipVisionModel(str(_tiny_vision_json()))
    randomize_(model.model, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    comfy.utils.save_torch_file({k: v.contiguous() for k, v in model.get_sd().items()}, str(path))
    return path
