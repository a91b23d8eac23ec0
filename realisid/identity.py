"""Identity projectors: identity source (CLIP-vision tokens or a 512-d ArcFace vector) -> p_id tokens.

One class serves both: `Resampler`, a Perceiver-style resampler (learned queries attend to the source tokens),
the design of IP-Adapter-plus and InstantID's image projection. An ArcFace vector is a one-token source:
(B, 512) or (B, 1, 512) with embedding_dim 512 (`ArcFaceProjector` is the same class). Parameter names follow
that layout (`latents`, `proj_in`, `proj_out`, `norm_out`, `layers.{i}.0.{norm1,norm2,to_q,to_kv,to_out}`,
`layers.{i}.1.{0,1,3}`), so InstantID's `image_proj` weights load with `load_state_dict` directly.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import nn

DEFAULT_CONFIG = {"dim": 1280, "depth": 4, "dim_head": 64, "heads": 20, "num_queries": 16, "embedding_dim": 1280,
                  "output_dim": 2048, "ff_mult": 4, "source_tokens": 257}
CONFIG_KEYS = tuple(DEFAULT_CONFIG)


def feed_forward(dim: int, mult: int) -> nn.Sequential:
    """LayerNorm -> Linear up -> GELU -> Linear down (indices 0, 1, 2, 3: the checkpoint key layout)."""
    inner = int(dim * mult)
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, inner, bias=False), nn.GELU(),
                         nn.Linear(inner, dim, bias=False))


class PerceiverAttention(nn.Module):
    """Queries (latents) attend to [source tokens, latents]; multi-head, no biases."""

    def __init__(self, dim: int, dim_head: int, heads: int):
        super().__init__()
        self.heads, self.dim_head = heads, dim_head
        inner = dim_head * heads
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        x, latents = self.norm1(x), self.norm2(latents)
        q = rearrange(self.to_q(latents), "b n (h d) -> b h n d", h=self.heads)
        k, v = rearrange(self.to_kv(torch.cat([x, latents], dim=1)), "b n (two h d) -> two b h n d", two=2,
                         h=self.heads)
        # scale split between q and k (as the reference does) keeps fp16 products in range
        scale = 1.0 / math.sqrt(math.sqrt(self.dim_head))
        weight = torch.softmax((q * scale) @ (k * scale).transpose(-2, -1), dim=-1)
        out = rearrange(weight @ v, "b h n d -> b n (h d)")
        return self.to_out(out)


class Resampler(nn.Module):
    """(B, N, embedding_dim) source tokens -> (B, num_queries, output_dim) identity tokens."""

    def __init__(self, dim=1280, depth=4, dim_head=64, heads=20, num_queries=16, embedding_dim=1280,
                 output_dim=2048, ff_mult=4, source_tokens=257):
        super().__init__()
        self.embedding_dim, self.source_tokens = embedding_dim, source_tokens
        self.latents = nn.Parameter(torch.randn(1, num_queries, dim) / dim**0.5)
        self.proj_in = nn.Linear(embedding_dim, dim)
        self.proj_out = nn.Linear(dim, output_dim)
        self.norm_out = nn.LayerNorm(output_dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim, dim_head, heads), feed_forward(dim, ff_mult)]) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 2:  # a batch of vectors (ArcFace): one token each
            x = x[:, None]
        if x.ndim != 3 or x.shape[-1] != self.embedding_dim:
            raise ValueError(f"identity source of shape {tuple(x.shape)} does not match this projector: "
                             f"expected (B, N, {self.embedding_dim}) or (B, {self.embedding_dim})")
        latents = self.latents.repeat(x.shape[0], 1, 1)
        x = self.proj_in(x)
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        return self.norm_out(self.proj_out(latents))


ArcFaceProjector = Resampler  # same network; use embedding_dim=512, source_tokens=1 and feed (B, 512)


def widths_for_context(context_dim: int) -> dict:
    """The projector's inner width for a base of this cross-attention width: InstantID's 1280 (20 heads of 64) for
    SDXL, never wider than the context itself (an SDXL-wide projector on RealisID-Mini's 128-wide context would be
    ~80 M parameters beside ~9 M of branches)."""
    dim = min(DEFAULT_CONFIG["dim"], int(context_dim))
    return {"dim": dim, "heads": max(1, dim // DEFAULT_CONFIG["dim_head"])}


def projector_config(config: dict | None = None, **overrides) -> dict:
    """A complete projector config: DEFAULT_CONFIG updated with `config` and overrides; rejects unknown keys."""
    merged = {**DEFAULT_CONFIG, **(config or {}), **overrides}
    unknown = sorted(set(merged) - set(CONFIG_KEYS))
    if unknown:
        raise ValueError(f"unknown projector config keys {unknown}; known: {list(CONFIG_KEYS)}")
    return merged


def build_projector(config: dict) -> Resampler:
    """Build a projector from a (possibly partial) config dict; see DEFAULT_CONFIG for the keys."""
    return Resampler(**projector_config(config))
