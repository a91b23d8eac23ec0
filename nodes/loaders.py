"""RealisID Model Loader: a checkpoint from models/realisid, validated, to a RealisID model."""

import folder_paths
from comfy_api.latest import io

from realisid import checkpoint, model_files

from .types import RealisIDModel


def model_path(directory: str, name: str) -> str:
    """The file's full path, or a FileNotFoundError saying what the file is and where it comes from."""
    path = folder_paths.get_full_path(directory, name)
    if path is None:
        raise FileNotFoundError(missing_message(directory, name))
    return path


def missing_message(directory: str, name: str) -> str:
    return model_files.missing_file_message(directory, name, folder_paths.get_folder_paths(directory))


def check_present(**files: tuple[str, str]) -> bool | str:
    """validate_inputs helper: True when every (directory, name) exists, else the message for the first missing.
    ComfyUI then skips its own 'Value not in list' check for these inputs and shows this message instead."""
    for directory, name in files.values():
        if folder_paths.get_full_path(directory, name) is None:
            return missing_message(directory, name)
    return True


class ModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RealisIDModelLoader",
            display_name="RealisID Model Loader",
            category="RealisID/loaders",
            description="Loads a RealisID checkpoint (local branch, global branch, identity projector).",
            inputs=[
                io.Combo.Input("model_name", options=folder_paths.get_filename_list("realisid"),
                               tooltip="A RealisID .safetensors file in models/realisid. No public RealisID "
                                       "weights exist: train one with `python -m realisid.train` "
                                       "(docs/training.md)."),
            ],
            outputs=[RealisIDModel.Output(display_name="realisid_model")],
        )

    @classmethod
    def validate_inputs(cls, model_name) -> bool | str:
        return check_present(model_name=("realisid", model_name))

    @classmethod
    def execute(cls, model_name) -> io.NodeOutput:
        return io.NodeOutput(checkpoint.load_realisid(model_path("realisid", model_name)))


NODES = [ModelLoader]
