"""Multi-head self-attention through ``F.scaled_dot_product_attention`` and the pre-norm transformer block.

The attention takes tokens with any leading batch dimensions, ``(..., N, C)``, so factorised models can attend
within frames ``(B, T, H*W, C)`` or along time ``(B, H*W, T, C)`` by arranging the tokens, without reshaping the
weights. SDPA picks the flash or memory-efficient kernel on a GPU and the fused CPU kernel elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, trunc_normal_
from torch import nn


class Attention(nn.Module):
    """Multi-head self-attention over the second-to-last dimension of ``(..., N, C)`` tokens.

    Args:
        dim: token width ``C``.
        num_heads: heads; ``dim`` must divide evenly.
        qkv_bias: bias on the query/key/value projection (ViT uses one).
        attn_drop: dropout on the attention weights (training only).
        proj_drop: dropout after the output projection.
    """

    def __init__(
        self, dim: int, num_heads: int = 8, qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def split_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values ``(..., heads, N, head_dim)`` of tokens ``(..., N, C)``."""
        *lead, tokens, _ = x.shape
        qkv = self.qkv(x).view(*lead, tokens, 3, self.num_heads, self.head_dim)
        qkv = qkv.movedim(-3, 0).transpose(-2, -3)  # (3, ..., heads, N, head_dim)
        return qkv[0], qkv[1], qkv[2]

    def merge_heads(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., heads, N, head_dim)`` back to projected tokens ``(..., N, C)``."""
        x = x.transpose(-2, -3).flatten(-2)  # (..., N, C)
        return self.proj_drop(self.proj(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.split_heads(x)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.merge_heads(x)


class Block(nn.Module):
    """ViT's pre-norm block: ``x + attn(norm(x))`` then ``x + mlp(norm(x))``, with stochastic depth on both."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        attn: nn.Module | None = None,
        act_layer: Callable[[], nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = attn if attn is not None else Attention(dim, num_heads, qkv_bias, attn_drop, drop)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


def init_transformer_weights(model: nn.Module, embeddings: Iterable[nn.Parameter]) -> None:
    """ViT's initialisation: truncated normal (std 0.02) for the embeddings and every linear weight, zero biases."""
    for param in embeddings:
        trunc_normal_(param, std=0.02)
    for module in model.modules():
        if isinstance(module, nn.Linear):
            trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
