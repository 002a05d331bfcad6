"""Per-task multi-scale fusion and HRNet-style heads (docs/official_implementation.md, "Fusion and decoder heads").

The official "multi-scale fusion" is four 1x1 convolutions without bias per task that squeeze
the post-merging stage features to the HRNet-W18 widths (18/36/72/144); the head upsamples the
three coarser maps to the finest one, concatenates (270 channels) and applies
1x1 conv -> BatchNorm -> ReLU -> 1x1 conv.  Logits are upsampled bilinearly to the input size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class TaskFusion(nn.Module):
    """Four bias-free 1x1 convolutions, one per stage feature (official ``Downsampler``)."""

    def __init__(self, in_channels: Sequence[int], out_channels: Sequence[int]) -> None:
        super().__init__()
        if len(in_channels) != len(out_channels):
            raise ValueError(
                f"decoder channels {list(out_channels)} must have one entry per stage ({len(in_channels)})"
            )
        for k, (cin, cout) in enumerate(zip(in_channels, out_channels)):
            self.add_module(f"downsample_{k}", nn.Conv2d(cin, cout, 1, bias=False))
        self.num_inputs = len(in_channels)

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        """Channels-last ``(B, h, w, C_k)`` features -> ``(B, c_k, h, w)`` maps.

        A 1x1 convolution is a matmul over channels, done before the layout change so the
        wide (768-channel) maps are never permuted.
        """
        out = []
        for k, feat in enumerate(features):
            conv: nn.Conv2d = getattr(self, f"downsample_{k}")
            out.append(F.linear(feat, conv.weight.flatten(1)).permute(0, 3, 1, 2))
        return out


class HRNetHead(nn.Module):
    """Upsample to the finest map, concatenate, 1x1 conv -> BN -> ReLU -> 1x1 conv."""

    def __init__(self, in_channels: Sequence[int], num_outputs: int) -> None:
        super().__init__()
        width = sum(in_channels)
        self.last_layer = nn.Sequential(
            nn.Conv2d(width, width * 4, 1),
            nn.BatchNorm2d(width * 4, momentum=0.1),
            nn.ReLU(inplace=True),
            nn.Conv2d(width * 4, num_outputs, 1),
        )

    def forward(self, maps: Sequence[Tensor]) -> Tensor:
        size = maps[0].shape[-2:]
        up = [maps[0]] + [F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in maps[1:]]
        return self.last_layer(torch.cat(up, dim=1))


class MultiTaskDecoder(nn.Module):
    """Fusion + head per task; ``forward`` maps per-stage stream stacks to ``{task: logits}``."""

    def __init__(
        self,
        task_channels: dict[str, int],
        encoder_channels: Sequence[int],
        decoder_channels: Sequence[int] = (18, 36, 72, 144),
    ) -> None:
        super().__init__()
        self.tasks = list(task_channels)
        self.fusion = nn.ModuleDict({t: TaskFusion(encoder_channels, decoder_channels) for t in self.tasks})
        self.heads = nn.ModuleDict({t: HRNetHead(decoder_channels, c) for t, c in task_channels.items()})

    def forward(
        self, features: Sequence[Tensor], task_streams: Sequence[Sequence[int]], out_size: tuple[int, int]
    ) -> dict[str, Tensor]:
        """``features[k]`` is ``(S_k, B, h, w, C)``; ``task_streams[k][t]`` picks task t's stream."""
        outputs = {}
        for ti, task in enumerate(self.tasks):
            maps = self.fusion[task]([feat[streams[ti]] for feat, streams in zip(features, task_streams)])
            logits = self.heads[task](maps)
            outputs[task] = F.interpolate(logits, size=out_size, mode="bilinear", align_corners=False)
        return outputs
