"""One adapter set per task (``adapter.per_task``): the setting of the paper's Table-1 baselines.

Polyhistor's setup, which the MTLoRA paper uses for its Adapter / BitFit / VPT / Compacter rows,
trains one set of adapters per task and runs the encoder once per task.  Here every task after
the first gets a copy of the adapted encoder whose *frozen* parameters are the first encoder's
own tensors (tied, so they exist once in memory, in ``parameters()`` and in the counts) and whose
trainable parameters (adapters, and the norms / biases / prompts the method trains) are its own.
The state dict stores the tied tensors once, under ``backbone.``; loading fills the copies from
there, so checkpoints are no larger than with one shared set.
"""

from __future__ import annotations

import copy

from torch import nn


def tied_copy(encoder: nn.Module) -> tuple[nn.Module, list[str]]:
    """A copy of ``encoder`` sharing every frozen parameter with it; returns it and the tied names."""
    clone = copy.deepcopy(encoder)
    tied = []
    for name, p in encoder.named_parameters():
        if p.requires_grad:
            continue
        owner, _, leaf = name.rpartition(".")
        setattr(clone.get_submodule(owner) if owner else clone, leaf, p)
        tied.append(name)
    return clone, tied


def register_tied_state_hooks(model: nn.Module, copies: str, source: str, tied: list[str]) -> None:
    """Keep ``<copies>.<task>.<name>`` (tied to ``<source>.<name>``) out of ``model``'s state dict.

    Loading puts them back from the source key, so a state dict saved this way loads strictly.
    """

    def drop(module, state_dict, prefix, local_metadata):
        for key in [k for k in state_dict if k.startswith(prefix + copies + ".")]:
            rest = key[len(prefix + copies) + 1 :]
            if rest.partition(".")[2] in tied_set:
                del state_dict[key]

    def fill(module, state_dict, prefix, *args):
        for task in getattr(module, copies):
            for name in tied:
                src = f"{prefix}{source}.{name}"
                if src in state_dict:
                    state_dict.setdefault(f"{prefix}{copies}.{task}.{name}", state_dict[src])

    tied_set = set(tied)
    model.register_state_dict_post_hook(drop)
    model.register_load_state_dict_pre_hook(fill)
