"""Shared test helpers: tiny Swin configurations that run in milliseconds on a CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "disabled")
# one intra-op thread: tiny test models gain nothing from more, and on a busy 2-core machine
# oversubscribed OpenMP threads made single steps 10-50x slower
torch.set_num_threads(1)

PASCAL_CHANNELS = {"semseg": 21, "human_parts": 7, "sal": 1, "normals": 3}
TESTS = Path(__file__).parent


def summary_json(config: Path, tmp_path: Path, *extra: str) -> dict:
    """``mtlora summary --macs false`` of ``config``, read back from its ``--json_out`` file.

    ``summary`` reads no data and downloads nothing, so a paper config needs no data folder.
    """
    from mtlora.cli import run_cli

    out = tmp_path / "summary.json"
    run_cli(["summary", "--config", str(config), "--macs", "false", "--json_out", str(out), *extra])
    return json.loads(out.read_text())


def cli_subprocess(args: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    """``mtlora <args>`` in a fresh process (DDP launches its ranks from it), asserted to succeed.

    One thread, unbuffered output, W&B off; ``tests/`` is on the path so callbacks defined there
    (e.g. ``kill_at_step.KillAtStep``) resolve by class path.
    """
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
        "WANDB_MODE": "disabled",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "mtlora.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def tiny_encoder(**overrides):
    """A 4-stage Swin small enough for unit tests (64 px, window 2, shifts in stages 1-3)."""
    from mtlora.models.model import EncoderConfig

    base = dict(
        arch="swin_tiny",
        embed_dim=16,
        depths=[2, 2, 2, 2],
        num_heads=[1, 2, 2, 4],
        window_size=2,
        img_size=64,
        drop_path_rate=0.0,
    )
    base.update(overrides)
    return EncoderConfig(**base)


@pytest.fixture
def tiny_encoder_config():
    return tiny_encoder()


def randomize_lora(model: torch.nn.Module, seed: int = 0, std: float = 0.05) -> None:
    """Give every low-rank B (zero at init) random values so adapters change the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name and name.endswith("_B"):
                p.copy_(torch.randn(p.shape, generator=g) * std)
