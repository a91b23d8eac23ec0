"""IP-Adapter identity in the base UNet's cross-attention, restricted per face to its box: InstantID's weights, or
a RealisID model's own (`realisid.ip_adapter`; trained through `PairedIPAttention`, the same masked attention).

For every cross-attention (attn2) of the base UNet, the output before `to_out` becomes

    attn(q, k_text, v_text) + weight * sum_i m_i * attn(q, k_ip(p_i), v_ip(p_i)),   m_i = mask_i / max(1, sum_j mask_j)

where p_i are face i's identity tokens and mask_i is face i's box coverage on that block's cells (placed where the
UNet's own down-sampling puts them, `geometry.unet_levels`; exactly 0 outside the box), so a face's tokens act only
inside its region. Where boxes overlap, the faces' terms are averaged by coverage instead of summed: the pack's
overlap policy (`geometry.overlap_norm`), the same as the local branch's. Applied on a CLONE of the MODEL through
`patches_replace["attn2"][(block, id, index)]` (ComfyUI's mechanism, as cubiq/ComfyUI_InstantID uses), gated by
sigma between start and end percent.

Processor pairing: InstantID's `ip_adapter` keys count diffusers' attention processors (attn1 even, attn2 odd) in
the order down_blocks, up_blocks, mid_block. ComfyUI's blocks are enumerated from the UNet itself in that order
(input_blocks, output_blocks, middle_block; transformer blocks in order inside each), so any SDXL-family UNet
pairs with the file whose widths match it (checked).

Which evaluations get the identity: `realisid.null_identity.identity_flags(..., by_index=True)`: ComfyUI's convention
(cond index 0 is the positive; the patch has no control object to ask), or the RealisID Guider's explicit routing.
The others get the null tokens (the projection of a zero embedding, InstantID's unconditional input). Always
inside the boxes only.
"""

from __future__ import annotations

import copy

import comfy.ldm.modules.attention as comfy_attention
import torch

from realisid import geometry
from realisid.ip_adapter import TRAINED_WEIGHT, attn2_modules
from realisid.null_identity import identity_flags


def attn2_blocks(diffusion_model) -> list[tuple[tuple[str, int, int], int]]:
    """[((block_name, id, index), width)] of every cross-attention, in diffusers' processor order."""
    return [(key, attn2.to_k.out_features) for key, attn2 in attn2_modules(diffusion_model)]


def pair_blocks(diffusion_model, ip_adapter) -> list[tuple[tuple[str, int, int], int]]:
    """[((block_name, id, index), processor index)]; raises when the UNet and the IP-Adapter do not match."""
    blocks = attn2_blocks(diffusion_model)
    indices = ip_adapter.indices
    if len(blocks) != len(indices):
        raise ValueError(f"the MODEL's UNet has {len(blocks)} cross-attention layers but the IP-Adapter has "
                         f"{len(indices)}: an IP-Adapter needs the base it was trained for (InstantID's: SDXL 1.0).")
    pairs = []
    for (key, width), index in zip(blocks, indices, strict=True):
        layer = ip_adapter.to_k[str(index)]
        if layer.out_features != width:
            raise ValueError(f"IP-Adapter layer {index} is {layer.out_features} wide but the MODEL's cross-attention "
                             f"{key} is {width} wide: this base UNet is not the one the IP-Adapter was trained on.")
        pairs.append((key, index))
    return pairs


def feature_level(tokens: int, original_shape, levels) -> geometry.Level:
    """The UNet level whose feature map has `tokens` cells on a UNet input of shape (B, C, H, W)."""
    h, w = int(original_shape[-2]), int(original_shape[-1])
    for level in levels:
        if level.size(h) * level.size(w) == tokens:
            return level
    raise ValueError(f"cannot place {tokens} attention tokens on a {h}x{w} latent")


def box_token_masks(boxes: torch.Tensor, tokens: int, latent_hw, levels) -> torch.Tensor:
    """(K, T, 1) float64: each box's (latent units) coverage of the cells of the block whose feature map has T
    tokens (where the UNet's own down-sampling puts them), exactly 0 outside the box."""
    level = feature_level(tokens, latent_hw, levels)
    mask = geometry.level_box_mask(boxes, latent_hw, level)  # (K, 1, h, w)
    return mask.reshape(mask.shape[0], -1, 1)


def block_attention(q, k, v, extra_options) -> torch.Tensor:
    """attn(q, k, v) with the block's heads and attention precision (the text's and the identity's alike)."""
    return comfy_attention.optimized_attention(q, k, v, extra_options["n_heads"],
                                               attn_precision=extra_options.get("attn_precision"))


