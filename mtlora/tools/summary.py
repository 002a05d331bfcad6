"""Parameter and compute summary of a multi-task model (``mtlora summary``)."""

from __future__ import annotations

from dataclasses import asdict

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode

from mtlora.models.model import MultiTaskModel, parameter_counts


def gmacs(model: MultiTaskModel, img_size: int) -> dict[str, float]:
    """Multiply-accumulates (G) of one ``img_size``² image: encoder, each task's decoder, total.

    Counted on a fake input (shapes only): the same operators and counts as a real forward,
    without its compute or its activations (hundreds of MB at 448²).  The real weights stay
    untouched; the fake mode only wraps them per operator.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    with (
        FakeTensorMode(allow_non_fake_inputs=True),
        FlopCounterMode(display=False) as counter,
        torch.no_grad(),
    ):
        model(torch.zeros(1, 3, img_size, img_size, device=device))
    model.train(was_training)
    counts = {
        name.split(".", 1)[-1] if "." in name else name: sum(ops.values()) / 2e9
        for name, ops in counter.get_flop_counts().items()
    }
    # adapter.per_task: the further tasks' encoder passes run in task_backbones
    out = {"encoder": counts.get("backbone", 0.0) + counts.get("task_backbones", 0.0)}
    for task in model.tasks:
        out[f"decoder/{task}"] = counts.get(f"decoder.fusion.{task}", 0.0) + counts.get(
            f"decoder.heads.{task}", 0.0
        )
    out["total"] = counts.get("Global", sum(out.values()))
    return out


def summary_table(model: MultiTaskModel, img_size: int, with_macs: bool = True) -> tuple[str, dict]:
    """Human-readable table and the same numbers as a dict."""
    counts = parameter_counts(model)
    result: dict = {"parameters": counts, "method": model.adapter_config.method, "tasks": model.tasks}
    lines = [
        f"method: {model.adapter_config.method}    tasks: {', '.join(model.tasks)}    input: {img_size}x{img_size}",
        "",
        f"{'parameters':<24}{'total':>14}{'trainable':>14}",
        f"{'encoder':<24}{counts['encoder_total']:>14,}{counts['encoder_trainable']:>14,}",
        f"{'decoders':<24}{counts['total'] - counts['encoder_total']:>14,}{counts['decoder_trainable']:>14,}",
        f"{'all':<24}{counts['total']:>14,}{counts['trainable']:>14,}",
        f"{'trainable share':<24}{'':>14}{100 * counts['trainable'] / counts['total']:>13.2f}%",
    ]
    enc = model.encoder_config
    if enc.arch == "swin_tiny" and enc.embed_dim is None and enc.depths is None and enc.num_heads is None:
        from mtlora.published import paper_comparison  # Table 1 is Swin-T: tiny test encoders skip it

        comparison = paper_comparison(model.adapter_config, model.tasks, counts)
        result["paper"] = asdict(comparison)
        lines += [""] + comparison.lines()
    if with_macs:
        macs = gmacs(model, img_size)
        result["gmacs"] = macs
        lines += ["", f"{'GMACs (batch 1)':<24}{'':>14}{'':>14}"]
        lines += [f"{name:<24}{value:>28.2f}" for name, value in macs.items()]
    return "\n".join(lines), result
