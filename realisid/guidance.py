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

"Null identity" (method.md §5 items 14-15): layout and location control stay on, only ``p_id`` becomes the null
projection. Three hooks switch it:

* controls that route identity per cond (``routes_identity``: ``RealisIDControl``) are shared by all three sets
  (a negative carrying such a control's null twin, link by link, gets the positive's chain back);
  ``transformer_options["realisid_identity"]`` tells them that only the positive (cond 0) sees the identity, so
  the three predictions can run as ONE UNet batch (ComfyUI batches conds only when they share a control object);
* any other link of an entry's ``'control'`` chain that has a callable ``with_identity(enabled)`` is replaced by
  ``with_identity(False)`` in the no-identity sets;
* an entry that carries ``'realisid_null_cross_attn'`` (tokens shaped like ``'cross_attn_controlnet'``) gets those
  tokens as its ``'cross_attn_controlnet'`` in the no-identity copy. This is the hook for controls that read the
  identity from the ControlNet cross-attention context (the InstantID path): set both keys on the positive entry.
"""

from __future__ import annotations

import logging
import math

import comfy.samplers
import torch

from realisid.control import IDENTITY_ROUTING_KEY
from realisid.memory import sampling_context

log = logging.getLogger(__name__)

NULL_CROSS_ATTN_KEY = "realisid_null_cross_attn"
CROSS_ATTN_CONTROLNET_KEY = "cross_attn_controlnet"

# Positions of the predictions in one calc_cond_batch call, i.e. the `cond_or_uncond` values UNet patches see.
# ComfyUI's convention (CFGGuider, PerpNeg, IPAdapter/InstantID/PuLID patches): 0 = the positive, 1 = the
# negative, extra conds after them; the text-only (null identity) prediction is the extra one.
_POSITIVE, _NEGATIVE, _TEXT = 0, 1, 2


def three_way_combine(eps_none: torch.Tensor, eps_t: torch.Tensor, eps_ti: torch.Tensor, lt: float, li: float):
    """RealisID Eq. 8: ``eps_none + lt * (eps_t - eps_none) + li * (eps_ti - eps_t)``."""
    return eps_none + lt * (eps_t - eps_none) + li * (eps_ti - eps_t)


def _carries_identity(control) -> bool:
    return callable(getattr(control, "with_identity", None))


def _has_identity_switch(control) -> bool:
    """Needs a null-identity copy: carries identity and cannot be routed per cond (RealisIDControl can)."""
    return _carries_identity(control) and not getattr(control, "routes_identity", False)


def _chain_has(control, test) -> bool:
    while control is not None:
        if test(control):
            return True
        control = control.previous_controlnet
    return False


def control_without_identity(control, memo: dict | None = None):
    """The control chain with every identity-carrying link switched to the null identity.

    Links are never mutated: each link that changes, or sits above one that changes, is rebuilt from a copy
    (``with_identity(False)`` or ``.copy()``) whose ``previous_controlnet`` is set to the rebuilt tail. A tail with no
    identity link is shared as is, so chains without identity come back as the very same object. ``memo`` (keyed by
    object id) makes a control shared by several entries map to one shared copy, so ComfyUI can still batch them.
    """
    if control is None or not _chain_has(control, _has_identity_switch):
        return control
    memo = {} if memo is None else memo
    key = id(control)
    if key in memo:
        return memo[key][1]
    tail = control_without_identity(control.previous_controlnet, memo)
    if _has_identity_switch(control):
        new = control.with_identity(False)
        if new is control:
            raise TypeError(f"{type(control).__name__}.with_identity(False) must return a copy, not the object itself")
    else:
        new = control.copy()
    new.set_previous_controlnet(tail)
    memo[key] = (control, new)  # keep `control` alive so its id cannot be reused while the memo lives
    return new


def entry_without_identity(entry: dict, memo: dict | None = None) -> dict:
    """A shallow copy of one conditioning options dict with its identity switched to the null identity."""
    out = dict(entry)
    if "control" in out:
        out["control"] = control_without_identity(out["control"], memo)
    if out.get(NULL_CROSS_ATTN_KEY) is not None:
        out[CROSS_ATTN_CONTROLNET_KEY] = out[NULL_CROSS_ATTN_KEY]
    return out


def entry_has_identity(entry: dict) -> bool:
    return _chain_has(entry.get("control"), _carries_identity) or entry.get(NULL_CROSS_ATTN_KEY) is not None


def conditioning_without_identity(conds, memo: dict | None = None):
    """The no-identity twin of a conditioning, never mutating the input.

    Accepts ComfyUI CONDITIONING (``[[tensor, dict], ...]``) or the converted form (``[dict, ...]``) and returns the
    same form with new lists/dicts; tensors are shared, changed controls are copies (see control_without_identity).
    """
    memo = {} if memo is None else memo
    out = []
    for item in conds:
        if isinstance(item, dict):
            out.append(entry_without_identity(item, memo))
        else:
            out.append([item[0], entry_without_identity(item[1], memo)] + list(item[2:]))
    return out


def conditioning_has_identity(conds) -> bool:
    return any(entry_has_identity(item if isinstance(item, dict) else item[1]) for item in conds)


def _share_identity_twins(negative, positive):
    """Negative entries whose control chain is the null-identity twin of a positive entry's routed chain get that
    chain back: routing then gives them the null identity, and ComfyUI can batch all predictions together."""
    routed = {id(c): c for c in (_options(item).get("control") for item in positive)
              if c is not None and getattr(c, "routes_identity", False)}
    out = []
    for item in negative:
        control = _options(item).get("control")
        twin = getattr(control, "identity_twin", None)
        if twin is not None and id(twin) in routed and _is_null_twin_chain(control, twin):
            options = {**_options(item), "control": twin}
            item = options if isinstance(item, dict) else [item[0], options] + list(item[2:])
        out.append(item)
    return out


def _is_null_twin(control, other) -> bool:
    return getattr(control, "identity_twin", None) is other and not getattr(control, "identity_enabled", True)


def _is_null_twin_chain(control, positive_control) -> bool:
    """Link by link, the same control or its null-identity twin (so swapping in the positive's chain, with the
    identity routed or switched off per cond, computes the same thing)."""
    while control is not None or positive_control is not None:
        if control is None or positive_control is None:
            return False
        if control is not positive_control and not _is_null_twin(control, positive_control):
            return False
        control, positive_control = control.previous_controlnet, positive_control.previous_controlnet
    return True


def _options(item) -> dict:
    """The options dict of a conditioning entry in either form ([tensor, dict] or the converted dict)."""
    return item if isinstance(item, dict) else item[1]


def _without_apply_to_uncond(conds):
    """Entries copied with ``control_apply_to_uncond`` off: ComfyUI would copy the REAL control into the other sets."""
    return [[c[0], {**c[1], "control_apply_to_uncond": False}] + list(c[2:]) for c in conds]


def _fill_uncond_controls(positive_text, negative):
    """The legacy ControlNetApply contract (``control_apply_to_uncond``), with the null-identity controls.

    Mirrors ComfyUI's fill of a control-less negative: the k-th such positive control goes to negative entry
    k mod n (entries with an 'area' take no part), but taken from the no-identity positive.
    """
    controls = [
        c[1]["control"]
        for c in positive_text
        if c[1].get("control_apply_to_uncond", False) and c[1].get("control") is not None and "area" not in c[1]
    ]
    if not controls or any(c[1].get("control") is not None for c in negative if "area" not in c[1]):
        return negative
    free = [i for i, c in enumerate(negative) if "area" not in c[1]]
    if not free:
        return negative
    out = list(negative)
    for k, control in enumerate(controls):
        i = free[k % len(free)]
        entry = {**negative[i][1], "control": control}
        if k < len(free):
            out[i] = [out[i][0], entry] + list(out[i][2:])
        else:
            out.append([negative[i][0], entry] + list(negative[i][2:]))
    return out


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
                "with_identity() and no '%s'); the id term will be zero.",
                NULL_CROSS_ATTN_KEY,
            )
        memo = {}  # shared, so a control applied to both positive and negative gets one null-identity copy
        positive_text = conditioning_without_identity(positive, memo)
        negative = _share_identity_twins(negative, positive)
        negative = _fill_uncond_controls(positive_text, conditioning_without_identity(negative, memo))
        self.inner_set_conds(
            {
                "positive": _without_apply_to_uncond(positive),
                "positive_text": _without_apply_to_uncond(positive_text),
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