class PairedIPAttention:
    """Training's attn2 replacement (`realisid.train.step`): one face per batch row, row b's identity tokens acting
    inside row b's box, the same masked attention as `RegionalIPAttention` with K = 1 face per row (the trainer
    draws one person per sample, so there is no overlap to average). k, v: (B, N, inner), already the null
    tokens' on rows whose identity was dropped; boxes: (B, 4) latent units."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor, boxes: torch.Tensor, levels,
                 weight: float = TRAINED_WEIGHT):
        self.k, self.v, self.boxes, self.levels, self.weight = k, v, boxes, levels, float(weight)

    def __call__(self, q, k, v, extra_options):
        out = block_attention(q, k, v, extra_options)
        hw = tuple(int(s) for s in extra_options["original_shape"][-2:])
        mask = box_token_masks(self.boxes, q.shape[1], hw, self.levels).to(q.device, q.dtype)  # (B, T, 1)
        ip = block_attention(q, self.k.to(q.dtype), self.v.to(q.dtype), extra_options)
        return out + ip * mask * self.weight


class RegionalIPAttention:
    """One attn2 replacement: text attention plus each face's IP attention inside its box."""

    def __init__(self, k_faces, v_faces, k_null, v_null, boxes, weight, sigma_range, levels, previous=None):
        self.k_faces, self.v_faces = k_faces, v_faces  # (K, N, inner), CPU float32 masters, never changed
        self.k_null, self.v_null = k_null, v_null  # (1, N, inner)
        self.boxes = boxes  # K geometry.FaceSquare or (x0, y0, x1, y1) fractions, resolved per latent size
        self.levels = levels  # the base UNet's levels (geometry.unet_levels)
        self.weight = float(weight)
        self.sigma_start, self.sigma_end = sigma_range
        self.previous = previous  # an attn2 replacement already on the MODEL for this block, kept in the chain
        self._reset_caches()

    def _reset_caches(self) -> None:
        """Everything derived from the masters per latent size, device and dtype (rebuilt on demand)."""
        self._masks, self._boxes = {}, {}
        self._kv_key, self._kv = None, None  # the K/V on the last (device, dtype) asked for, see `_device_kv`
        self._rows = {}  # (identity flags, batch, device) -> (B,) bool rows, see `_identity_rows`

    def __deepcopy__(self, memo):
        """ModelPatcher.clone() deep-copies model_options, so every clone copies this object: the copy gets its
        own masters and chain (as a plain deep copy would) but empty caches, instead of duplicating the device
        copies on the GPU."""
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        for name, value in vars(self).items():
            if not name.startswith("_"):  # the underscored attributes are the caches
                setattr(new, name, copy.deepcopy(value, memo))
        new._reset_caches()
        return new

    def _active(self, extra_options) -> bool:
        sigmas = extra_options.get("sigmas")
        if sigmas is None:
            return True
        sigma = float(sigmas.flatten()[0])
        return self.sigma_end <= sigma <= self.sigma_start

    def _mask(self, tokens, extra_options, device, dtype) -> torch.Tensor:
        """(K, T, 1): each face's coverage of this block's cells, overlaps averaged (the overlap policy)."""
        hw = tuple(int(v) for v in extra_options["original_shape"][-2:])
        key = (tokens, hw, device, dtype)
        if key not in self._masks:
            mask = box_token_masks(self._latent_boxes(hw), tokens, hw, self.levels)  # (K, T, 1), 0 outside
            norm = geometry.overlap_norm(mask[..., 0][:, None])  # over (K, 1, T): where boxes overlap
            if norm is not None:
                mask = mask * norm.reshape(1, -1, 1)
            self._masks[key] = mask.to(device, dtype)
        return self._masks[key]

    def _latent_boxes(self, hw) -> torch.Tensor:
        """(K, 4) latent units of the boxes on an (H, W) latent, resolved once per size (one aspect warning)."""
        if hw not in self._boxes:
            self._boxes[hw] = geometry.frac_to_latent(geometry.box_fractions(self.boxes, hw), hw)
        return self._boxes[hw]

    def _device_kv(self, device, dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(k_faces, v_faces, k_null, v_null) on `device` in `dtype`, copied once and reused by later calls.

        Without this, every attn2 call (70 per SDXL UNet call) copies four CPU float32 tensors to the device. One
        entry only: sampling runs on one device and dtype, and a new one (another device, a model reloaded in
        another precision) replaces the old copies rather than keeping both on the GPU. The CPU float32 masters
        never change after construction, so (device, dtype) is the whole cache key.
        """
        key = (torch.device(device), dtype)
        if self._kv_key != key:
            self._kv = tuple(t.to(device, dtype) for t in (self.k_faces, self.v_faces, self.k_null, self.v_null))
            self._kv_key = key
        return self._kv

    def _identity_rows(self, batch, extra_options, device) -> torch.Tensor:
        """(B,) bool on `device`: which rows get the faces' tokens (the others get the null tokens).

        Cached per (flags, batch, device) like the K/V: a fresh tensor would be one more host-to-device copy per
        attn2 call, and a UNet call sees only a couple of distinct routings (cond, uncond, or both batched).
        """
        flags = tuple(identity_flags(extra_options, by_index=True))
        key = (flags, batch, torch.device(device))
        if key not in self._rows:
            per_chunk = batch // len(flags)
            self._rows[key] = torch.tensor(flags, dtype=torch.bool).repeat_interleave(per_chunk).to(device)
        return self._rows[key]

    def __call__(self, q, k, v, extra_options):
        if self.previous is not None:
            out = self.previous(q, k, v, extra_options)
        else:
            out = block_attention(q, k, v, extra_options)
        if self.weight == 0.0 or not self._active(extra_options):
            return out
        return out + self.ip_term(q, extra_options)

    def ip_term(self, q, extra_options) -> torch.Tensor:
        """weight * sum_i m_i * attn(q, k_i, v_i) for the faces (or the null tokens, per row)."""
        b, t, _ = q.shape
        n_faces = self.k_faces.shape[0]
        use_id = self._identity_rows(b, extra_options, q.device)
        k_faces, v_faces, k_null, v_null = self._device_kv(q.device, q.dtype)
        k_null, v_null = k_null.expand_as(k_faces), v_null.expand_as(v_faces)
        sel = use_id[None, :, None, None]  # (1, B, 1, 1) -> per face and row: faces' or null tokens
        k_rows = torch.where(sel, k_faces[:, None], k_null[:, None]).flatten(0, 1)  # (K*B, N, inner)
        v_rows = torch.where(sel, v_faces[:, None], v_null[:, None]).flatten(0, 1)
        q_rows = q.repeat(n_faces, 1, 1)  # face-major, like k_rows
        ip = block_attention(q_rows, k_rows, v_rows, extra_options)
        mask = self._mask(t, extra_options, q.device, q.dtype)  # (K, T, 1)
        return (ip.reshape(n_faces, b, t, -1) * mask[:, None]).sum(dim=0) * self.weight


def _project_kv(ip_adapter, index: int, tokens: torch.Tensor):
    """CPU float32 K/V masters (the layers may rest in fp16 wherever the memory manager left them)."""
    with torch.no_grad():
        return tuple(t.float().cpu() for t in ip_adapter.project(index, tokens))


def apply_regional_ip_adapter(model_patcher, instantid_model, faces, weight: float = 0.8,
                              start_percent: float = 0.0, end_percent: float = 1.0):
    """A CLONE of `model_patcher` whose cross-attentions add each face's IP-Adapter identity inside its box.

    faces: [(ip_tokens (N, C), box)], box a geometry.FaceSquare (resolved against each latent) or (x0, y0, x1, y1)
    fractions; tokens from instantid_model.project().
    The input MODEL is never changed (its model_options and weights stay as they were).
    """
    if not faces:
        raise ValueError("apply_regional_ip_adapter needs at least one (tokens, box) face")
    if not 0.0 <= start_percent <= end_percent <= 1.0:
        raise ValueError(f"need 0 <= start_percent <= end_percent <= 1, got {start_percent}, {end_percent}")
    ip_adapter = instantid_model.ip_adapter
    diffusion_model = model_patcher.model.diffusion_model
    pairs = pair_blocks(diffusion_model, ip_adapter)
    levels = geometry.unet_levels(diffusion_model)
    tokens = torch.stack([torch.as_tensor(t).reshape(-1, t.shape[-1]).float() for t, _ in faces])
    boxes = [box if isinstance(box, geometry.FaceSquare) else tuple(float(v) for v in box) for _, box in faces]
    null = instantid_model.null_identity(1).float()
    sampling = model_patcher.get_model_object("model_sampling")
    sigma_range = (sampling.percent_to_sigma(start_percent), sampling.percent_to_sigma(end_percent))
    patched = model_patcher.clone()
    existing = patched.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
    for key, index in pairs:
        k_faces, v_faces = _project_kv(ip_adapter, index, tokens)
        k_null, v_null = _project_kv(ip_adapter, index, null)
        previous = existing.get(key) or existing.get(key[:2])
        fn = RegionalIPAttention(k_faces, v_faces, k_null, v_null, boxes, weight, sigma_range, levels, previous)
        patched.set_model_attn2_replace(fn, key[0], key[1], key[2])
    return patched
