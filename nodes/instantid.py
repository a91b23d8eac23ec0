"""InstantID stand-in: IdentityNet as RealisID's local branch, and its regional IP-Adapter identity."""

import comfy.model_patcher
import folder_paths
from comfy_api.latest import io

from realisid import checkpoint, conditioning, validation
from realisid.checkpoint import RealisIDModel as RealisIDModelClass
from realisid.faces import check_space
from realisid.instantid import attention as instantid_attention
from realisid.instantid import model as instantid
from realisid.layout import LayoutError, checked_layout

from .loaders import check_present, model_path
from .types import Faces, Layout, RealisIDModel

CATEGORY = "RealisID/instantid"


class InstantIDLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RealisIDInstantIDLoader",
            display_name="RealisID InstantID Loader",
            category=CATEGORY,
            description="Loads InstantID's IdentityNet and IP-Adapter as a RealisID model whose local branch is "
                        "IdentityNet (no RealisID training needed; an approximation of the paper's model).",
            inputs=[
                io.Combo.Input("control_net_name", options=folder_paths.get_filename_list("controlnet"),
                               tooltip="InstantID's IdentityNet: ControlNetModel/diffusion_pytorch_model.safetensors "
                                       "from InstantX/InstantID, placed in models/controlnet (e.g. renamed "
                                       "instantid_controlnet.safetensors)."),
                io.Combo.Input("ip_adapter_name", options=folder_paths.get_filename_list("instantid"),
                               tooltip="InstantID's ip-adapter.bin (or a .safetensors copy) in models/instantid. "
                                       "Its Resampler turns the ArcFace embedding into identity tokens."),
                io.Int.Input("crop_size", default=instantid.DEFAULT_CROP_SIZE, min=16, max=256, step=8,
                             tooltip="Latent cells each face crop is re-rendered at by IdentityNet. 128 = 1024 px, "
                                     "InstantID's training scale; smaller is faster and less detailed."),
                io.Float.Input("crop_frame", default=instantid.DEFAULT_CROP_FRAME, min=1.0,
                               max=instantid.MAX_CROP_FRAME, step=0.1, optional=True,
                               tooltip="Side of IdentityNet's crop over the face box's side: IdentityNet learnt "
                                       "head-and-shoulders portraits, so its crop is the face box widened by this "
                                       "(the keypoints are drawn on the face inside it). 1 = the crop is the face "
                                       "box; wider gives the face fewer pixels and reaches into neighbours."),
                io.Boolean.Input("restore_noise", default=instantid.DEFAULT_RESTORE_NOISE, optional=True,
                                 tooltip="Up-sampling a small face's crop lowers the noise level in parts of it "
                                         "below the one IdentityNet learnt for that step; on adds fresh noise there "
                                         "to bring it back (measured in docs/instantid.md)."),
            ],
            outputs=[RealisIDModel.Output(display_name="instantid")],
        )

    @classmethod
    def validate_inputs(cls, control_net_name, ip_adapter_name) -> bool | str:
        return check_present(control_net_name=("controlnet", control_net_name),
                             ip_adapter_name=("instantid", ip_adapter_name))

    @classmethod
    def execute(cls, control_net_name, ip_adapter_name, crop_size,
                crop_frame=instantid.DEFAULT_CROP_FRAME,
                restore_noise=instantid.DEFAULT_RESTORE_NOISE) -> io.NodeOutput:
        cn_path = model_path("controlnet", control_net_name)
        ip_path = model_path("instantid", ip_adapter_name)
        return io.NodeOutput(instantid.load_instantid(cn_path, ip_path, crop_size=crop_size, crop_frame=crop_frame,
                                                      restore_noise=restore_noise))


class InstantIDAttention(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RealisIDInstantIDAttention",
            display_name="RealisID InstantID Regional Attention",
            category=CATEGORY,
            description="Adds IP-Adapter identity to the MODEL's cross-attention (InstantID's, or a RealisID model's "
                        "trained with --ip-adapter), face i's identity acting only inside layout box i. Returns a "
                        "patched copy; the input MODEL is unchanged.",
            inputs=[
                io.Model.Input("model", tooltip="The base MODEL the IP-Adapter was trained on (InstantID: SDXL)."),
                RealisIDModel.Input("instantid", tooltip="From RealisID InstantID Loader, or a RealisID model "
                                                         "trained with an IP-Adapter (RealisID Model Loader)."),
                Faces.Input("faces", tooltip="From RealisID Face Encoder with the analysis the model was trained "
                                             "on (InstantID: insightface antelopev2); face i goes to layout box i."),
                Layout.Input("layout", tooltip="Where each face goes (the same layout as the composite node)."),
                io.Float.Input("weight", default=0.8, min=0.0, max=3.0, step=0.05,
                               tooltip="Strength of the identity tokens in the UNet's cross-attention "
                                       "(InstantID's ip_weight). 0 disables the patch."),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Fraction of the sampling at which the identity attention starts."),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Fraction of the sampling at which the identity attention stops."),
            ],
            outputs=[io.Model.Output(display_name="model")],
        )

    @classmethod
    def execute(cls, model, instantid, faces, layout, weight, start_percent, end_percent) -> io.NodeOutput:
        return io.NodeOutput(apply_attention(model, instantid, faces, layout, weight, start_percent, end_percent))


def apply_attention(model, instantid_model, faces, layout, weight, start_percent, end_percent):
    """Validate the inputs and return the patched MODEL clone (or the MODEL itself when there are no faces or the
    weight is 0: core's convention, strength 0 returns the input and costs nothing)."""
    weight, start_percent, end_percent = (validation.finite_number(name, value) for name, value in
                                          (("weight", weight), ("start_percent", start_percent),
                                           ("end_percent", end_percent)))
    validation.percent_range("start_percent", start_percent, "end_percent", end_percent, allow_equal=True)
    if getattr(instantid_model, "ip_adapter", None) is None:
        raise validation.InputError(f"instantid must come from RealisID InstantID Loader or be a RealisID model "
                                    f"trained with --ip-adapter, got {_what(instantid_model)} (it has no IP-Adapter "
                                    f"weights)")
    validation.of_type("model", model, comfy.model_patcher.ModelPatcher, "a checkpoint loader (a MODEL)")
    if instantid.is_instantid(instantid_model):
        instantid.check_base(instantid_model, model)
    else:
        checkpoint.check_base_compat(instantid_model, model)
    faces = validation.faces("faces", faces)
    checked_layout("layout", layout)
    if not faces or weight == 0.0:
        return model  # no face (the encoder's pass-through policy) or weight 0: nothing to add
    if len(faces) != len(layout):
        raise LayoutError(f"{len(faces)} encoded face(s) but the layout places {len(layout)}: give one box per person")
    for face in faces:
        check_space(face.space, instantid_model.identity_space)
    tokens = conditioning.identity_tokens(instantid_model, faces)
    pairs = [(t, slot.square) for t, slot in zip(tokens, layout.slots, strict=True)]
    return instantid_attention.apply_regional_ip_adapter(model, instantid_model, pairs, weight, start_percent,
                                                         end_percent)


def _what(value) -> str:
    return ("a RealisID checkpoint without an IP-Adapter" if isinstance(value, RealisIDModelClass)
            else f"a {type(value).__name__}")


NODES = [InstantIDLoader, InstantIDAttention]
