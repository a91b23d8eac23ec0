"""Three-way guidance with delayed identity (RealisID Eq. 8), as a ComfyUI guider.

    pred = pred_none + lt * (pred_t - pred_none) + li * (pred_ti - pred_t)

* ``pred_none``: the NEGATIVE conditioning, its identity controls switched to the null identity;
* ``pred_t``: the POSITIVE text, its identity controls switched to the null identity;
* ``pred_ti``: the POSITIVE conditioning as given (real identity).

The coefficients sum to one, so the combination is the same whether it is applied to noise or to the denoised
predictions ComfyUI's guiders work with. For the first ``id_delay`` fraction of the steps ``pred_ti`` is replaced by
``pred_t`` (FastComposer's delayed subject conditioning; method.md §5 item 14) and is not computed at all.

Cond order (what ``cond_or_uncond`` says to UNet patches): ``[positive, negative, positive_text]`` = 0, 1, 2, so
patches written for CFG (0 = cond, 1 = uncond) treat the identity positive and the negative as they would under
CFG; see RealisIDGuider for what cfg/pre-cfg/post-cfg functions see.

How the no-identity sets are derived (the null identity: layout and location stay on, only ``p_id`` becomes the
null projection): `realisid.null_identity`. Controls that route identity per cond (``RealisIDControl``) are shared
by all three sets and told per cond which rows see the identity, so the three predictions run as ONE UNet batch
(ComfyUI batches conds only when they share a control object); any other link with ``with_identity(enabled)`` is
replaced by its ``with_identity(False)`` copy in the no-identity sets.
"""

from __future__ import annotations

import logging
import math

import comfy.samplers
import torch

from realisid.memory import sampling_context
from realisid.null_identity import (
    IDENTITY_ROUTING_KEY,
    conditioning_has_identity,
    conditioning_without_identity,
    fill_uncond_controls,
    share_identity_twins,
    without_apply_to_uncond,
)

log = logging.getLogger(__name__)

# Positions of the predictions in one calc_cond_batch call, i.e. the `cond_or_uncond` values UNet patches see.
# ComfyUI's convention (CFGGuider, PerpNeg, IPAdapter/InstantID/PuLID patches): 0 = the positive, 1 = the
# negative, extra conds after them; the text-only (null identity) prediction is the extra one.
_POSITIVE, _NEGATIVE, _TEXT = 0, 1, 2


def three_way_combine(eps_none: torch.Tensor, eps_t: torch.Tensor, eps_ti: torch.Tensor, lt: float, li: float):
    """RealisID Eq. 8: ``eps_none + lt * (eps_t - eps_none) + li * (eps_ti - eps_t)``."""
    return eps_none + lt * (eps_t - eps_none) + li * (eps_ti - eps_t)


def identity_on_sigma(id_delay: float, sample_sigmas: torch.Tensor | None, model_sampling) -> float:
    """The largest sigma at which the identity prediction is used.

    With the run's schedule (``transformer_options["sample_sigmas"]``, ``steps + 1`` values) it is the sigma of step
    ``round(id_delay * steps)`` (halves round up), so identity is on from that step index onward: steps=10, delay 0.2
    -> steps 2..9. The fraction is of the steps this schedule runs (after denoise truncation, per split segment).
    Without a schedule it falls back to ``model_sampling.percent_to_sigma(id_delay)``.
    """
    if sample_sigmas is not None and sample_sigmas.numel() >= 2:
        steps = sample_sigmas.numel() - 1
        index = min(steps, int(math.floor(id_delay * steps + 0.5)))
        return float(sample_sigmas[index])
    return float(model_sampling.percent_to_sigma(id_delay))


