"""Blocks shared by fovea's video transformers: SDPA attention, the pre-norm transformer block, tubelet embedding."""

from fovea.models.layers.attention import Attention, Block, init_transformer_weights
from fovea.models.layers.checkpointing import CheckpointedBlocks
from fovea.models.layers.embed import TubeletEmbed, inflate_patch_weight, resize_pos_grid
from fovea.models.layers.pooling_attention import PoolingAttention

__all__ = [
    "Attention",
    "Block",
    "CheckpointedBlocks",
    "PoolingAttention",
    "TubeletEmbed",
    "inflate_patch_weight",
    "init_transformer_weights",
    "resize_pos_grid",
]
