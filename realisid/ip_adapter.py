"""IP-Adapter's decoupled cross-attention: identity tokens read by the base UNet's own cross-attention layers.

For every cross-attention (attn2) of the base UNet, two bias-free projections of the identity tokens, `to_k_ip`
and `to_v_ip` (context -> the layer's width), give the keys and values of a second attention beside the text's;
`realisid.instantid.attention` adds its output inside each face's box. InstantID ships these weights for SDXL
(`realisid.instantid.model` reads them); a RealisID file may carry its own, trained with the branches
(`python -m realisid.train fit --ip-adapter`: the InstantID-style baseline of the paper's comparison), under the
keys `ip_adapter.to_k.<i>.weight` / `ip_adapter.to_v.<i>.weight`.

Layer order: diffusers' attention-processor indices (attn1 even, attn2 odd) over down_blocks, up_blocks, mid_block,
which ComfyUI's UNet enumerates as input_blocks, output_blocks, middle_block (`attn2_modules`), so index 2j+1 is
the j-th attn2 in that order, for InstantID's files and ours alike.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

TRAINED_WEIGHT = 1.0  # the weight `fit --ip-adapter` trains at (`PairedIPAttention`): a trained model's sampling weight


def attn2_modules(diffusion_model) -> Iterator[tuple[tuple[str, int, int], nn.Module]]:
    """((block_name, id, index), attn2 module) of every cross-attention, in diffusers' processor order;
    (block_name, id, index) is the key of ComfyUI's `patches_replace["attn2"]`."""
    groups = [("input", diffusion_model.input_blocks), ("output", diffusion_model.output_blocks),
              ("middle", [diffusion_model.middle_block])]
    for name, blocks in groups:
        for block_id, block in enumerate(blocks):
            for module in block:
                for index, tb in enumerate(getattr(module, "transformer_blocks", [])):
                    if getattr(tb, "attn2", None) is not None:
                        yield (name, block_id, index), tb.attn2


def attn2_widths(diffusion_model) -> list[int]:
    """The inner width of every cross-attention, in processor order (a trained IP-Adapter's config)."""
    return [attn2.to_k.out_features for _, attn2 in attn2_modules(diffusion_model)]


def processor_index(position: int) -> int:
    """diffusers' processor index of the position-th cross-attention (its self-attention takes the even one)."""
    return 2 * position + 1


class IPAdapterKV(nn.Module):
    """The per-cross-attention key/value projections of the identity tokens (no bias), zero until loaded or
    initialised. `to_k[str(i)]` / `to_v[str(i)]` for processor index i."""

    def __init__(self, widths: dict[int, int], context_dim: int):
        super().__init__()
        self.to_k = nn.ModuleDict()
        self.to_v = nn.ModuleDict()
        for index, width in sorted(widths.items()):
            for table in (self.to_k, self.to_v):
                table[str(index)] = nn.Linear(int(context_dim), int(width), bias=False)
                nn.init.zeros_(table[str(index)].weight)

    @classmethod
    def for_widths(cls, widths: list[int], context_dim: int) -> IPAdapterKV:
        """One pair per cross-attention of widths `widths` (processor order), as a RealisID config stores them."""
        return cls({processor_index(j): w for j, w in enumerate(widths)}, context_dim)

    @property
    def indices(self) -> list[int]:
        """Processor indices in diffusers order (1, 3, 5, ...)."""
        return sorted(int(i) for i in self.to_k)

    def context_dim(self) -> int:
        return next(iter(self.to_k.values())).in_features

    def project(self, index: int, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(K, V) of layer `index` for tokens (..., N, context), in the layer's weights' device and dtype."""
        k, v = self.to_k[str(index)], self.to_v[str(index)]
        tokens = tokens.to(device=k.weight.device, dtype=k.weight.dtype)
        return k(tokens), v(tokens)


def init_from_unet(ip_adapter: IPAdapterKV, diffusion_model) -> None:
    """IP-Adapter's start with one change: each to_k_ip copies its layer's text to_k (the identity tokens have the
    text's width), and each to_v_ip stays zero, so the new attention adds nothing until training moves it, like a
    ControlNet's zero convolutions (a short training budget cannot afford a perturbed base at step 0)."""
    layers = [attn2 for _, attn2 in attn2_modules(diffusion_model)]
    if len(layers) != len(ip_adapter.indices):
        raise ValueError(f"the base UNet has {len(layers)} cross-attention layers, the IP-Adapter "
                         f"{len(ip_adapter.indices)}")
    with torch.no_grad():
        for index, attn2 in zip(ip_adapter.indices, layers, strict=True):
            ip_adapter.to_k[str(index)].weight.copy_(attn2.to_k.weight)
