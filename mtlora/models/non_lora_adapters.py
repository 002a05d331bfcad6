"""Adapter kinds other than LoRA, for the Table-1 baselines: Houlsby adapters, Compacter, VPT.

They are injected into a built :class:`~mtlora.models.swin.SwinEncoder` by module replacement,
so :mod:`mtlora.models.swin` stays unchanged and ImageNet checkpoints keep loading:

* ``houlsby``: a bottleneck adapter ``x + up(GELU(down(x)))`` after the attention projection and
  after the MLP of every block (Houlsby et al. 2019), hidden width = block width //
  ``adapter_reduction``; ``up`` starts at zero, so the adapted encoder starts as the frozen one.
* ``compacter``: the same bottleneck with PHM layers (Karimi Mahabadi et al. 2021):
  ``W = sum_i A_i kron (s_i t_i^T)``, the ``n x n`` rules ``A_i`` shared by every adapter layer of
  the encoder, ``s_i t_i^T`` of rank ``compacter_rank``; ``up``'s ``s`` starts at zero (identity).
  Compacter++ = ``adapter_positions: [mlp]``.
* ``vpt_deep`` / ``vpt_shallow``: visual prompt tuning (Jia et al. 2022) adapted to windowed
  attention: ``prompt_tokens`` learnable tokens are appended to the keys and values of *every*
  window (one prompt set per block, shared by its windows), so windows keep their size, no prompt
  crosses a patch merging, and the frozen weights see the usual token grid.  The prompts live in
  the attention input space (after ``norm1``; a free learnable vector loses nothing by skipping
  the norm) and go through the frozen ``qkv``.  ``vpt_deep`` prompts every block, ``vpt_shallow``
  only the first block of the first stage (VPT's "input layer"; in a ViT shallow prompts also
  travel through later layers as tokens, which windows and patch merging cannot carry).  Unlike
  the adapters, prompts change the output at initialisation (attention also reads them).

Every module holding parameters added here is an
:class:`~mtlora.models.methods.marker.AdapterModule`, so the trainable-set rules
(:func:`mtlora.models.plans.mark_trainable`) train them and the ImageNet loader leaves them at
their initialisation; their ``peft_`` names are kept for the state-dict keys of saved models.  Wrapped linears keep the frozen layer under ``.linear`` like
:class:`~mtlora.models.lora.MultiPathLoRALinear`, so checkpoint names resolve the same way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlora.models.methods.marker import AdapterModule
from mtlora.models.swin import SwinEncoder, WindowAttention

PEFT_METHODS = ("houlsby", "compacter", "vpt_shallow", "vpt_deep")
AdapterPosition = Literal["attn", "mlp"]


class BottleneckAdapter(nn.Module):
    """Houlsby adapter ``x + up(GELU(down(x)))`` on the last dim; ``up`` is zero at init."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.down = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.up = nn.Linear(hidden, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.up(self.act(self.down(x)))


