"""Local Branch Apply, Global Location Apply and Multi-Face Composite: RealisID's control onto conditioning.

All three attach ONE RealisIDControl (shared model, per-face data) to copies of the conditioning, chained after
any ControlNet already there; the negative gets its null-identity twin, so every guider guides towards the
identity, and the RealisID Guider puts the twin back to evaluate its three predictions in one UNet batch.
Strength 0 returns the inputs unchanged; in the composite a branch of strength 0 is not run.
"""

import logging

import torch
from comfy_api.latest import io

from realisid import conditioning, null_identity, validation
from realisid.checkpoint import RealisIDModel as RealisIDModelClass
from realisid.control import GLOBAL_MODES, RealisIDControl
from realisid.layout import LayoutError, checked_layout

from .preview import layout_preview
from .types import Faces, Layout, RealisIDModel

log = logging.getLogger(__name__)
CATEGORY = "RealisID/apply"


def common_inputs() -> list:
    return [
        io.Conditioning.Input("positive", tooltip="Text conditioning of the prompt (it keeps steering the UNet)."),
        io.Conditioning.Input("negative", tooltip="Negative text conditioning; the control acts on it with the null "
                                                  "identity."),
        RealisIDModel.Input("realisid_model", tooltip="From RealisID Model Loader or the InstantID loader."),
        Faces.Input("faces", tooltip="Encoded people from RealisID Face Encoder; face i goes to layout box i."),
        Layout.Input("layout", tooltip="Where each face goes (RealisID Face Layout)."),
    ]


def range_inputs() -> list:
    return [
        io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.001,
                       tooltip="When the branches start acting, as a fraction of sampling."),
        io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.001,
                       tooltip="When the branches stop acting, as a fraction of sampling."),
    ]


def crop_input() -> io.Int.Input:
    return io.Int.Input("crop_size", default=0, min=0, max=256, step=8,
                        tooltip="Local branch crop side in latent cells (0 = the model's training size, e.g. "
                                "64 = 512 px). Every face is up-sampled to this size before the branch sees it.")


def checked_inputs(positive, negative, realisid_model, faces, layout, values: dict) -> dict:
    """Validate an apply node's inputs in its input order, so the first bad one is named: the conditionings, the
    model, faces and layout (their types; finite boxes) and their pairing, then `values` (its numbers, in input
    order: NaN and infinities pass ComfyUI's min/max checks; crop_size 0 or a multiple of 8), then the sampling
    range and feather. Returns the checked values."""
    validation.conditioning("positive", positive)
    validation.conditioning("negative", negative)
    validation.of_type("realisid_model", realisid_model, RealisIDModelClass,
                       "RealisID Model Loader or RealisID InstantID Loader")
    validation.faces("faces", faces)
    checked_layout("layout", layout)
    if faces and len(faces) != len(layout):
        raise LayoutError(f"{len(faces)} encoded face(s) but the layout places {len(layout)}: give one box per "
                          "person (face i goes to box i, see the preview)")
    out = {}
    for name, value in values.items():
        if name == "crop_size":
            out[name] = 0 if value == 0 else validation.positive_int(name, value, multiple_of=8, maximum=256)
        else:
            out[name] = validation.finite_number(name, value)
    validation.percent_range("start_percent", out["start_percent"], "end_percent", out["end_percent"])
    if "feather" in out and not 0.0 <= out["feather"] <= 0.5:
        raise validation.InputError(f"feather must be a fraction of the box side in [0, 0.5], got {out['feather']}")
    return out


def apply_control(positive, negative, realisid_model, faces, layout, start_percent, end_percent, crop_size=0,
                  **options):
    """(positive, negative) with RealisID's control attached. The inputs themselves come back when there are no
    faces (the encoder's passthrough policy) or every branch has strength 0 (core ControlNet's rule)."""
    if not faces:
        log.warning("RealisID: no faces to apply (on_no_face=passthrough); conditioning passed through unchanged")
        return positive, negative
    options = without_zero_branches(options)
    if not (options.get("use_local", True) or options.get("use_global", True)):
        return positive, negative  # strength 0: the inputs themselves, no control and no branch cost (as core)
    conditions = conditioning.face_conditions(realisid_model, faces, layout, crop_size or None)
    control = RealisIDControl(realisid_model, conditions, timestep_percent_range=(start_percent, end_percent),
                              crop_size=crop_size or None, **options)
    return null_identity.attach_with_null_twin(positive, negative, control)


def without_zero_branches(options: dict) -> dict:
    """`options` with a branch of strength 0 switched off, so it costs nothing per step (its residuals would be 0)."""
    out = dict(options)
    for branch in ("local", "global"):
        if out.get(f"{branch}_strength", 1.0) == 0:
            out[f"use_{branch}"] = False
    return out


