"""Exact, device-independent tensor memory: live and peak bytes of tensor storages.

Why not the device's own counter: a CPU has none (the process' resident set also counts the
allocator's caches, other threads and Python), and a GPU is not always at hand.  Counting every
storage that an operator creates, and subtracting it when Python frees it, gives the number
``torch.cuda.max_memory_allocated`` approximates (without the CUDA allocator's 512-byte rounding
and kernel workspaces) on any machine.  Run on fake tensors
(:func:`fake_model`, ``torch._subclasses.FakeTensorMode``) it costs no compute and no memory,
so the memory of a 448x448, batch-32 training step can be known on a laptop.

``torch.distributed._tools.mem_tracker.MemTracker`` does this too but registers gradient hooks
on every parameter and fails on frozen ones, i.e. on every PEFT model.  Like any Python dispatch
mode, the meter counts eager execution; ``torch.compile`` does not trace through it.
"""

from __future__ import annotations

import weakref

import torch
from torch import Tensor, nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary


class TensorMemoryMeter(TorchDispatchMode):
    """Counts bytes of the tensor storages created by operators while active.

    ``live`` is what is still referenced now, ``peak`` the maximum of ``live``.  Storages that
    existed before entering (weights, inputs) are not counted; add them with :func:`storage_bytes`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._tracked: WeakIdKeyDictionary = WeakIdKeyDictionary()

    def _freed(self, nbytes: int) -> None:
        self.live -= nbytes

    def _track(self, t: Tensor) -> None:
        storage = t.untyped_storage()
        if storage in self._tracked:  # a view, or an in-place op's own output
            return
        nbytes = storage.nbytes()
        self._tracked[storage] = weakref.ref(storage, lambda _ref, n=nbytes: self._freed(n))
        self.live += nbytes
        self.peak = max(self.peak, self.live)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, Tensor):
                self._track(leaf)
        return out


class MaskDropout(nn.Dropout):
    """``nn.Dropout`` that keeps a one-byte mask for backward on every device.

    CUDA's fused dropout keeps a bool mask; on a CPU ``F.dropout`` keeps its float noise tensor
    (4 bytes per element in fp32), so memory counted on a CPU would overstate a GPU's.
    ``native_dropout`` keeps a bool mask on both; same distribution and scaling.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return x
        return torch.native_dropout(x, self.p, True)[0]


def count_dropout_as_cuda(model: nn.Module) -> nn.Module:
    """Replace, in place, every ``nn.Dropout`` of ``model`` by a :class:`MaskDropout` of the same rate.

    A module swap rather than a function mode, so that recomputation in backward (gradient
    checkpointing) runs the same kernel as the forward did.
    """
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Dropout:
                setattr(module, name, MaskDropout(child.p))
    return model


class ValueReadCounter(TorchDispatchMode):
    """Counts reads of tensor values into Python (``.item()``, ``bool(t)``, ``.tolist()``).

    On a GPU each such read is a host synchronisation; counting them at the dispatcher finds
    them on any device, CPU included, so tests can assert their absence without a GPU.
    """

    READS = (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.is_nonzero.default)

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in self.READS:
            self.count += 1
        return func(*args, **(kwargs or {}))


def storage_bytes(tensors) -> int:
    """Bytes of the distinct storages behind ``tensors`` (e.g. a model's parameters and buffers)."""
    seen: dict[int, int] = {}
    for t in tensors:
        if t is not None:
            storage = t.untyped_storage()
            seen[storage.data_ptr() if storage.data_ptr() else id(t)] = storage.nbytes()
    return sum(seen.values())


def fake_model(model: nn.Module, mode: FakeTensorMode) -> nn.Module:
    """Replace, in place, every parameter and buffer of ``model`` by a fake tensor of ``mode``.

    Models are built for real first (their constructors read values on the host, which fake
    tensors cannot); ``requires_grad`` is kept so frozen weights stay frozen.
    """
    for module in model.modules():
        for name, param in list(module.named_parameters(recurse=False)):
            fake = nn.Parameter(mode.from_tensor(param.detach()), requires_grad=param.requires_grad)
            setattr(module, name, fake)
        for name, buf in list(module.named_buffers(recurse=False)):
            if buf is not None:
                module._buffers[name] = mode.from_tensor(buf)
    return model


def to_fake(tensors: dict[str, Tensor], mode: FakeTensorMode) -> dict[str, Tensor]:
    """Fake copies (same shapes, dtypes, devices) of a batch of real tensors."""
    return {k: mode.from_tensor(v) for k, v in tensors.items()}


def new_fake_mode() -> FakeTensorMode:
    """A fake-tensor mode for counting (real tensors must be converted with :func:`fake_model`)."""
    return FakeTensorMode(allow_non_fake_inputs=False)
