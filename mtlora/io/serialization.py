"""Reading checkpoint files without executing pickled code.

``torch.save`` files are pickles: loading one with plain :func:`torch.load` (``weights_only=False``)
can run any code the author put in it.  :func:`safe_torch_load` therefore loads

1. with torch's own weights-only unpickler whenever the file only contains tensors, containers
   and primitive values (Microsoft/timm releases, our own state dicts), and
2. otherwise with :class:`RestrictedUnpickler`, an allowlist of tensor-rebuild functions,
   ``OrderedDict``, a few builtins, NumPy scalars, and ``yacs.config.CfgNode`` mapped to the
   harmless :class:`ConfigNode`.  Official MTLoRA training checkpoints store their yacs config
   that way, and torch's weights-only unpickler cannot rebuild it (it refuses dict items on dict
   subclasses), so without (2) they would need ``yacs`` installed *and* unsafe loading.

Any other global is refused before it is imported, with an error naming it.  ``allow_unsafe=True``
falls back to plain pickle for files the user trusts.  Corrupt, truncated and non-checkpoint
files fail with an error that names the file and says which of these it is.
"""

from __future__ import annotations

import _compat_pickle
import logging
import os
import pickle
import types
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mtlora.io.atomic import write_atomic

log = logging.getLogger(__name__)

_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = 0x80


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used: unreadable file, unknown layout or another architecture."""


class UnsafeCheckpointError(CheckpointError, pickle.UnpicklingError):
    """The file references Python globals outside the allowlist; they were refused, not imported."""


class ConfigNode(dict):
    """Stand-in for ``yacs.config.CfgNode`` (a dict subclass): keys, values and attribute access.

    yacs' bookkeeping (immutability flag, deprecated/renamed key sets) is pickled as instance
    state; it is irrelevant for reading values and is dropped by :meth:`__setstate__`.
    """

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setstate__(self, state: Any) -> None:
        """Ignore yacs' internal attributes (``__immutable__``, ``__deprecated_keys__``, ...)."""

    def to_dict(self) -> dict[str, Any]:
        """A plain nested ``dict`` copy (ConfigNodes inside lists/tuples converted too)."""
        return _plain(self)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


_TORCH_REBUILD_FUNCTIONS = (
    "_rebuild_tensor",
    "_rebuild_tensor_v2",
    "_rebuild_tensor_v3",
    "_rebuild_parameter",
    "_rebuild_parameter_with_state",
    "_rebuild_device_tensor_from_cpu_tensor",
)

_SAFE_BUILTINS = {
    "set": set,
    "frozenset": frozenset,
    "complex": complex,
    "bytearray": bytearray,
    "slice": slice,
}


def _allowed_global(module: str, name: str) -> Any | None:
    """The object a pickle may reference as ``module.name``, or None when it is not allowed.

    Resolution never imports anything beyond torch, collections and NumPy (a dependency), so a
    refused name cannot trigger an import side effect either.
    """
    if module == "yacs.config" and name == "CfgNode":
        return ConfigNode
    if module == "collections" and name == "OrderedDict":
        return OrderedDict
    if module == "torch._utils" and name in _TORCH_REBUILD_FUNCTIONS:
        return getattr(torch._utils, name, None)
    if module == "torch":
        if name in ("Size", "device"):
            return getattr(torch, name)
        obj = getattr(torch, name, None)
        return obj if isinstance(obj, torch.dtype) else None
    if module == "torch.nn.parameter" and name == "Parameter":
        return torch.nn.Parameter
    if module == "torch.serialization" and name == "_get_layout":
        return torch.serialization._get_layout
    if module == "builtins" and name in _SAFE_BUILTINS:
        return _SAFE_BUILTINS[name]
    if module == "_codecs" and name == "encode":  # how protocol-2 pickles store ``bytes``
        import _codecs

        return _codecs.encode
    if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "scalar":
        import numpy as np  # e.g. a NumPy float stored as ``max_accuracy``

        core = getattr(np, "_core", None) or np.core  # NumPy 2 renamed numpy.core (deprecated alias)
        return core.multiarray.scalar
    if module == "numpy" and name == "dtype":
        import numpy as np

        return np.dtype
    return None


