"""How adapter weights are recognised: by module type, never by parameter name.

Every module an adapter method adds (or retypes in place) derives from :class:`AdapterModule`.
Its parameters are the adapter's, except those under the children it names in
``frozen_children`` (the pretrained layer it wraps, kept under ``.linear``), or only those it
names in ``adapter_attrs`` when it is a pretrained module retyped in place (VPT's prompted
attention).  The trainable-set rules, the ImageNet loader (which leaves adapter weights at
their initialisation) and everything else that needs "the adapter parameters" ask
:func:`adapter_parameter_names`, so a new method's weights train and load without naming rules.
"""

from __future__ import annotations

from torch import nn


class AdapterModule(nn.Module):
    """Marker base class of every module that holds adapter weights."""

    #: children holding pretrained (frozen) weights that the adapter wraps
    frozen_children: tuple[str, ...] = ()
    #: when not None: only these direct attributes (parameters or children) are adapter weights
    adapter_attrs: tuple[str, ...] | None = None

    def adapter_named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """This module's adapter parameters, named relative to it."""
        if self.adapter_attrs is not None:
            keep = self.adapter_attrs
            return [(n, p) for n, p in self.named_parameters() if n.split(".", 1)[0] in keep]
        skip = tuple(c + "." for c in self.frozen_children)
        return [(n, p) for n, p in self.named_parameters() if not n.startswith(skip)]


def adapter_parameter_names(root: nn.Module) -> list[str]:
    """Qualified names (as in ``root.named_parameters()``) of every adapter parameter under ``root``."""
    names: dict[str, None] = {}
    for prefix, module in root.named_modules():
        if isinstance(module, AdapterModule):
            for name, _ in module.adapter_named_parameters():
                names[f"{prefix}.{name}" if prefix else name] = None
    return list(names)
