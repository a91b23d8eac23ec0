"""Face Layout nodes: where the faces go (numbers, a mask, or the faces of a location photo)."""

import logging

from comfy_api.latest import io

from realisid import layout as layouts
from realisid import validation
from realisid.faces import select_faces

from .faces import images_to_uint8
from .preview import layout_preview
from .types import FaceAnalyzer, Layout

log = logging.getLogger(__name__)
CATEGORY = "RealisID/layout"


def with_preview(layout) -> io.NodeOutput:
    return io.NodeOutput(layout, layout_preview(layout))


def checked_expand(expand) -> float:
    """The box scale: a finite number > 0 (NaN passes ComfyUI's min/max checks)."""
    expand = validation.finite_number("expand", expand)
    if expand <= 0:
        raise validation.InputError(f"expand must be above 0 (1 = the face's own square), got {expand}")
    return expand


def first_mask(name: str, mask):
    """The first mask of a MASK batch as (H, W) numpy, checked (see validation.mask_batch)."""
    masks = validation.mask_batch(name, mask)
    if masks.shape[0] > 1:
        log.warning("RealisID: %s is a batch of %d masks; the layout uses the first", name, masks.shape[0])
    return masks[0].cpu().numpy()


class LayoutFromNumbers(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RealisIDLayoutFromNumbers",
            display_name="RealisID Face Layout (numbers)",
            category=CATEGORY,
            description="Place one face by its centre and size; chain several to place several people. The box is "
                        "fitted to the latent when sampling (square at any output size), so no size is typed here.",
            inputs=[
                io.Float.Input("x", default=0.5, min=-0.5, max=1.5, step=0.01,
                               tooltip="Face centre, left (0) to right (1) of the image."),
                io.Float.Input("y", default=0.3, min=-0.5, max=1.5, step=0.01,
                               tooltip="Face centre, top (0) to bottom (1) of the image."),
                io.Float.Input("size", default=0.25, min=0.02, max=1.0, step=0.01,
                               tooltip="Face box side as a fraction of the shorter image side (1/6 = full-body shot)."),
                Layout.Input("previous", optional=True,
                             tooltip="Faces placed so far; this face is appended after them."),
            ],
            outputs=[Layout.Output(display_name="layout"),
                     io.Image.Output(display_name="preview", tooltip="The boxes (and pose drivers) so far.")],
        )

    @classmethod
    def execute(cls, x, y, size, previous=None) -> io.NodeOutput:
        face = layouts.layout_from_numbers([(x, y, size)])
        if previous is None:
            return with_preview(face)
        return with_preview(layouts.checked_layout("previous", previous).appended(face))


class LayoutFromMask(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RealisIDLayoutFromMask",
            display_name="RealisID Face Layout (mask)",
            category=CATEGORY,
            description="One face box per painted region of a mask, numbered left to right.",
            inputs=[
                io.Mask.Input("mask", tooltip="Paint one blob per face; each blob's bounding square becomes a box "
                                              "(the first mask of a batch; best at the output's aspect ratio)."),
                io.Float.Input("expand", default=1.0, min=0.5, max=3.0, step=0.05,
                               tooltip="Scale each box around its centre (1 = the blob's bounding square)."),
            ],
            outputs=[Layout.Output(display_name="layout"),
                     io.Image.Output(display_name="preview", tooltip="The boxes (and pose drivers) so far.")],
        )

    @classmethod
    def execute(cls, mask, expand) -> io.NodeOutput:
        painted = first_mask("mask", mask)  # input order: the mask is named before expand
        return with_preview(layouts.layout_from_mask(painted, expand=checked_expand(expand)))


class LayoutFromPhoto(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RealisIDLayoutFromPhoto",
            display_name="RealisID Face Layout (photo)",
            category=CATEGORY,
            description="Places faces where they are in a location/pose photo (numbered left to right); "
                        "optionally those faces also drive pose and expression.",
            inputs=[
                io.Image.Input("image", tooltip="A photo whose faces mark where the generated faces go (the first "
                                                "of a batch). Centres and sizes carry over to any output size; "
                                                "use the output's aspect ratio to keep them on the same spots."),
                FaceAnalyzer.Input("face_analysis", tooltip="From RealisID Face Analysis."),
                io.Float.Input("expand", default=1.0, min=0.5, max=3.0, step=0.05,
                               tooltip="Scale each detected face box around its centre."),
                io.Boolean.Input("copy_pose", default=True,
                                 tooltip="Also reproduce each detected face's pose and expression."),
            ],
            outputs=[Layout.Output(display_name="layout"),
                     io.Image.Output(display_name="preview", tooltip="The boxes (and pose drivers) so far.")],
        )

    @classmethod
    def execute(cls, image, face_analysis, expand, copy_pose) -> io.NodeOutput:
        rgb = images_to_uint8(image)[0]  # in input order, so the first bad input is named
        validation.face_analyzer("face_analysis", face_analysis)
        expand = checked_expand(expand)
        found = face_analysis.analyze(rgb)
        if not found:
            raise layouts.LayoutError("no face found in the location photo: use a photo with visible faces, or "
                                      "place the faces with RealisID Face Layout (numbers) or (mask)")
        records = select_faces(found, "left_to_right", 0, None)
        h, w = rgb.shape[:2]
        return with_preview(layouts.layout_from_boxes([r.box for r in records], w, h, expand,
                                                       records if copy_pose else None))


class LayoutDrivers(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RealisIDLayoutDrivers",
            display_name="RealisID Pose & Expression Drivers",
            category=CATEGORY,
            description="Face i of the layout copies the pose and expression of the largest face in image i "
                        "(by default each face keeps its reference's own).",
            inputs=[
                Layout.Input("layout", tooltip="The layout whose faces get drivers, in order."),
                io.Image.Input("image", tooltip="Driving photo(s): image i drives face i; fewer images than faces "
                                                "leave the rest unchanged."),
                FaceAnalyzer.Input("face_analysis", tooltip="From RealisID Face Analysis."),
            ],
            outputs=[Layout.Output(display_name="layout"),
                     io.Image.Output(display_name="preview", tooltip="The boxes (and pose drivers) so far.")],
        )

    @classmethod
    def execute(cls, layout, image, face_analysis) -> io.NodeOutput:
        layouts.checked_layout("layout", layout)  # in input order, so the first bad input is named
        images = images_to_uint8(image)
        validation.face_analyzer("face_analysis", face_analysis)
        drivers = []
        for i, rgb in enumerate(images):
            found = face_analysis.analyze(rgb, image_index=i)
            if not found:
                raise layouts.LayoutError(f"no face found in driving image {i}: use a photo with a visible face")
            drivers.append(select_faces(found, "largest")[0])
        return with_preview(layout.with_drivers(drivers))


NODES = [LayoutFromNumbers, LayoutFromMask, LayoutFromPhoto, LayoutDrivers]
