"""The null identity: how RealisID turns identity off for one prediction and keeps everything else on.

RealisID's guidance (method.md section 5, items 14-15) needs, beside the prediction with text and identity, the
same conditioning with only the identity replaced by the NULL identity (the projection of a zero source): layout,
location and pose control stay on. Every piece of that protocol lives here:

* on a control (``RealisIDControl``): ``with_identity(enabled)`` returns a copy that uses the faces' p_id or the
  null identity; the copy's ``identity_twin`` names the control it mirrors and ``identity_enabled`` says which it
  is; ``routes_identity = True`` says the control can instead be told per cond which rows see the identity;
* the routing: ``transformer_options[IDENTITY_ROUTING_KEY] = {cond index: bool}``, read by ``identity_flags``;
  without it a control decides by itself (``identity_enabled``), so any guider is right, and model-level patches
  that have no control object (InstantID's IP-Adapter attention) use ComfyUI's convention, cond index 0 = the
  positive (``by_index``);
* the nodes: ``attach_with_null_twin`` puts a control on the positive and its null twin on the negative, so
  plain CFG already shows the identity to the positive only;
* the RealisID Guider: ``conditioning_without_identity`` derives the text-only set, ``share_identity_twins`` puts
  the positive's routed chain back on a negative that carries its twin (so the three predictions share ONE UNet
  batch), and ``fill_uncond_controls`` keeps core's legacy ``control_apply_to_uncond`` contract (the old Apply
  ControlNet node) with the null-identity controls.

Nothing here mutates a control or a conditioning that came in: changed links are copies.
"""

from __future__ import annotations

# transformer_options key: {cond index in a calc_cond_batch call: whether it sees the faces' identity}
IDENTITY_ROUTING_KEY = "realisid_identity"


def identity_flags(transformer_options: dict, chunks_fallback: int = 1, by_index: bool = False) -> list[bool]:
    """Per batch chunk of one UNet call: may it see the faces' identity (else the null identity)?

    A guider that evaluates several conds through ONE control object routes them with
    transformer_options[IDENTITY_ROUTING_KEY] = {cond index: bool} (the RealisID Guider: its three predictions then
    share one UNet batch). Without routing, a RealisID control decides by itself (`identity_enabled`: the negative
    carries a null-identity twin), so every guider is right; `by_index` is for model-level patches that have no
    control object (InstantID's IP-Adapter): ComfyUI's convention, cond index 0 = the positive.
    """
    chunks = transformer_options.get("cond_or_uncond")
    if chunks is None:
        return [True] * chunks_fallback
    routing = transformer_options.get(IDENTITY_ROUTING_KEY)
    if routing is not None:
        return [bool(routing.get(c, False)) for c in chunks]
    return [c == 0 for c in chunks] if by_index else [True] * len(chunks)


def attach_control(conditioning: list, control, links: dict | None = None) -> list:
    """A copy of `conditioning` whose entries carry `control` chained after their existing control.

    `links` maps a previous control to the copy chained after it: entries with the same previous control share
    one link (as core ControlNetApplyAdvanced does), and a caller can pre-fill it.
    """
    links = {} if links is None else links
    out = []
    for tensor, options in conditioning:
        options = options.copy()
        previous = options.get("control")
        if previous not in links:
            link = control.copy()
            link.set_previous_controlnet(previous)
            links[previous] = link
        options["control"] = links[previous]
        options["control_apply_to_uncond"] = False
        out.append([tensor, options])
    return out


def attach_with_null_twin(positive: list, negative: list, control) -> tuple[list, list]:
    """(positive, negative) copies: the positive carries `control`, the negative its null-identity twin.

    A negative entry's link is `with_identity(False)` of the positive link it mirrors, so the RealisID Guider can
    recognise the pair (`identity_twin`) and batch both: the link of the positive entry with the same previous
    control, or, when the negative's previous control is itself the null twin of a positive previous control (a
    chain: Local Branch Apply -> Global Location Apply), the twin of that control's link, chained after the
    negative's own previous control.
    """
    links: dict = {}
    positive = attach_control(positive, control, links)
    twins = {previous: link.with_identity(False) for previous, link in links.items()}
    for previous in _previous_controls(negative):
        mirrored = getattr(previous, "identity_twin", None)
        is_null_twin = mirrored is not None and not getattr(previous, "identity_enabled", True)
        if previous not in twins and is_null_twin and mirrored in links:
            twin = links[mirrored].with_identity(False)
            twin.set_previous_controlnet(previous)  # keep the negative's own (null-identity) chain under it
            twins[previous] = twin
    return positive, attach_control(negative, control.with_identity(False), twins)


def _previous_controls(conditioning: list) -> list:
    return [options.get("control") for _, options in conditioning]


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
    return out


def entry_has_identity(entry: dict) -> bool:
    return _chain_has(entry.get("control"), _carries_identity)


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


def share_identity_twins(negative, positive):
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


def without_apply_to_uncond(conds):
    """Entries copied with ``control_apply_to_uncond`` off: ComfyUI would copy the REAL control into the other sets."""
    return [[c[0], {**c[1], "control_apply_to_uncond": False}] + list(c[2:]) for c in conds]


def fill_uncond_controls(positive_text, negative):
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
