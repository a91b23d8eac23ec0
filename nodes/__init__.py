"""ComfyUI V3 glue for RealisID: one module per node family, no model code here."""

from comfy_api.latest import ComfyExtension, io

from . import apply, faces, guider, instantid, layout, loaders, paths, preview

paths.on_load()

NODE_MODULES = [loaders, faces, layout, apply, guider, preview, instantid]


class RealisIDExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [node for module in NODE_MODULES for node in module.NODES]


async def comfy_entrypoint() -> RealisIDExtension:
    return RealisIDExtension()
