"""Test session set-up: the real ComfyUI host on CPU, this pack loaded the way ComfyUI loads it, tiny models."""

import pathlib

import pytest

from tests.helpers import host

host.bootstrap()


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> pathlib.Path:
    """A ComfyUI models folder of tiny random checkpoints, registered in folder_paths for the real loaders."""
    import folder_paths

    from tests.helpers import tiny_host_models as tiny

    tiny.register_tiny_families()
    root = tmp_path_factory.mktemp("models")
    tiny.write_checkpoint(root / "checkpoints" / "tiny_sd15.safetensors", "sd15")
    tiny.write_checkpoint(root / "checkpoints" / "tiny_sdxl.safetensors", "sdxl")
    tiny.write_controlnet(root / "controlnet" / "tiny_sdxl_controlnet.safetensors", "sdxl")
    tiny.write_clip_vision(root / "clip_vision" / "tiny_clip_vision.safetensors")
    write_tiny_realisid(root / "realisid" / "tiny_realisid_sdxl.safetensors")
    # the bundled workflows name the real files; here those names hold the tiny models
    for folder, tiny_name, real_name in WORKFLOW_FILE_ALIASES:
        (root / folder / real_name).symlink_to(root / folder / tiny_name)
    for folder in ("checkpoints", "controlnet", "clip_vision", "realisid", "instantid", "insightface"):
        (root / folder).mkdir(exist_ok=True)
        folder_paths.add_model_folder_path(folder, str(root / folder), is_default=True)
    return root


WORKFLOW_FILE_ALIASES = [
    ("checkpoints", "tiny_sdxl.safetensors", "sd_xl_base_1.0.safetensors"),
    ("clip_vision", "tiny_clip_vision.safetensors", "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"),
    ("realisid", "tiny_realisid_sdxl.safetensors", "realisid_sdxl.safetensors"),
]


def write_tiny_realisid(path: pathlib.Path, seed: int = 3) -> pathlib.Path:
    """A RealisID checkpoint for the tiny SDXL family, in the CLIP identity space of the tiny CLIP vision."""
    from realisid import checkpoint, identity_sources
    from tests.helpers import tiny_host_models as tiny

    projector = {"dim": 64, "depth": 1, "dim_head": 16, "heads": 2, "num_queries": 4,
                 "embedding_dim": tiny.CLIP_VISION_HIDDEN, "ff_mult": 2, "source_tokens": 257}
    model = checkpoint.build_realisid_model(tiny.unet_config("sdxl"), projector_config=projector, crop_size=16,
                                            identity_space=identity_sources.clip_space(tiny.CLIP_VISION_HIDDEN, 257))
    tiny.randomize_(model.nets, seed, std=0.05)  # non-zero zero-convs, so the branches visibly act
    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.save_realisid(model, str(path))
    return path


@pytest.fixture(scope="session")
def pack_node_ids() -> list[str]:
    """Load this pack through nodes.load_custom_node, once per session."""
    from realisid.host import comfy_host

    comfy_host.load_core_extras()
    return comfy_host.load_pack()


@pytest.fixture
def run_prompt(pack_node_ids, models_dir, tmp_path):
    """Execute an API-format prompt in-process (validate_prompt + PromptExecutor); returns the PromptResult."""
    import folder_paths

    from realisid.host import comfy_host

    folder_paths.set_output_directory(str(tmp_path / "output"))
    folder_paths.set_input_directory(str(stage_example_inputs(tmp_path / "input")))

    def run(prompt: dict):
        return comfy_host.execute(prompt)

    return run


def stage_example_inputs(folder: pathlib.Path) -> pathlib.Path:
    """ComfyUI's input folder with the bundled example images (what LoadImage lists)."""
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    for image in (host.REPO / "workflows" / "inputs").iterdir():
        if image.suffix in (".jpg", ".png"):
            shutil.copy(image, folder / image.name)
    return folder