def _resolve(module: str, name: str) -> Any | None:
    """:func:`_allowed_global` after mapping Python 2 names (``__builtin__.set`` in protocol-2 pickles)."""
    module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
    return _allowed_global(_compat_pickle.IMPORT_MAPPING.get(module, module), name)


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose :meth:`find_class` only resolves allowlisted globals.

    Used through :data:`restricted_pickle` as ``torch.load(..., pickle_module=restricted_pickle)``:
    torch subclasses ``pickle_module.Unpickler`` and only intercepts storage type names before
    delegating to this ``find_class``; every other global of the file comes through here.
    """

    def find_class(self, module: str, name: str) -> Any:
        obj = _resolve(module, name)
        if obj is None:
            raise UnsafeCheckpointError(
                f"refused to load the global '{module}.{name}': only tensors, containers, primitive values "
                f"and yacs configs are loaded from checkpoints (pass allow_unsafe=True only for a file you trust)"
            )
        return obj


def _restricted_load(file, **kwargs) -> Any:
    return RestrictedUnpickler(file, **kwargs).load()


restricted_pickle = types.ModuleType("mtlora_restricted_pickle")
"""A ``pickle``-like module for ``torch.load(pickle_module=...)`` built on :class:`RestrictedUnpickler`."""
restricted_pickle.Unpickler = RestrictedUnpickler
restricted_pickle.load = _restricted_load
restricted_pickle.UnpicklingError = pickle.UnpicklingError


def existing_file(path: str | os.PathLike) -> Path:
    """``path`` as a Path, if it names a non-empty file; otherwise the error says which it is not."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"checkpoint file not found: {p}")
    if not p.is_file():
        raise CheckpointError(f"{p} is not a file (expected a checkpoint file)")
    if p.stat().st_size == 0:
        raise CheckpointError(f"{p} is empty (0 bytes): truncated download or copy?")
    return p


def file_kind(path: Path) -> str:
    """``zip`` (torch >= 1.6), ``pickle`` (legacy torch.save), ``safetensors`` or ``unknown``."""
    with path.open("rb") as f:
        head = f.read(16)
    if head.startswith(_ZIP_MAGIC):
        return "zip"
    # 8-byte little-endian header size, then the JSON header; the size is bounded as safetensors
    # bounds it (100 MB), so foreign bytes followed by a "{" by chance are not taken for one (a
    # truncated file still is, and gets the "truncated or corrupt" error)
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= 100_000_000:
        return "safetensors"
    if head[:1] == bytes([_PICKLE_PROTO]):
        return "pickle"
    return "unknown"


def checked_file(path: str | os.PathLike, kinds: tuple[str, ...], expected: str) -> tuple[Path, str]:
    """The one entry check of every weight-file reader: ``(path, kind)`` for an existing file whose
    content (not its name) is one of ``kinds`` (see :func:`file_kind`), a zip archive checked whole.

    Missing, empty, truncated and foreign files fail with a :class:`CheckpointError` (or
    ``FileNotFoundError``) naming the file and ``expected``, before anything is unpickled.
    """
    p = existing_file(path)
    kind = file_kind(p)
    if kind not in kinds:
        raise not_a(p, expected)
    if kind == "zip":
        check_torch_zip(p)
    return p, kind


_KIND_NAMES = {
    "zip": "a torch checkpoint (zip archive)",
    "pickle": "a legacy torch pickle",
    "safetensors": "a safetensors file",
}


def not_a(path: Path, expected: str) -> CheckpointError:
    """The one error for a file whose content is not ``expected``, whatever its name says.

    The content decides, not the suffix: a README, an image or an HTML error page saved as
    ``.ckpt``/``.safetensors`` is named the same way wherever it is read.
    """
    kind = file_kind(path)
    if kind in _KIND_NAMES:
        found = _KIND_NAMES[kind]
    else:
        with path.open("rb") as f:
            found = f"a file starting with bytes {f.read(8)!r}"
    return CheckpointError(
        f"{path} ({path.stat().st_size} bytes) is not {expected}: it holds {found}. Truncated, corrupt, "
        "renamed or another format?"
    )


