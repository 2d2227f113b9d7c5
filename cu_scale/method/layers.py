"""Building blocks both the implicit model and the grounding models use: time of the feature steps, spans
over them, a code of time offsets, and the cross-modal transformer layer. Plain PyTorch."""

from __future__ import annotations

import math

import torch
from torch import nn


def step_centres(valid_steps: torch.Tensor, max_steps: int) -> torch.Tensor:
    """(B, max_steps) normalised time of each step's centre, (k + ½)/n for the n valid steps (padding past 1)."""
    k = torch.arange(max_steps, device=valid_steps.device, dtype=torch.float32)
    return (k[None, :] + 0.5) / valid_steps[:, None].clamp(min=1).float()


def steps_inside(centres: torch.Tensor, valid: torch.Tensor, start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: the valid steps whose centre lies in [start − ½ step, end + ½ step] of normalised time, so
    that a span of zero length (a single-frame label) still covers the step it falls in."""
    half_step = 0.5 / valid.float().sum(1, keepdim=True).clamp(min=1)
    return (centres >= start[:, None] - half_step) & (centres <= end[:, None] + half_step) & valid


def offset_code(offsets: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal code of normalised offsets in [−1, 1]: (..., dim)."""
    frequencies = torch.exp(torch.linspace(0, math.log(64.0), dim // 2, device=offsets.device)) * math.pi
    angles = offsets[..., None] * frequencies
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class CrossModalLayer(nn.Module):
    """Self-attention on one modality, cross-attention to the other, feed-forward (pre-norm)."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.self_attention = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.cross_attention = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.feed_forward = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(3))

    def forward(self, x, x_valid, other, other_valid):
        h = self.norms[0](x)
        x = x + self.self_attention(h, h, h, key_padding_mask=~x_valid, need_weights=False)[0]
        h = self.norms[1](x)
        x = x + self.cross_attention(h, other, other, key_padding_mask=~other_valid, need_weights=False)[0]
        return x + self.feed_forward(self.norms[2](x))