class LocalBranchApply(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RealisIDLocalBranchApply",
            display_name="RealisID Local Branch Apply",
            category=CATEGORY,
            description="Identity, pose and expression inside each face box: crop, up-sample, landmark-guided "
                        "branch, relocate. Alone it is the paper's 'without global branch' ablation.",
            inputs=[*common_inputs(),
                    io.Float.Input("strength", default=1.0, min=0.0, max=3.0, step=0.01,
                                   tooltip="Scale of the local branch's residuals."),
                    *range_inputs(), crop_input(),
                    io.Float.Input("feather", default=0.0, min=0.0, max=0.5, step=0.01,
                                   tooltip="Soft edge of the pasted residuals, as a fraction of the box side "
                                           "(0 = the paper's hard paste).")],
            outputs=[io.Conditioning.Output(display_name="positive"), io.Conditioning.Output(display_name="negative")],
        )

    @classmethod
    def execute(cls, positive, negative, realisid_model, faces, layout, strength, start_percent, end_percent,
                crop_size, feather) -> io.NodeOutput:
        n = checked_inputs(positive, negative, realisid_model, faces, layout,
                           {"strength": strength, "start_percent": start_percent, "end_percent": end_percent,
                            "crop_size": crop_size, "feather": feather})
        return io.NodeOutput(*apply_control(positive, negative, realisid_model, faces, layout, n["start_percent"],
                                            n["end_percent"], n["crop_size"], local_strength=n["strength"],
                                            feather=n["feather"], use_global=False))


class GlobalLocationApply(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RealisIDGlobalLocationApply",
            display_name="RealisID Global Location Apply",
            category=CATEGORY,
            description="Face location and whole-image harmony from each person's box mask. Alone it is the "
                        "paper's 'without local branch' ablation.",
            inputs=[*common_inputs(),
                    io.Float.Input("strength", default=1.0, min=0.0, max=3.0, step=0.01,
                                   tooltip="Scale of the global branch's residuals."),
                    *range_inputs(),
                    io.Combo.Input("mode", options=list(GLOBAL_MODES), default="per_person",
                                   tooltip="per_person: one pass per person, averaged (the paper). union: one "
                                           "pass on the union of the boxes with the mean identity (cheaper, "
                                           "blurs identities).")],
            outputs=[io.Conditioning.Output(display_name="positive"), io.Conditioning.Output(display_name="negative")],
        )

    @classmethod
    def execute(cls, positive, negative, realisid_model, faces, layout, strength, start_percent, end_percent,
                mode) -> io.NodeOutput:
        n = checked_inputs(positive, negative, realisid_model, faces, layout,
                           {"strength": strength, "start_percent": start_percent, "end_percent": end_percent})
        return io.NodeOutput(*apply_control(positive, negative, realisid_model, faces, layout, n["start_percent"],
                                            n["end_percent"], global_strength=n["strength"], global_mode=mode,
                                            use_local=False))


class MultiFaceComposite(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RealisIDMultiFaceComposite",
            display_name="RealisID Multi-Face Composite",
            category=CATEGORY,
            description="Full RealisID for one or several people: binds face i to box i and runs both branches "
                        "(all faces' local passes in one batch, summed; global passes per person, averaged).",
            inputs=[*common_inputs(),
                    io.Float.Input("local_strength", default=1.0, min=0.0, max=3.0, step=0.01,
                                   tooltip="Scale of the local branch (identity, pose, expression in the boxes)."),
                    io.Float.Input("global_strength", default=1.0, min=0.0, max=3.0, step=0.01,
                                   tooltip="Scale of the global branch (location, harmony)."),
                    *range_inputs(), crop_input(),
                    io.Combo.Input("global_mode", options=list(GLOBAL_MODES), default="per_person",
                                   tooltip="per_person (the paper) or union (one cheaper global pass)."),
                    io.Float.Input("feather", default=0.0, min=0.0, max=0.5, step=0.01,
                                   tooltip="Soft edge of the local residuals, as a fraction of the box side.")],
            outputs=[io.Conditioning.Output(display_name="positive"), io.Conditioning.Output(display_name="negative"),
                     io.Image.Output(display_name="mapping")],
        )

    @classmethod
    def execute(cls, positive, negative, realisid_model, faces, layout, local_strength, global_strength,
                start_percent, end_percent, crop_size, global_mode, feather) -> io.NodeOutput:
        n = checked_inputs(positive, negative, realisid_model, faces, layout,
                           {"local_strength": local_strength, "global_strength": global_strength,
                            "start_percent": start_percent, "end_percent": end_percent, "crop_size": crop_size,
                            "feather": feather})
        pos, neg = apply_control(positive, negative, realisid_model, faces, layout, n["start_percent"],
                                 n["end_percent"], n["crop_size"], local_strength=n["local_strength"],
                                 global_strength=n["global_strength"], global_mode=global_mode,
                                 feather=n["feather"])
        return io.NodeOutput(pos, neg, mapping_preview(layout, faces))


def mapping_preview(layout, faces) -> torch.Tensor:
    """The layout with each box labelled by the person bound to it: box k holds the k-th of the combined faces (the
    Composite checks one face per box), numbered from 1 as the workflows title their people (each encoder numbers
    only its own batch, so its labels would repeat across Combine Faces)."""
    return layout_preview(layout, labels=[f"person {k + 1}" for k in range(len(faces))])


NODES = [LocalBranchApply, GlobalLocationApply, MultiFaceComposite]