def check_torch_zip(path: Path) -> None:
    """Fail naming ``path`` unless it is a readable torch zip archive (not TorchScript, not truncated)."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(
            f"{path} ({path.stat().st_size} bytes) is a truncated or corrupt torch checkpoint: the zip archive "
            f"cannot be read ({e}); re-download or re-copy the file"
        ) from None
    if any(n.endswith("/constants.pkl") or n == "constants.pkl" for n in names):
        raise CheckpointError(
            f"{path} is a TorchScript archive, not a state-dict checkpoint (use torch.jit.load)"
        )
    if not any(n.endswith("data.pkl") for n in names):
        raise CheckpointError(f"{path} is a zip archive but not a torch checkpoint (no data.pkl inside)")


def _load_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(
            f"{path} ({path.stat().st_size} bytes) is not a readable safetensors file: truncated or corrupt ({e})"
        ) from None


def safe_torch_load(path: str | os.PathLike, *, allow_unsafe: bool = False) -> Any:
    """Load a ``torch.save``/``.safetensors`` file onto the CPU without running pickled code.

    Args:
        path: the file; ``.safetensors`` files (or files with a safetensors header) are read with
            safetensors, everything else as a torch checkpoint (zip or legacy format).
        allow_unsafe: unpickle arbitrary objects (plain ``torch.load(weights_only=False)``).
            Only for files you trust: unpickling can execute code.  Emits a warning.

    Raises:
        FileNotFoundError: the file does not exist.
        UnsafeCheckpointError: the file references a global outside the allowlist (named).
        CheckpointError: the file is empty, truncated, corrupt or not a checkpoint.
    """
    p, kind = checked_file(  # the content decides: a torch file named .safetensors still loads as one
        path,
        ("safetensors", "zip", "pickle"),
        "a torch checkpoint (zip archive written by torch.save, or a legacy pickle) or a safetensors file",
    )
    if kind == "safetensors":
        return _load_safetensors(p)
    if allow_unsafe:
        warnings.warn(
            f"loading {p} with unrestricted pickle (allow_unsafe=True): this can execute code from the file",
            UserWarning,
            stacklevel=2,
        )
        return _torch_load(p, weights_only=False)
    if kind == "zip" and hasattr(torch.serialization, "get_unsafe_globals_in_checkpoint"):
        # a static scan of the pickle tells whether torch's own weights-only unpickler suffices
        try:
            extra = torch.serialization.get_unsafe_globals_in_checkpoint(str(p))
        except (RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as e:
            raise unreadable(p, e) from e
        if not extra:
            return _torch_load(p, weights_only=True)
        refused = sorted(g for g in extra if _resolve(*g.rsplit(".", 1)) is None)
        if refused:
            raise UnsafeCheckpointError(
                f"{p}: refused to load the globals {', '.join(repr(g) for g in refused)}: only tensors, "
                f"containers, primitive values and yacs configs are loaded from checkpoints (pass "
                f"allow_unsafe=True only for a file you trust)"
            )
        log.debug("%s references %s; loading with the restricted unpickler", p, sorted(extra))
        return _torch_load(p, weights_only=False, pickle_module=restricted_pickle)
    try:  # legacy format (no static scan): weights-only first, the restricted unpickler if torch refuses
        return _torch_load(p, weights_only=True)
    except CheckpointError as e:
        if not isinstance(e.__cause__, pickle.UnpicklingError):
            raise
    return _torch_load(p, weights_only=False, pickle_module=restricted_pickle)


def _torch_load(path: Path, *, weights_only: bool, pickle_module: Any = None) -> Any:
    kwargs: dict[str, Any] = {"map_location": "cpu", "weights_only": weights_only}
    if pickle_module is not None:
        kwargs["pickle_module"] = pickle_module
    try:
        # a file object: torch.load would read a file named *.safetensors as safetensors
        with path.open("rb") as f:
            return torch.load(f, **kwargs)
    except UnsafeCheckpointError as e:
        raise UnsafeCheckpointError(f"{path}: {e}") from None
    except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile, OSError) as e:
        raise unreadable(path, e) from e


def unreadable(path: Path, error: Exception) -> CheckpointError:
    first_line = str(error).splitlines()[0] if str(error) else ""
    return CheckpointError(
        f"{path} ({path.stat().st_size} bytes) could not be read as a torch checkpoint: it is truncated or "
        f"corrupt, or not a torch checkpoint ({type(error).__name__}: {first_line})"
    )


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through a temporary file in the same folder + fsync + rename.

    Readers see either the previous file or the complete new one, also after a SIGKILL or a
    crash of the machine; a failed write removes its temporary file (see :mod:`mtlora.io.atomic`).
    """

    def save(tmp: str) -> None:
        with open(tmp, "wb") as f:
            torch.save(obj, f)

    write_atomic(path, save)


def is_state_dict(obj: Any) -> bool:
    """A non-empty mapping from names to tensors."""
    return (
        isinstance(obj, Mapping)
        and bool(obj)
        and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())
    )


def extract_state_dict(
    obj: Any, source: str, keys: tuple[str, ...] = ("model", "state_dict", "module")
) -> dict:
    """The state dict inside a loaded checkpoint: the object itself or its first ``keys`` entry.

    Microsoft releases and official MTLoRA checkpoints keep it under ``model``, training
    frameworks under ``state_dict``; timm/safetensors files are the state dict itself.
    """
    if is_state_dict(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in keys:
            if key in obj and is_state_dict(obj[key]):
                return dict(obj[key])
        shown = ", ".join(repr(k) for k in list(obj)[:12])
        raise CheckpointError(
            f"{source}: no state dict found: expected a mapping of tensors, or one under {list(keys)}; "
            f"the top-level keys are {shown}"
        )
    raise CheckpointError(f"{source}: expected a state dict (mapping of tensors), got {type(obj).__name__}")


def strip_prefix(state_dict: Mapping[str, Tensor], prefix: str = "module.") -> dict[str, Tensor]:
    """Remove ``prefix`` when *every* key has it (DistributedDataParallel wrappers add ``module.``)."""
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix) :]: v for k, v in state_dict.items()}
    return dict(state_dict)
