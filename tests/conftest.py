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
    for folder in ("checkpoints", "controlnet", "clip_vision", "realisid", "instantid", "insightface"):
        (root / folder).mkdir(exist_ok=True)
        folder_paths.add_model_folder_path(folder, str(root / folder), is_default=True)
    return root


@pytest.fixture(scope="session")
def pack_node_ids() -> list[str]:
    """Load this pack through nodes.load_custom_node, once per session."""
    from realisid import comfy_host

    comfy_host.load_core_extras()
    return comfy_host.load_pack()


@pytest.fixture
def run_prompt(pack_node_ids, models_dir, tmp_path):
    """Execute an API-format prompt in-process (validate_prompt + PromptExecutor); returns the PromptResult."""
    import folder_paths

    from realisid import comfy_host

    folder_paths.set_output_directory(str(tmp_path / "output"))

    def run(prompt: dict):
        return comfy_host.execute(prompt)

    return run
