"""Multi-head pooling attention (MViT, Fan et al. 2021, Sec. 3.1).

Queries, keys and values are each pooled over the token grid ``(T, H, W)`` before attention: a depthwise
``Conv3d`` per head (the "conv" pooling of the paper's MViT-B) followed by ``LayerNorm``. Pooling the keys and
values with stride ``s`` divides attention's cost by ``prod(s)``; pooling the queries with stride 2 in H and W
halves the output grid, which is how a stage begins. A CLS token, when present, is left out of the pooling and put
back in front.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

Shape3 = tuple[int, int, int]


class Pool(nn.Module):
    """Depthwise ``Conv3d`` pooling (+ ``LayerNorm``) of per-head tokens ``(B, heads, [1 +] T*H*W, head_dim)``."""

    def __init__(self, head_dim: int, kernel: Shape3, stride: Shape3) -> None:
        super().__init__()
        padding = tuple(k // 2 for k in kernel)
        self.conv = nn.Conv3d(head_dim, head_dim, kernel, stride=stride, padding=padding, groups=head_dim, bias=False)
        self.norm = nn.LayerNorm(head_dim, eps=1e-6)

    def forward(self, x: torch.Tensor, grid: Shape3, has_cls: bool) -> tuple[torch.Tensor, Shape3]:
        batch, heads, _, head_dim = x.shape
        cls, x = (x[:, :, :1], x[:, :, 1:]) if has_cls else (None, x)
        x = x.reshape(batch * heads, *grid, head_dim).permute(0, 4, 1, 2, 3)  # (B*heads, head_dim, T, H, W)
        x = self.conv(x)
        grid = tuple(x.shape[2:])
        x = x.flatten(2).transpose(1, 2).reshape(batch, heads, -1, head_dim)  # (B, heads, T'H'W', head_dim)
        if cls is not None:
            x = torch.cat([cls, x], dim=2)
        return self.norm(x), grid


class PoolingAttention(nn.Module):
    """Self-attention whose queries, keys and values are pooled over the ``(T, H, W)`` token grid.

    Args:
        dim: token width (kept: MViT widens tokens in the MLP, not here).
        num_heads: heads.
        kernel_q: query pooling kernel; None (or stride and kernel all 1) = no query pooling.
        stride_q: query pooling stride: the output grid is the input grid divided by it.
        kernel_kv: key/value pooling kernel; None = none.
        stride_kv: key/value pooling stride.
        qkv_bias: bias on the Q/K/V projections.
        has_cls: the first token is a CLS token (not pooled).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        kernel_q: Shape3 | None = None,
        stride_q: Shape3 = (1, 1, 1),
        kernel_kv: Shape3 | None = None,
        stride_kv: Shape3 = (1, 1, 1),
        qkv_bias: bool = True,
        has_cls: bool = True,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.head_dim, self.has_cls = num_heads, dim // num_heads, has_cls
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

        def pool(kernel: Shape3 | None, stride: Shape3) -> Pool | None:
            if kernel is None or (max(kernel) == 1 and max(stride) == 1):
                return None
            return Pool(self.head_dim, kernel, stride)

        self.pool_q = pool(kernel_q, stride_q)
        self.pool_k = pool(kernel_kv, stride_kv)
        self.pool_v = pool(kernel_kv, stride_kv)

    def forward(self, x: torch.Tensor, grid: Shape3) -> tuple[torch.Tensor, Shape3]:
        """Tokens ``(B, [1 +] T*H*W, dim)`` on ``grid`` to tokens on the (query-pooled) output grid."""
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).view(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, heads, N, head_dim)
        out_grid = grid
        if self.pool_q is not None:
            q, out_grid = self.pool_q(q, grid, self.has_cls)
        if self.pool_k is not None:
            k, _ = self.pool_k(k, grid, self.has_cls)
            v, _ = self.pool_v(v, grid, self.has_cls)
        x = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N_q, head_dim)
        x = x.transpose(1, 2).reshape(batch, -1, dim)
        return self.proj(x), out_grid