class PHMRules(AdapterModule):
    """The ``n`` shared ``n x n`` matrices ``A_i`` of every Compacter layer of one encoder."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n
        self.rules = nn.Parameter(torch.randn(n, n, n) / math.sqrt(n))  # (n, n, n): A_i = rules[i]


class PHMLinear(nn.Module):
    """Parameterised-hypercomplex linear layer ``y = x W^T + b``, ``W = sum_i A_i kron (s_i t_i^T)``.

    ``s`` is ``(n, out/n, rank)``, ``t`` is ``(n, rank, in/n)``; ``zero=True`` starts ``W`` at zero.
    The shared rules are held outside this module's parameters (they are registered once on the
    encoder), so every layer reads the same ``A_i`` and the state dict stores them once.
    """

    def __init__(self, in_features: int, out_features: int, rules: PHMRules, rank: int, zero: bool) -> None:
        super().__init__()
        n = rules.n
        if in_features % n or out_features % n:
            raise ValueError(
                f"adapter.compacter_n = {n} must divide the PHM layer's sizes ({in_features} -> {out_features}); "
                "pick n dividing every block width and its bottleneck (width // adapter_reduction)"
            )
        self.in_features, self.out_features, self.n = in_features, out_features, n
        # var(W) = n var(A) rank var(s) var(t) = rank std^4 (var(A) = 1/n): nn.Linear's 1/(3 in)
        std = (3 * rank * in_features) ** -0.25
        s = torch.randn(n, out_features // n, rank) * std
        self.s = nn.Parameter(torch.zeros_like(s) if zero else s)
        self.t = nn.Parameter(torch.randn(n, rank, in_features // n) * std)
        self.bias = nn.Parameter(torch.zeros(out_features))
        self._rules = (rules,)  # a tuple: not registered as a submodule here

    def weight(self) -> Tensor:
        """The dense ``(out, in)`` weight."""
        a = self._rules[0].rules  # (n, n, n)
        b = self.s @ self.t  # (n, out/n, in/n)
        return torch.einsum("iab,ipq->apbq", a, b).reshape(self.out_features, self.in_features)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight(), self.bias)


class CompacterAdapter(nn.Module):
    """Bottleneck adapter with PHM down/up projections (Compacter); identity at init."""

    def __init__(self, dim: int, hidden: int, rules: PHMRules, rank: int) -> None:
        super().__init__()
        self.down = PHMLinear(dim, hidden, rules, rank, zero=False)
        self.act = nn.GELU()
        self.up = PHMLinear(hidden, dim, rules, rank, zero=True)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.up(self.act(self.down(x)))


class AdaptedLinear(AdapterModule):
    """A frozen linear layer (kept under ``.linear``) followed by a residual adapter."""

    frozen_children = ("linear",)

    def __init__(self, linear: nn.Module, adapter: nn.Module) -> None:
        super().__init__()
        self.linear = linear
        self.peft_adapter = adapter

    def forward(self, x: Tensor) -> Tensor:
        return self.peft_adapter(self.linear(x))


class PromptedWindowAttention(WindowAttention, AdapterModule):
    """Window attention whose keys/values gain ``P`` learnable prompt tokens shared by all windows.

    Made from an existing :class:`WindowAttention` by :meth:`convert`, which retypes it in place so
    every parameter, buffer and name stays what it was.  :meth:`attend` mirrors the parent's
    (same head split, same masks) with the prompts' keys/values concatenated after the window's
    and a zero bias towards them (prompts have no position and no shift region).
    """

    peft_prompts: nn.Parameter  # (P, C)
    adapter_attrs = ("peft_prompts",)  # the attention's own weights stay the pretrained ones

    @classmethod
    def convert(cls, attn: WindowAttention, tokens: int) -> PromptedWindowAttention:
        if tokens <= 0:
            raise ValueError(f"adapter.prompt_tokens must be a positive integer, got {tokens}")
        attn.__class__ = cls
        prompts = torch.empty(tokens, attn.dim, device=attn.relative_position_bias_table.device)
        nn.init.xavier_uniform_(prompts)  # VPT's initialisation
        attn.peft_prompts = nn.Parameter(prompts)
        return attn  # type: ignore[return-value]

    def attend(self, qkv_out: Tensor, mask: Tensor) -> Tensor:
        """``(B, nW, N, 3C)`` projected windows -> ``(B, nW, N, C)``; keys/values ``N + P`` long."""
        b, nw, n, _ = qkv_out.shape
        heads, hd, p = self.num_heads, self.dim // self.num_heads, self.peft_prompts.shape[0]
        q, k, v = (
            qkv_out.view(b, nw, n, 3, heads, hd).permute(3, 0, 1, 4, 2, 5).unbind(0)
        )  # (B, nW, h, N, hd)
        pk, pv = self.qkv(self.peft_prompts).view(p, 3, heads, hd).permute(1, 2, 0, 3)[1:]  # (h, P, hd) each
        k = torch.cat([k, pk.to(k.dtype).expand(b, nw, heads, p, hd)], dim=3)  # (B, nW, h, N+P, hd)
        v = torch.cat([v, pv.to(v.dtype).expand(b, nw, heads, p, hd)], dim=3)
        mask = F.pad(mask, (0, p))  # (M, N, N+P): prompts get no relative bias and no shift mask
        if mask.shape[0] == heads:  # no shift: (B*nW, heads, ., .) vs (heads, N, N+P)
            q, k, v = (t.reshape(b * nw, heads, t.shape[-2], hd) for t in (q, k, v))
        else:  # shifted: windows folded into heads so the (nW*heads, N, N+P) mask broadcasts over B
            q, k, v = (t.reshape(b, nw * heads, t.shape[-2], hd) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.to(q.dtype))
        return out.view(b, nw, heads, n, hd).transpose(2, 3).reshape(b, nw, n, self.dim)


def inject_peft(
    encoder: SwinEncoder,
    method: str,
    *,
    reduction: int = 4,
    positions: Sequence[str] = ("attn", "mlp"),
    prompt_tokens: int = 50,
    compacter_n: int = 4,
    compacter_rank: int = 1,
) -> list[str]:
    """Add the ``method``'s modules to ``encoder`` (see the module doc); returns what was changed.

    Blocks must still be plain ``shared`` blocks: these baselines run one stream for all tasks.
    """
    if method not in PEFT_METHODS:
        raise ValueError(f"adapter.method: {method!r} is not one of the PEFT baselines {PEFT_METHODS}")
    changed: list[str] = []
    blocks = encoder.blocks()
    if method.startswith("vpt"):
        chosen = blocks if method == "vpt_deep" else blocks[:1]
        for i, j, blk in chosen:
            PromptedWindowAttention.convert(blk.attn, prompt_tokens)
            changed.append(f"layers.{i}.blocks.{j}.attn")
        return changed
    bad = sorted(set(positions) - {"attn", "mlp"})
    if bad or not positions:
        raise ValueError(
            f"adapter.adapter_positions: expected a non-empty list of 'attn'/'mlp', got {list(positions)}"
        )
    if reduction <= 0:
        raise ValueError(f"adapter.adapter_reduction must be a positive integer, got {reduction}")
    if method == "compacter":
        if compacter_n <= 0 or compacter_rank <= 0:
            raise ValueError(
                f"adapter.compacter_n and compacter_rank must be positive, got {compacter_n}, {compacter_rank}"
            )
        encoder.peft_phm_rules = PHMRules(compacter_n)
    for i, j, blk in blocks:
        hidden = blk.dim // reduction
        if hidden <= 0:
            raise ValueError(
                f"adapter.adapter_reduction = {reduction} leaves no hidden unit in a {blk.dim}-wide block"
            )
        for position in ("attn", "mlp"):
            if position not in positions:
                continue
            parent, attr = (blk.attn, "proj") if position == "attn" else (blk.mlp, "fc2")
            if method == "houlsby":
                adapter: nn.Module = BottleneckAdapter(blk.dim, hidden)
            else:
                adapter = CompacterAdapter(blk.dim, hidden, encoder.peft_phm_rules, compacter_rank)
            setattr(parent, attr, AdaptedLinear(getattr(parent, attr), adapter))
            changed.append(f"layers.{i}.blocks.{j}.{'attn.proj' if position == 'attn' else 'mlp.fc2'}")
    return changed
