"""RealisID Model Loader: a checkpoint from models/realisid, validated, to a RealisID model."""

import folder_paths
from comfy_api.latest import io

from realisid import checkpoint

from .types import RealisIDModel


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
                               tooltip="A RealisID .safetensors file in models/realisid (train one with "
                                       "`python -m realisid.train`)."),
            ],
            outputs=[RealisIDModel.Output(display_name="realisid_model")],
        )

    @classmethod
    def execute(cls, model_name) -> io.NodeOutput:
        path = folder_paths.get_full_path_or_raise("realisid", model_name)
        return io.NodeOutput(checkpoint.load_realisid(path))


NODES = [ModelLoader]
