"""Activation checkpointing for a model's block stack (timm's ``set_grad_checkpointing`` convention).

With it on, each block's activations are dropped after its forward pass and recomputed during the backward pass:
about one more forward's worth of compute for the memory of one block instead of all of them, which lets the big
video models (MViT-B 16x4, ViViT, TimeSformer at 224 px) train with larger batches on one GPU.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


class CheckpointedBlocks:
    """Mixin for ``nn.Module`` models: ``set_grad_checkpointing(True)`` and ``self.run_block(block, *inputs)``."""

    grad_checkpointing: bool = False

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def run_block(self, block: nn.Module, *inputs: Any) -> Any:
        """``block(*inputs)``, checkpointed when on and gradients are being recorded (never in evaluation)."""
        if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
            # non-reentrant: works with torch.compile, DDP and inputs that need no grad
            return checkpoint(block, *inputs, use_reentrant=False)
        return block(*inputs)
