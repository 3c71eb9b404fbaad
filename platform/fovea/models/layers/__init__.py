"""Blocks shared by fovea's video transformers: SDPA attention, the pre-norm transformer block, tubelet embedding."""

from fovea.models.layers.attention import Attention, Block
from fovea.models.layers.embed import TubeletEmbed, inflate_patch_weight, resize_pos_grid

__all__ = ["Attention", "Block", "TubeletEmbed", "inflate_patch_weight", "resize_pos_grid"]
