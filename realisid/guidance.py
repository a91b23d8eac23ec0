"""Three-way guidance with delayed identity (RealisID Eq. 8), as a ComfyUI guider.

    pred = pred_none + lt * (pred_t - pred_none) + li * (pred_ti - pred_t)

* ``pred_none``: the NEGATIVE conditioning, its identity controls switched to the null identity;
* ``pred_t``: the POSITIVE text, its identity controls switched to the null identity;
* ``pred_ti``: the POSITIVE conditioning as given (real identity).

The coefficients sum to one, so the combination is the same whether it is applied to noise or to the denoised
predictions ComfyUI's guiders work with. For the first ``id_delay`` fraction of the steps ``pred_ti`` is replaced by
``pred_t`` (FastComposer's delayed subject conditioning; method.md §5 item 14) and is not computed at all.

"Null identity" (method.md §5 items 14-15): layout and location control stay on, only ``p_id`` becomes the null
projection. Three hooks switch it:

* controls that route identity per cond (``routes_identity``: ``RealisIDControl``) are shared by all three sets
  (a negative carrying such a control's null twin gets the control itself back);
  ``transformer_options["realisid_identity"]`` tells them that only the text+ID prediction sees the identity, so
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

log = logging.getLogger(__name__)

NULL_CROSS_ATTN_KEY = "realisid_null_cross_attn"
CROSS_ATTN_CONTROLNET_KEY = "cross_attn_controlnet"

# Keys of the guider's conditioning sets; also the positions of their predictions in one calc_cond_batch call.
_NONE, _TEXT, _TEXT_ID = 0, 1, 2


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
    """Negative entries whose control is the null-identity twin of a positive entry's routed control get that
    control back: routing then gives them the null identity, and ComfyUI can batch all predictions together."""
    routed = {id(c): c for c in (_options(item).get("control") for item in positive)
              if c is not None and getattr(c, "routes_identity", False)}
    out = []
    for item in negative:
        control = _options(item).get("control")
        twin = getattr(control, "identity_twin", None)
        if twin is not None and id(twin) in routed and not getattr(control, "identity_enabled", True):
            options = {**_options(item), "control": twin}
            item = options if isinstance(item, dict) else [item[0], options] + list(item[2:])
        out.append(item)
    return out


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
    negative the empty text); the two no-identity sets are derived here without touching the inputs.
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

    def predict_noise(self, x, timestep, model_options={}, seed=None):  # noqa: B006 (ComfyUI's signature)
        lt, li = self.text_scale, self.id_scale
        use_id = not math.isclose(li, 0.0) and self.identity_active(timestep, model_options)
        conds = [self.conds.get("negative"), self.conds.get("positive_text")]
        if use_id:
            conds.append(self.conds.get("positive"))
        out = self._calc(conds, x, timestep, self._routed(model_options))

        for fn in model_options.get("sampler_pre_cfg_function", []):  # they expect the [cond, uncond] pair
            pair = fn(
                {"conds": [conds[_TEXT], conds[_NONE]], "conds_out": [out[_TEXT], out[_NONE]], "cond_scale": lt,
                 "timestep": timestep, "input": x, "sigma": timestep, "model": self.inner_model,
                 "model_options": model_options}
            )
            out[_TEXT], out[_NONE] = pair[0], pair[1]

        guided = self._text_guidance(out[_NONE], out[_TEXT], x, timestep, model_options, conds)
        full = out[_TEXT]
        if use_id:
            full = out[_TEXT_ID]
            guided = guided + li * (out[_TEXT_ID] - out[_TEXT])

        for fn in model_options.get("sampler_post_cfg_function", []):
            guided = fn(
                {"denoised": guided, "cond": conds[-1], "uncond": conds[_NONE], "cond_scale": lt,
                 "model": self.inner_model, "uncond_denoised": out[_NONE], "cond_denoised": full,
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
    def _routed(model_options: dict) -> dict:
        """model_options (copied) telling routed identity controls that only the text+ID prediction sees the ID,
        so the three predictions can share one control object, and so one UNet batch."""
        transformer_options = {**model_options.get("transformer_options", {}),
                               IDENTITY_ROUTING_KEY: {_NONE: False, _TEXT: False, _TEXT_ID: True}}
        return {**model_options, "transformer_options": transformer_options}

    def _text_guidance(self, pred_none, pred_t, x, timestep, model_options, conds):
        """``pred_none + lt * (pred_t - pred_none)``, or the model's sampler_cfg_function on that pair."""
        if "sampler_cfg_function" in model_options:
            args = {"cond": x - pred_t, "uncond": x - pred_none, "cond_scale": self.text_scale, "timestep": timestep,
                    "input": x, "sigma": timestep, "cond_denoised": pred_t, "uncond_denoised": pred_none,
                    "model": self.inner_model, "model_options": model_options, "input_cond": conds[_TEXT],
                    "input_uncond": conds[_NONE]}
            return x - model_options["sampler_cfg_function"](args)
        return pred_none + self.text_scale * (pred_t - pred_none)
