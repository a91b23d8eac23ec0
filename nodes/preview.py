"""Preview: draw the layout's boxes and indices over an image, so users see which face goes where."""

import numpy as np
import torch
from comfy_api.latest import io

from realisid import drawing, validation
from realisid.conditioning import render_hint
from realisid.layout import checked_layout

from .types import Faces, Layout

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
                               tooltip="Image to draw on (e.g. the generated result: the boxes are fitted to "
                                       "its size); a grey canvas when not connected."),
                Faces.Input("faces", optional=True,
                            tooltip="Draw each face's landmark map (its pose and expression driver) in its box."),
            ],
            outputs=[io.Image.Output(display_name="preview")],
        )

    @classmethod
    def execute(cls, layout, image=None, faces=None) -> io.NodeOutput:
        return io.NodeOutput(layout_preview(layout, image, faces))


def layout_preview(layout, image=None, faces=None, labels=None, max_side: int = 768) -> torch.Tensor:
    """IMAGE (1, H, W, 3): the layout's boxes, indices (or labels) and pose drivers' landmark maps over `image`, or
    over a grey canvas when there is no image (at most max_side pixels, of the layout's source mask or photo's
    aspect ratio, square for typed-in faces: the boxes are fitted to the latent only when sampling). The first
    image of a batch is drawn on, as RGB whatever its channel count; NaN or infinite boxes raise InputError."""
    checked_layout("layout", layout)
    if image is None:
        aspect = layout.aspect
        w, h = (max_side, max_side / aspect) if aspect >= 1 else (max_side * aspect, max_side)
        canvas = np.full((max(8, round(h)), max(8, round(w)), 3), 0.5, np.float32)
    else:
        canvas = validation.image_batch("image", image)[0].cpu().numpy().astype(np.float32)
    faces = validation.faces("faces", faces) if faces is not None else None
    h, w = canvas.shape[:2]
    boxes = layout.pixel_boxes(w, h)
    for i, (slot, box) in enumerate(zip(layout.slots, boxes, strict=True)):
        driver = slot.driver if slot.driver is not None else (faces[i].record if faces and i < len(faces) else None)
        if driver is not None:
            canvas = overlay_hint(canvas, driver, box)
    return torch.from_numpy(drawing.draw_boxes(canvas, boxes, labels))[None]


def overlay_hint(canvas: np.ndarray, record, box) -> np.ndarray:
    """Paste the face's landmark map into its box (only the drawn strokes; clipped at the image edges)."""
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    side = max(8, x1 - x0)
    kind = "landmarks68" if record.landmarks68 is not None else "kps5"
    hint = render_hint(record, kind, side)
    h, w = canvas.shape[:2]
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x0 + side, w), min(y0 + side, h)
    if cx1 <= cx0 or cy1 <= cy0:
        return canvas
    patch = hint[cy0 - y0: cy1 - y0, cx0 - x0: cx1 - x0]
    alpha = patch.max(axis=2, keepdims=True)
    out = canvas.copy()
    out[cy0:cy1, cx0:cx1] = out[cy0:cy1, cx0:cx1] * (1 - alpha) + patch * alpha
    return out


NODES = [LayoutPreview]