class RealisIDGuider(comfy.samplers.CFGGuider):
    """Three-way guidance with delayed identity; a GUIDER for SamplerCustomAdvanced.

    ``set_conds(positive, negative)`` takes the ordinary CONDITIONING pair (positive carrying the RealisID control,
    negative the empty text); the no-identity text set is derived here without touching the inputs.

    What third-party code sees (ComfyUI's conventions, so patches written for CFG keep working):

    * **cond order**: one ``calc_cond_batch`` call per step, conds ``[positive, negative, positive_text]``, so
      ``transformer_options["cond_or_uncond"]`` is 0 for the positive (text + identity), 1 for the negative and 2
      for the extra text-only prediction (as PerpNeg's empty cond). During the delay only ``[positive_text,
      negative]`` run: 0 and 1, exactly plain CFG.
    * **sampler_pre_cfg_function** and **sampler_cfg_function** see the TEXT pair, ComfyUI's two-cond contract:
      cond = the text prediction (null identity), uncond = the negative, cond_scale = ``text_scale``. Their result
      is the text term; the identity term ``id_scale * (pred_ti - pred_t)`` is added afterwards on the raw
      predictions, as core's DualCFGGuider adds its second term outside ``cfg_function`` (a cfg function such as
      RescaleCFG has no notion of a second guidance direction). With ``id_scale`` 0 this is core CFG exactly.
    * **sampler_post_cfg_function** sees the full result as ``denoised``, ``cond_denoised`` = the positive's
      prediction (text + identity; the text prediction during the delay) and ``uncond_denoised`` = the negative's.
    """

    def __init__(self, model_patcher):
        super().__init__(model_patcher)
        self.set_scales()

    def set_conds(self, positive, negative):
        if not conditioning_has_identity(positive):
            log.warning(
                "RealisIDGuider: the positive conditioning carries no identity control (no control with "
                "with_identity()); the id term will be zero."
            )
        memo = {}  # shared, so a control applied to both positive and negative gets one null-identity copy
        positive_text = conditioning_without_identity(positive, memo)
        negative = share_identity_twins(negative, positive)
        negative = fill_uncond_controls(positive_text, conditioning_without_identity(negative, memo))
        self.inner_set_conds(
            {
                "positive": without_apply_to_uncond(positive),
                "positive_text": without_apply_to_uncond(positive_text),
                "negative": negative,
            }
        )

    def set_scales(self, text_scale: float = 7.5, id_scale: float = 5.0, id_delay: float = 0.2):
        if not 0.0 <= id_delay <= 1.0:
            raise ValueError(f"id_delay is a fraction of the steps and must be in [0, 1], got {id_delay}")
        self.text_scale = float(text_scale)
        self.id_scale = float(id_scale)
        self.id_delay = float(id_delay)
        self.cfg = self.text_scale  # what generic code reading guider.cfg expects

    def set_cfg(self, cfg):
        self.set_scales(cfg, self.id_scale, self.id_delay)

    def identity_active(self, timestep, model_options) -> bool:
        """Whether this evaluation is past the delay (see identity_on_sigma)."""
        sigmas = model_options.get("transformer_options", {}).get("sample_sigmas")
        sigma_on = identity_on_sigma(self.id_delay, sigmas, self.inner_model.model_sampling)
        sigma = float(timestep.flatten()[0]) if torch.is_tensor(timestep) else float(timestep)
        return sigma <= sigma_on * (1.0 + 1e-5) + 1e-9

    def predictions_per_step(self) -> int:
        """The most predictions one step evaluates (what the branches' memory estimate counts)."""
        return 2 if math.isclose(self.id_scale, 0.0) or self.id_delay >= 1.0 else 3

    def outer_sample(self, noise, latent_image, sampler, sigmas, *args, **kwargs):
        # the controls' memory estimate runs inside (prepare_sampling) and needs the latent shape and batch
        with sampling_context(tuple(noise.shape), self.predictions_per_step()):
            return super().outer_sample(noise, latent_image, sampler, sigmas, *args, **kwargs)

    def cond_sets(self, use_id: bool) -> tuple[list, int]:
        """The conds of one step in cond-index order, and the index of the text (null identity) prediction."""
        if use_id:
            return [self.conds.get("positive"), self.conds.get("negative"), self.conds.get("positive_text")], _TEXT
        return [self.conds.get("positive_text"), self.conds.get("negative")], _POSITIVE

    def predict_noise(self, x, timestep, model_options={}, seed=None):  # noqa: B006 (ComfyUI's signature)
        use_id = not math.isclose(self.id_scale, 0.0) and self.identity_active(timestep, model_options)
        conds, text = self.cond_sets(use_id)
        out = self._calc(conds, x, timestep, self._routed(model_options, use_id))
        pred_t, pred_none = self._pre_cfg(out[text], out[_NEGATIVE], conds[text], conds[_NEGATIVE], x, timestep,
                                          model_options)
        guided = self._text_guidance(pred_none, pred_t, x, timestep, model_options, conds[text], conds[_NEGATIVE])
        full = pred_t
        if use_id:  # on the raw text prediction: the pre-cfg functions shape the text term only
            full = out[_POSITIVE]
            guided = guided + self.id_scale * (out[_POSITIVE] - out[text])

        for fn in model_options.get("sampler_post_cfg_function", []):
            guided = fn(
                {"denoised": guided, "cond": conds[_POSITIVE], "uncond": conds[_NEGATIVE], "cond_scale": self.text_scale,
                 "model": self.inner_model, "uncond_denoised": pred_none, "cond_denoised": full,
                 "sigma": timestep, "model_options": model_options, "input": x}
            )
        return guided

    def _calc(self, conds, x, timestep, model_options):
        """All predictions in one calc_cond_batch call (it batches what can share a forward, within memory)."""
        if "sampler_calc_cond_batch_function" in model_options:
            args = {"conds": conds, "input": x, "sigma": timestep, "model": self.inner_model,
                    "model_options": model_options}
            return list(model_options["sampler_calc_cond_batch_function"](args))
        return list(comfy.samplers.calc_cond_batch(self.inner_model, conds, x, timestep, model_options))

    @staticmethod
    def _routed(model_options: dict, use_id: bool) -> dict:
        """model_options (copied) telling routed identity controls that only the positive (cond index 0, and only
        past the delay) sees the ID, so all predictions can share one control object, and so one UNet batch."""
        routing = {_POSITIVE: use_id, _NEGATIVE: False, _TEXT: False}
        transformer_options = {**model_options.get("transformer_options", {}), IDENTITY_ROUTING_KEY: routing}
        return {**model_options, "transformer_options": transformer_options}

    def _pre_cfg(self, pred_t, pred_none, cond_t, cond_none, x, timestep, model_options):
        """The text pair through the model's sampler_pre_cfg_functions (core's [cond, uncond] contract)."""
        for fn in model_options.get("sampler_pre_cfg_function", []):
            pair = fn({"conds": [cond_t, cond_none], "conds_out": [pred_t, pred_none], "cond_scale": self.text_scale,
                       "timestep": timestep, "input": x, "sigma": timestep, "model": self.inner_model,
                       "model_options": model_options})
            pred_t, pred_none = pair[0], pair[1]
        return pred_t, pred_none

    def _text_guidance(self, pred_none, pred_t, x, timestep, model_options, cond_t, cond_none):
        """``pred_none + lt * (pred_t - pred_none)``, or the model's sampler_cfg_function on that pair (the same
        arguments core's cfg_function passes)."""
        if "sampler_cfg_function" in model_options:
            args = {"cond": x - pred_t, "uncond": x - pred_none, "cond_scale": self.text_scale, "timestep": timestep,
                    "input": x, "sigma": timestep, "cond_denoised": pred_t, "uncond_denoised": pred_none,
                    "model": self.inner_model, "model_options": model_options, "input_cond": cond_t,
                    "input_uncond": cond_none}
            return x - model_options["sampler_cfg_function"](args)
        return pred_none + self.text_scale * (pred_t - pred_none)
