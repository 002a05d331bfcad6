"""timm Swin V1 models (``swin_*``), from local files or downloaded by timm.

timm >= 0.9 stores the patch merging at the *start* of the following stage
(``layers.{i+1}.downsample.*``) while we keep Microsoft's end-of-stage layout
(``layers.i.downsample.*``); the merging itself (neighbour order, norm, bias-free
reduction) is identical.  Older timm files use the Microsoft layout and are passed through.
The classifier is ``head.fc.*``; ``norm.*`` is the final LayerNorm; both are dropped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from torch import Tensor

from mtlora.io.loading import Converted
from mtlora.io.microsoft_swin import (
    is_classifier,
    is_recomputed_buffer,
    merging_at_stage_start,
)
from mtlora.io.serialization import CheckpointError, strip_prefix

MICROSOFT_URL = (
    "https://github.com/SwinTransformer/storage/releases/download/v1.0.0/swin_tiny_patch4_window7_224.pth"
)
_STAGE_DOWNSAMPLE = re.compile(r"^layers\.(\d+)\.downsample\.(.+)$")


def _convert_timm(state_dict: Mapping[str, Tensor]) -> Converted:
    sd = strip_prefix(state_dict, "module.")
    shift = merging_at_stage_start(sd)
    out, origin, dropped = {}, {}, []
    for key, value in sd.items():
        if is_recomputed_buffer(key) or is_classifier(key):
            dropped.append(key)
            continue
        new = key
        m = _STAGE_DOWNSAMPLE.match(key)
        if m and shift:
            new = f"layers.{int(m.group(1)) - 1}.downsample.{m.group(2)}"
            origin[new] = key
        out[new] = value
    return Converted(out, origin, dropped)


def convert_timm_swin(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """timm Swin V1 state dict -> our encoder's (plain, adapter-free) names.

    Pure function.  Moves ``layers.{i+1}.downsample.*`` to ``layers.i.downsample.*`` when the
    file uses timm's stage-start layout (detected from the keys), drops ``head.*``/``head.fc.*``,
    ``norm.*`` and the ``attn_mask``/``relative_position_index`` buffers.
    """
    return _convert_timm(state_dict).state_dict


def _cached_hub_file(cfg) -> str | None:
    """Local path of the model's weights in the Hugging Face cache, or None when they are not there."""
    from huggingface_hub import try_to_load_from_cache

    if not cfg.hf_hub_id:
        return None
    repo, _, revision = cfg.hf_hub_id.partition("@")
    names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
    for filename in names:
        found = try_to_load_from_cache(repo, filename, revision=revision or None)
        if isinstance(found, str):
            return found
    return None


def _hub_unreachable() -> str | None:
    """Why the Hugging Face hub cannot be used right now, or None when a download may work.

    huggingface_hub retries a failing connection for about 50 s before giving up; one direct
    connection attempt tells the usual offline case (no DNS, no route) in milliseconds.  With a
    proxy configured a direct connection says nothing, so the download is simply attempted.
    """
    import socket
    import urllib.request
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set and the weights are not in the local Hugging Face cache"
    if any(k in urllib.request.getproxies() for k in ("https", "all")):
        return None
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=10).close()
    except OSError as e:
        return (
            f"{host} cannot be reached ({type(e).__name__}: {e}) and the weights are not in the local cache"
        )
    return None


def timm_pretrained_state_dict(name: str) -> dict[str, Tensor]:
    """The ImageNet weights of timm model ``name`` (e.g. ``swin_tiny_patch4_window7_224.ms_in1k``).

    Weights already in the Hugging Face cache are read from there without any network access
    (a cluster node without internet, weights fetched once on a login node).  Otherwise timm
    downloads them; when the hub cannot be reached the error comes at once (not after the
    hub client's retries) and says how to pass a local file instead.
    """
    import timm
    from timm.models import get_pretrained_cfg

    if not timm.is_model(name):
        raise CheckpointError(
            f"timm has no model named {name!r}; Swin V1 names look like 'swin_tiny_patch4_window7_224.ms_in1k' "
            f"(see timm.list_models('swin*'))"
        )
    if not name.startswith("swin_"):  # swinv2_*, swin-like hybrids: other layouts
        raise CheckpointError(
            f"timm:{name} is not a Swin V1 model; the encoder loads swin_* (V1) weights only"
        )

    def fetch_failed(reason: str) -> CheckpointError:
        return CheckpointError(
            f"could not fetch the pretrained weights of timm:{name} ({reason}). Offline? Download "
            f"the weights once and pass the file instead, e.g. --model.encoder.pretrained "
            f"/path/swin_tiny_patch4_window7_224.pth (Microsoft release: {MICROSOFT_URL}) or a timm "
            f".safetensors/.pth file"
        )

    cfg = get_pretrained_cfg(name)
    overlay = None
    if cfg is not None and cfg.hf_hub_id:
        cached = _cached_hub_file(cfg)
        if cached:
            overlay = {"file": cached}  # timm reads the file (and converts it) without the hub
        else:
            reason = _hub_unreachable()
            if reason:
                raise fetch_failed(reason)
    try:
        model = timm.create_model(name, pretrained=True, num_classes=0, pretrained_cfg_overlay=overlay)
    except Exception as e:  # network/hub/cache errors come in many types
        raise fetch_failed(f"{type(e).__name__}: {e}") from e
    return model.state_dict()
