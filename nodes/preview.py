"""Preview: draw the layout's boxes and indices over an image, so users see which face goes where."""

import numpy as np
import torch
from comfy_api.latest import io

from realisid import drawing

from .types import Layout

CATEGORY = "RealisID/preview"


class LayoutPreview(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RealisIDLayoutPreview",
            display_name="RealisID Layout Preview",
            category=CATEGORY,
            description="Draws each face box with its index over an image (blank canvas if no image).",
            inputs=[
                Layout.Input("layout", tooltip="The faces to draw; box i is where face i goes."),
                io.Image.Input("image", optional=True,
                               tooltip="Image to draw on (e.g. the generated result); a grey canvas of the "
                                       "layout's size when not connected."),
            ],
            outputs=[io.Image.Output(display_name="preview")],
        )

    @classmethod
    def execute(cls, layout, image=None) -> io.NodeOutput:
        if image is None:
            canvas = np.full((layout.height, layout.width, 3), 0.5, np.float32)
        else:
            canvas = image[0].cpu().numpy().astype(np.float32)
        h, w = canvas.shape[:2]
        drawn = drawing.draw_boxes(canvas, layout.pixel_boxes(w, h))
        return io.NodeOutput(torch.from_numpy(drawn)[None])


NODES = [LayoutPreview]
