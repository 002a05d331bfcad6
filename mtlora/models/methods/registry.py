"""One registry of adapter methods: what ``adapter.method`` may name and what each one does.

A method is an :class:`AdapterMethod` spec registered with :func:`register_adapter_method`:
its name, the :class:`~mtlora.models.plans.AdapterConfig` fields it reads, how it injects its
modules into a built encoder, its sharing plan (None: one shared stream) and its named
trainable-set defaults.  :func:`mtlora.models.plans.apply_plan` runs every method the same way
(resolve -> inject -> mark trainable), so adding a method is one registration in one file; its
modules only have to derive from :class:`~mtlora.models.methods.marker.AdapterModule` for their
weights to train, load and be saved in adapter files.

The built-in methods register on the first lookup (their modules import the plan machinery,
which imports this registry).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mtlora.models.plans import AdapterConfig, BlockPlan
    from mtlora.models.swin import SwinEncoder

_BUILTIN_MODULES = ("backbone", "lora_plans", "peft_adapters")
_REGISTRY: dict[str, AdapterMethod] = {}
_builtins_loaded = False


@dataclass(frozen=True)
class TrainableSet:
    """Backbone parameter groups a method unfreezes by default (``adapter.train_*`` left at None).

    ``frozen_encoder``: nothing in the encoder trains whatever the other flags say, biases with
    ``train_biases`` excepted (``decoders``); ``everything``: the whole encoder trains (full
    fine-tuning).  Otherwise the method's adapter weights always train.
    """

    patch_embed: bool = False
    norms: bool = False
    relative_position_bias: bool = False
    patch_merging: bool = False
    biases: bool = False
    frozen_encoder: bool = False
    everything: bool = False


Injector = Callable[["SwinEncoder", "AdapterConfig", "list[list[BlockPlan]]"], "list[str]"]
Planner = Callable[["AdapterConfig", "list[str]", "list[int]"], list]


@dataclass(frozen=True)
class AdapterMethod:
    """One adapter method.

    Args:
        name: the ``adapter.method`` value.
        inject: ``(encoder, cfg, block_plans) -> changed module names``; adds the method's
            :class:`~mtlora.models.methods.marker.AdapterModule` modules (None: adds nothing).
        trainable: default trainable set, or a function of the config giving it.
        reads: the ``AdapterConfig`` fields the method reads besides ``method`` (checked to exist).
        plan: ``(cfg, tasks, depths) -> raw plan`` (one entry per stage, see ``adapter.plan``)
            for methods with task streams; None: one shared stream, and ``adapter.plan`` is refused.
        lora: ranks and scales mean something (the multi-path low-rank layers are used).
        per_task: ``adapter.per_task`` (one adapter set per task) is allowed.
        label: human name (a Table-1 row name where the paper has one); None: the method name.
    """

    name: str
    inject: Injector | None = None
    trainable: TrainableSet | Callable[[AdapterConfig], TrainableSet] = TrainableSet()
    reads: tuple[str, ...] = ()
    plan: Planner | None = None
    lora: bool = False
    per_task: bool = False
    label: str | None = None

    def trainable_set(self, cfg: AdapterConfig) -> TrainableSet:
        """The defaults with every ``adapter.train_*`` option that is not None applied."""
        base = self.trainable(cfg) if callable(self.trainable) else self.trainable
        overrides = {
            "patch_embed": cfg.train_patch_embed,
            "norms": cfg.train_norms,
            "relative_position_bias": cfg.train_relative_position_bias,
            "patch_merging": cfg.train_patch_merging,
            "biases": cfg.train_biases,
        }
        return dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})


def register_adapter_method(method: AdapterMethod, *, replace: bool = False) -> AdapterMethod:
    """Make ``method`` available as ``adapter.method: <name>``; returns it.

    Raises ValueError for a name already taken (unless ``replace``) or a ``reads`` entry that is
    no ``AdapterConfig`` field.
    """
    from mtlora.models.plans import AdapterConfig

    if not method.name or not method.name.isidentifier():
        raise ValueError(f"adapter method name must be an identifier, got {method.name!r}")
    _load_builtins()
    if method.name in _REGISTRY and not replace:
        raise ValueError(f"adapter method {method.name!r} is already registered (pass replace=True)")
    unknown = sorted(set(method.reads) - set(AdapterConfig.__dataclass_fields__))
    if unknown:
        raise ValueError(f"adapter method {method.name!r}: reads unknown AdapterConfig fields {unknown}")
    _REGISTRY[method.name] = method
    return method


def unregister_adapter_method(name: str) -> None:
    """Remove a registered method (tests register toy methods and clean up)."""
    _REGISTRY.pop(name, None)


def get_adapter_method(name: str) -> AdapterMethod:
    """The registered method ``name``; ValueError naming the option and the choices otherwise."""
    _load_builtins()
    if name not in _REGISTRY:
        raise ValueError(f"adapter.method: unknown {name!r}; registered methods: {adapter_method_names()}")
    return _REGISTRY[name]


def adapter_method_names() -> list[str]:
    """Every registered method name, built-ins first."""
    _load_builtins()
    return list(_REGISTRY)


def is_lora(cfg: AdapterConfig) -> bool:
    """True where ranks mean something: the method uses the multi-path low-rank layers."""
    return get_adapter_method(cfg.method).lora


def _load_builtins() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        for module in _BUILTIN_MODULES:
            importlib.import_module(f"mtlora.models.methods.{module}")
