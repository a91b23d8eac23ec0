"""RealisID Guider: three-way guidance (none / text / text+identity) with the identity switched on late."""

import comfy.model_patcher
from comfy_api.latest import io

from realisid import validation
from realisid.guidance import RealisIDGuider


class Guider(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RealisIDGuider",
            display_name="RealisID Guider",
            category="RealisID/sampling",
            description="eps = eps_none + text_scale*(eps_text - eps_none) + id_scale*(eps_text+id - eps_text); "
                        "for the first id_delay of the steps the identity term is off. Use with "
                        "SamplerCustomAdvanced.",
            inputs=[
                io.Model.Input("model", tooltip="The base model (it is not modified)."),
                io.Conditioning.Input("positive", tooltip="Positive conditioning carrying the RealisID control."),
                io.Conditioning.Input("negative", tooltip="Negative conditioning (empty text works best)."),
                io.Float.Input("text_scale", default=7.5, min=0.0, max=30.0, step=0.1, round=0.01,
                               tooltip="lambda_t: guidance towards the text prompt."),
                io.Float.Input("id_scale", default=5.0, min=0.0, max=30.0, step=0.1, round=0.01,
                               tooltip="lambda_i: extra guidance towards the identity (0 = plain CFG)."),
                io.Float.Input("id_delay", default=0.2, min=0.0, max=1.0, step=0.01,
                               tooltip="Fraction of the first steps without identity guidance (layout forms "
                                       "first, as in FastComposer's delayed subject conditioning)."),
            ],
            outputs=[io.Guider.Output()],
        )

    @classmethod
    def execute(cls, model, positive, negative, text_scale, id_scale, id_delay) -> io.NodeOutput:
        # in input order, so the first bad input is named. NaN conditioning or a NaN scale (ComfyUI's min/max
        # checks pass NaN) would give an all-NaN latent without an error
        validation.of_type("model", model, comfy.model_patcher.ModelPatcher, "a checkpoint loader (a MODEL)")
        validation.conditioning("positive", positive)
        validation.conditioning("negative", negative)
        scales = {name: validation.finite_number(name, value)
                  for name, value in (("text_scale", text_scale), ("id_scale", id_scale), ("id_delay", id_delay))}
        guider = RealisIDGuider(model)
        guider.set_conds(positive, negative)
        guider.set_scales(**scales)
        return io.NodeOutput(guider)


NODES = [Guider]
