"""Swin Transformer V1 encoder in the Microsoft layout, with multi-stream blocks.

Parameter names follow the Microsoft release (``layers.i.blocks.j.attn.qkv``,
``layers.i.downsample.reduction``: patch merging at the *end* of stage i), so Microsoft
checkpoints load without renaming and timm checkpoints need one pure conversion
(:mod:`mtlora.io.checkpoints`).  Differences from the classification model: no final norm,
no head, stage features are taken *after* patch merging (as the official MTLoRA code does:
strides 8, 16, 32, 32).

Tensors are channels-last ``(B, H, W, C)``.  A *stream stack* is ``(S, B, H, W, C)``: S task (or
task-group) streams processed together by folding S into the batch for every frozen operation.

Block kinds (set per block by the adapter plan, :mod:`mtlora.models.plans`):

* ``shared``: one stream in, one out (plain Swin block, adapters on their shared path).
* ``branch``: the official MTLoRA task-specific block — attention runs once on the shared
  stream; ``proj``, ``fc1`` and ``fc2`` produce one output per task path with the frozen weights
  reading the shared activations; returns the shared stream and the stacked task streams.
* ``streams``: S independent streams (progressive plans), each a full block forward whose
  adapters use the stream's own path.

Attention uses ``scaled_dot_product_attention`` with the relative position bias and the shift
mask folded into one additive mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_
from torch import Tensor, nn

from mtlora.models.lora import MultiPathLoRALinear
from mtlora.models.recompute import Checkpointing, checkpoint_mode, run_checkpointed

BlockKind = Literal["shared", "branch", "streams"]

SWIN_SIZES: dict[str, dict] = {
    "swin_tiny": {"embed_dim": 96, "depths": (2, 2, 6, 2), "num_heads": (3, 6, 12, 24)},
    "swin_small": {"embed_dim": 96, "depths": (2, 2, 18, 2), "num_heads": (3, 6, 12, 24)},
    "swin_base": {"embed_dim": 128, "depths": (2, 2, 18, 2), "num_heads": (4, 8, 16, 32)},
}


@dataclass(frozen=True)
class SwinConfig:
    """Architecture of the encoder."""

    img_size: int = 448
    patch_size: int = 4
    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 7
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.2
    gradient_checkpointing: Checkpointing = False

    @classmethod
    def named(cls, arch: str, **overrides) -> SwinConfig:
        if arch not in SWIN_SIZES:
            raise ValueError(
                f"unknown Swin size {arch!r}; choose one of {list(SWIN_SIZES)} or give embed_dim/depths/num_heads"
            )
        return cls(**{**SWIN_SIZES[arch], **{k: v for k, v in overrides.items() if v is not None}})

    def stage_resolutions(self) -> list[int]:
        """Token grid side of every stage; validates the image size against patch/window layout."""
        out = self._stage_resolutions(self.img_size)
        if isinstance(out, str):
            near = ", ".join(str(size) for size in self.working_img_sizes_near(self.img_size))
            raise ValueError(
                f"img_size {self.img_size}: {out}; Microsoft-style Swin has no padding. "
                f"Image sizes that work with patch_size {self.patch_size}, window_size {self.window_size} "
                f"and {len(self.depths)} stages: {near}"
            )
        return out

    def _stage_resolutions(self, img_size: int) -> list[int] | str:
        """The stage grids for ``img_size``, or why that size does not fit."""
        if img_size % self.patch_size:
            return f"not divisible by the patch size {self.patch_size}"
        res, out = img_size // self.patch_size, []
        for i in range(len(self.depths)):
            if i > 0:
                if res % 2:
                    return f"stage {i} grid {res} is odd and cannot be patch-merged"
                res //= 2
            if res > self.window_size and res % self.window_size:
                return f"stage {i} grid {res}x{res} is not divisible by window_size {self.window_size}"
            out.append(res)
        return out

    def working_img_sizes_near(self, img_size: int, count: int = 2) -> list[int]:
        """Up to ``count`` working sizes below and above ``img_size`` (each one builds an encoder)."""

        def fits(size: int) -> bool:
            return size > 0 and not isinstance(self._stage_resolutions(size), str)

        # a multiple of patch * 2^(stages-1) * window always fits: the search ends within one such step
        step = self.patch_size * 2 ** (len(self.depths) - 1) * self.window_size
        below = [s for s in range(img_size - 1, max(0, img_size - step) - 1, -1) if fits(s)][:count]
        above = [s for s in range(img_size + 1, img_size + step + 1) if fits(s)][:count]
        return sorted(below + above)


def window_partition(x: Tensor, ws: int) -> Tensor:
    """``(B, H, W, C)`` -> ``(B, nW, ws*ws, C)``."""
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // ws) * (w // ws), ws * ws, c)


def window_reverse(windows: Tensor, ws: int, h: int, w: int) -> Tensor:
    """``(B, nW, ws*ws, C)`` -> ``(B, H, W, C)``."""
    b, c = windows.shape[0], windows.shape[-1]
    x = windows.view(b, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, c)


def relative_position_index(ws: int) -> Tensor:
    coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (ws - 1)
    return rel[..., 0] * (2 * ws - 1) + rel[..., 1]  # (N, N)


def shift_attention_mask(res: int, ws: int, shift: int) -> Tensor:
    """Additive ``(nW, N, N)`` mask (-100 across shifted-window seams, as Microsoft's Swin)."""
    img = torch.zeros(1, res, res, 1)
    cnt = 0
    for hs in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
        for wsl in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
            img[:, hs, wsl, :] = cnt
            cnt += 1
    win = window_partition(img, ws).squeeze(-1)[0]  # (nW, N)
    diff = win[:, None, :] - win[:, :, None]
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


class WindowAttention(nn.Module):
    """Window multi-head self-attention with relative position bias (qkv/proj may be adapted)."""

    def __init__(self, dim: int, window_size: int, num_heads: int) -> None:
        super().__init__()
        self.dim, self.window_size, self.num_heads = dim, window_size, num_heads
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.register_buffer(
            "relative_position_index", relative_position_index(window_size), persistent=False
        )
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        trunc_normal_(self.relative_position_bias_table, std=0.02)

    def bias(self, shift_mask: Tensor | None) -> Tensor:
        """Additive mask ``(nW*heads or heads, N, N)`` = relative bias (+ shift mask)."""
        n = self.window_size**2
        table = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = table.view(n, n, self.num_heads).permute(2, 0, 1)  # (heads, N, N)
        if shift_mask is None:
            return bias
        return (shift_mask.unsqueeze(1) + bias.unsqueeze(0)).flatten(0, 1)  # (nW*heads, N, N)

    def attend(self, qkv_out: Tensor, mask: Tensor) -> Tensor:
        """``(B, nW, N, 3C)`` projected windows -> attention output ``(B, nW, N, C)`` before proj."""
        b, nw, n, _ = qkv_out.shape
        hd = self.dim // self.num_heads
        q, k, v = qkv_out.view(b, nw, n, 3, self.num_heads, hd).permute(3, 0, 1, 4, 2, 5).unbind(0)
        if mask.shape[0] == self.num_heads:  # no shift: (B*nW, heads, N, N) vs (heads, N, N)
            q, k, v = (t.reshape(b * nw, self.num_heads, n, hd) for t in (q, k, v))
        else:  # shifted: fold windows into heads so one (nW*heads, N, N) mask broadcasts over B
            q, k, v = (t.reshape(b, nw * self.num_heads, n, hd) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.to(q.dtype))
        return out.view(b, nw, self.num_heads, n, hd).transpose(2, 3).reshape(b, nw, n, self.dim)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


def _branch(layer: nn.Module, x: Tensor, x_paths: Tensor | None) -> tuple[Tensor, Tensor]:
    """Shared and per-path outputs of one linear inside a ``branch`` block."""
    if isinstance(layer, MultiPathLoRALinear):
        return layer.forward_branch(x, x_paths)
    y = layer(x)  # no task paths here: the frozen layer reads the shared input for every task
    return y, y.unsqueeze(0)


def _streams(layer: nn.Module, xs: Tensor) -> Tensor:
    """Per-stream outputs of one linear inside a ``streams`` block."""
    if isinstance(layer, MultiPathLoRALinear) and layer.num_paths:
        return layer.forward_streams(xs)
    return layer(xs)


class SwinBlock(nn.Module):
    """(Shifted-)window attention block; ``kind`` selects how it treats task streams."""

    def __init__(
        self,
        dim: int,
        res: int,
        num_heads: int,
        window_size: int,
        shift: int,
        mlp_ratio: float,
        drop_path: float,
    ) -> None:
        super().__init__()
        if res <= window_size:
            window_size, shift = res, 0
        self.dim, self.res, self.window_size, self.shift = dim, res, window_size, shift
        self.kind: BlockKind = "shared"
        self.num_streams = 1  # task paths of a ``branch`` block (set by the plan)
        self.stream_route: Tensor | None  # (S_new,) parent stream of every new stream, see configure
        self.register_buffer("stream_route", None, persistent=False)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        if shift > 0:
            self.register_buffer(
                "shift_mask", shift_attention_mask(res, window_size, shift), persistent=False
            )
        else:
            self.shift_mask = None

    def configure(self, kind: BlockKind, num_streams: int = 1, stream_route: Tensor | None = None) -> None:
        """Set how the block treats task streams (called by the adapter plan).

        ``num_streams``: task paths of a ``branch`` block; ``stream_route``: for a ``streams``
        block whose partition changes, the parent stream index of each of its streams (a
        non-persistent buffer, so it follows the module to its device but not into state dicts).
        """
        self.kind, self.num_streams = kind, num_streams
        self.register_buffer("stream_route", stream_route, persistent=False)

    def _attention(self, x: Tensor, qkv_fn) -> Tensor:
        """norm1 -> roll -> windows -> qkv -> attention -> un-windowed, un-rolled tokens (before proj)."""
        b, h, w, c = x.shape
        x = self.norm1(x)
        if self.shift:
            x = torch.roll(x, (-self.shift, -self.shift), dims=(1, 2))
        win = window_partition(x, self.window_size)
        out = self.attn.attend(qkv_fn(win), self.attn.bias(self.shift_mask))
        out = window_reverse(out, self.window_size, h, w)
        if self.shift:
            out = torch.roll(out, (self.shift, self.shift), dims=(1, 2))
        return out

    def _drop(self, x: Tensor) -> Tensor:
        """DropPath with independent masks per stream and sample (streams folded into batch)."""
        if isinstance(self.drop_path, nn.Identity):
            return x
        return self.drop_path(x.flatten(0, 1)).view(x.shape) if x.dim() == 5 else self.drop_path(x)

    def forward(self, x: Tensor) -> Tensor:
        """Shared stream ``(B, H, W, C)`` -> ``(B, H, W, C)``."""
        x = x + self._drop(self.attn.proj(self._attention(x, self.attn.qkv)))
        return x + self._drop(self.mlp(self.norm2(x)))

    def forward_branch(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Official MTLoRA task-specific block: ``(B,H,W,C)`` -> shared ``(B,H,W,C)``, tasks ``(T,B,H,W,C)``."""
        t = self.num_streams
        a = self._attention(x, self.attn.qkv)
        y, y_t = _branch(self.attn.proj, a, None)
        x1, x1_t = x + self._drop(y), x + self._drop(y_t.expand(t, *y.shape))
        h, h_t = _branch(self.mlp.fc1, self.norm2(x1), self.norm2(x1_t))
        g, g_t = self.mlp.act(h), self.mlp.act(h_t.expand(t, *h.shape))
        o, o_t = _branch(self.mlp.fc2, g, g_t)
        return x1 + self._drop(o), x1_t + self._drop(o_t.expand(t, *o.shape))

    def forward_streams(self, xs: Tensor) -> Tensor:
        """Independent streams ``(S, B, H, W, C)`` -> ``(S, B, H, W, C)``, stream s uses path s."""
        s, b = xs.shape[:2]

        def qkv(win: Tensor) -> Tensor:  # (S*B, nW, N, C) -> (S*B, nW, N, 3C)
            return _streams(self.attn.qkv, win.view(s, b, *win.shape[1:])).flatten(0, 1)

        a = self._attention(xs.flatten(0, 1), qkv).view(xs.shape)
        xs = xs + self._drop(_streams(self.attn.proj, a))
        h = self.mlp.act(_streams(self.mlp.fc1, self.norm2(xs)))
        return xs + self._drop(_streams(self.mlp.fc2, h))


class PatchMerging(nn.Module):
    """2x2 neighbour concat (Microsoft channel order) -> LayerNorm(4C) -> Linear(4C, 2C, no bias)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """``(..., H, W, C)`` -> ``(..., H/2, W/2, 2C)``; any leading dims (streams are batched)."""
        *lead, h, w, c = x.shape
        x = (
            x.reshape(-1, h // 2, 2, w // 2, 2, c)
            .permute(0, 1, 3, 4, 2, 5)
            .reshape(-1, h // 2, w // 2, 4 * c)
        )
        return self.reduction(self.norm(x)).view(*lead, h // 2, w // 2, 2 * c)


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, patch_size, patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))  # (B, H/4, W/4, C)


class SwinStage(nn.Module):
    def __init__(
        self,
        dim: int,
        res: int,
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        drop_path: Sequence[float],
        downsample: bool,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinBlock(
                dim,
                res,
                num_heads,
                window_size,
                0 if j % 2 == 0 else window_size // 2,
                mlp_ratio,
                drop_path[j],
            )
            for j in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None


class SwinEncoder(nn.Module):
    """Swin V1 backbone returning per-stage features for every task stream.

    ``forward(image)`` returns a list (one per stage) of stream stacks ``(S, B, h, w, C)``;
    the adapter plan (``PlanReport.stage_task_streams``) says which task each of the S streams serves, with
    ``S == 1`` meaning one shared stream serves all tasks.
    """

    def __init__(self, cfg: SwinConfig) -> None:
        super().__init__()
        self.cfg = cfg
        resolutions = cfg.stage_resolutions()
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.embed_dim)
        dpr = torch.linspace(0, cfg.drop_path_rate, sum(cfg.depths)).tolist()
        self.layers = nn.ModuleList()
        for i, depth in enumerate(cfg.depths):
            start = sum(cfg.depths[:i])
            self.layers.append(
                SwinStage(
                    cfg.embed_dim * 2**i,
                    resolutions[i],
                    depth,
                    cfg.num_heads[i],
                    cfg.window_size,
                    cfg.mlp_ratio,
                    dpr[start : start + depth],
                    downsample=i < len(cfg.depths) - 1,
                )
            )
        n = len(cfg.depths)
        self.out_channels = [cfg.embed_dim * 2 ** min(i + 1, n - 1) for i in range(n)]
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def blocks(self) -> list[tuple[int, int, SwinBlock]]:
        return [(i, j, blk) for i, stage in enumerate(self.layers) for j, blk in enumerate(stage.blocks)]

    def _run(self, fn, *args):
        """One block (or patch merging) with the configured activation recomputation."""
        mode = checkpoint_mode(self.cfg.gradient_checkpointing, "encoder.gradient_checkpointing")
        return run_checkpointed(fn, *args, mode=mode if self.training else "none")

    def forward(self, image: Tensor) -> list[Tensor]:
        """``(B, 3, H, W)`` -> per-stage stream stacks ``(S_i, B, h_i, w_i, C_i)`` after patch merging."""
        if image.shape[-2:] != (self.cfg.img_size, self.cfg.img_size):
            raise ValueError(
                f"the encoder was built for {self.cfg.img_size}x{self.cfg.img_size} images, got "
                f"{tuple(image.shape[-2:])}; set the model's img_size to the data's img_size"
            )
        x: Tensor = self.patch_embed(image)  # (B, H, W, C)
        streams: Tensor | None = None  # (S, B, H, W, C) once the plan splits into streams
        features: list[Tensor] = []
        for stage in self.layers:
            exits: Tensor | None = None
            for blk in stage.blocks:
                if blk.kind == "shared":
                    x = self._run(blk, x)
                elif blk.kind == "branch":
                    x, exits = self._run(blk.forward_branch, x)
                else:
                    if streams is None:
                        streams = x.unsqueeze(0)
                    route = blk.stream_route
                    if route is not None:  # (S_new,) parent stream of every new stream
                        streams = streams.index_select(0, route)
                    streams = self._run(blk.forward_streams, streams)
            out = streams if streams is not None else exits
            if stage.downsample is not None:
                if streams is not None:
                    streams = self._run(stage.downsample, streams)
                    out = streams
                elif exits is not None:  # shared + task exits merged in one call (T+1 streams)
                    merged = self._run(stage.downsample, torch.cat([x.unsqueeze(0), exits]))
                    x, out = merged[0], merged[1:]
                else:
                    x = self._run(stage.downsample, x)
            if out is None:
                out = x.unsqueeze(0)
            features.append(out)
        return features
