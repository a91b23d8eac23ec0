"""Face Layout nodes: where the faces go (numbers, a mask, or the faces of a location photo)."""

from comfy_api.latest import io

from realisid import layout as layouts

from .types import Layout

CATEGORY = "RealisID/layout"


class LayoutFromNumbers(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RealisIDLayoutFromNumbers",
            display_name="RealisID Face Layout (numbers)",
            category=CATEGORY,
            description="Place one face by its centre and size; chain several to place several people.",
            inputs=[
                io.Int.Input("width", default=1024, min=64, max=8192, step=8,
                             tooltip="Width in pixels of the image you will generate (match the latent)."),
                io.Int.Input("height", default=1024, min=64, max=8192, step=8,
                             tooltip="Height in pixels of the image you will generate (match the latent)."),
                io.Float.Input("x", default=0.5, min=-0.5, max=1.5, step=0.01,
                               tooltip="Face centre, left (0) to right (1) of the image."),
                io.Float.Input("y", default=0.3, min=-0.5, max=1.5, step=0.01,
                               tooltip="Face centre, top (0) to bottom (1) of the image."),
                io.Float.Input("size", default=0.25, min=0.02, max=1.0, step=0.01,
                               tooltip="Face box side as a fraction of the shorter image side (1/6 = full-body shot)."),
                Layout.Input("previous", optional=True,
                             tooltip="Faces placed so far; this face is appended after them."),
            ],
            outputs=[Layout.Output(display_name="layout")],
        )

    @classmethod
    def execute(cls, width, height, x, y, size, previous=None) -> io.NodeOutput:
        face = layouts.layout_from_numbers(width, height, [(x, y, size)])
        return io.NodeOutput(previous.appended(face) if previous is not None else face)


class LayoutFromMask(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RealisIDLayoutFromMask",
            display_name="RealisID Face Layout (mask)",
            category=CATEGORY,
            description="One face box per painted region of a mask, numbered left to right.",
            inputs=[
                io.Mask.Input("mask", tooltip="Paint one blob per face; each blob's bounding square becomes a box."),
                io.Float.Input("expand", default=1.0, min=0.5, max=3.0, step=0.05,
                               tooltip="Scale each box around its centre (1 = the blob's bounding square)."),
            ],
            outputs=[Layout.Output(display_name="layout")],
        )

    @classmethod
    def execute(cls, mask, expand) -> io.NodeOutput:
        return io.NodeOutput(layouts.layout_from_mask(mask[0].cpu().numpy(), expand=expand))


NODES = [LayoutFromNumbers, LayoutFromMask]
