"""A tiny C3D-style 3D CNN (Tran et al. 2015): the baseline and test model of the video data path.

It is not one of fovea's transformer families; it exists so the video pipeline (clips, multi-view evaluation,
training on the demo videos) can be exercised and timed with a model that trains in seconds on a CPU. Like every
video model here it takes ``(B, C, T, H, W)`` and accepts ``num_frames``, ``img_size`` and ``num_classes``.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs
from torch import nn

from fovea.models.factory import register_video_model


class C3D(nn.Module):
    """Stacked 3x3x3 convolutions with stride-2 downsampling, global average pooling and a linear head.

    Args:
        num_classes: classifier outputs.
        num_frames: clip length the model is built for (any length works; kept for the video-model contract).
        img_size: input side (any size works; kept for the contract).
        in_chans: input channels.
        widths: channels of each stage; the first keeps time, the others halve T, H and W.
        drop_rate: dropout before the classifier.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        num_frames: int = 16,
        img_size: int = 112,
        in_chans: int = 3,
        widths: tuple[int, ...] = (16, 32, 64),
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,  # accepted like the transformers' (nothing to drop here)
    ) -> None:
        super().__init__()
        self.num_classes, self.num_frames, self.img_size = num_classes, num_frames, img_size
        layers: list[nn.Module] = []
        channels = in_chans
        for index, width in enumerate(widths):
            # the stem keeps every frame (stride 1 in time) so early motion cues survive
            stride = (1, 2, 2) if index == 0 else (2, 2, 2)
            layers += [nn.Conv3d(channels, width, 3, stride=stride, padding=1, bias=False), nn.BatchNorm3d(width)]
            layers.append(nn.ReLU(inplace=True))
            channels = width
        self.features = nn.Sequential(*layers)
        self.num_features = channels
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(channels, num_classes) if num_classes > 0 else nn.Identity()

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (B, C', T', H', W')

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_drop(x.mean(dim=(2, 3, 4))))  # (B, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


default_cfgs = generate_default_cfgs(
    {
        "c3d_micro": {
            "url": "",
            "num_classes": 1000,
            "input_size": (3, 64, 64),
            "mean": IMAGENET_DEFAULT_MEAN,
            "std": IMAGENET_DEFAULT_STD,
            "first_conv": "features.0",
            "classifier": "head",
        }
    }
)


@register_video_model
def c3d_micro(pretrained: bool = False, **kwargs: Any) -> C3D:
    """C3D with stages of 16, 32 and 64 channels: about 80k parameters, for tests and CPU demos."""
    return build_model_with_cfg(C3D, "c3d_micro", pretrained, **kwargs)
