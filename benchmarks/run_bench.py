"""The standard ``mtlora bench`` measurement, recorded in benchmarks/RESULTS.md.

Runs the ``mtlora bench`` command (so the recorded command is exactly what ran) on Swin-T MTLoRA
r16 (configs/swin_tiny_r16.yaml) against full fine-tuning, decoders-only, MTLoRA with full and
selective recomputation, MTLoRA's network trained in full, MTLoRA without its task streams and a
frozen encoder that gradients cross (the floor of any method adapting every block), with one of
three presets:

* ``--device cuda``: the issue's setting: 448x448, batch 32, bf16 autocast, eager, every variant,
  20 timed steps after 5 warm-up steps.
* ``--device cuda-compiled``: training of config and full fine-tuning also under
  ``torch.compile`` (the variants the speed and MFU targets compare; inductor compiles take minutes).
* ``--device cpu``: a reduced size a CPU finishes in minutes: 224x224, batch 2, fp32, eager,
  3 timed steps after 1 warm-up, every variant measured twice in turn (best run kept).

Optionally (``--count-at 448``) it also counts, on fake tensors, the FLOPs per image and the peak
training memory of every variant at that size with batch 32 in bf16 (``mtlora bench --count_only``:
the issue's GPU setting, counted on any machine; a count, not a timing).
With ``--update-results`` the preset's section "## Training and inference (mtlora bench, <preset>)"
of benchmarks/RESULTS.md is replaced (other sections are kept).

    python benchmarks/run_bench.py --device cuda --update-results   # runs at 448/32/bf16: no --count-at
    python benchmarks/run_bench.py --device cuda-compiled --update-results
    OMP_NUM_THREADS=1 python benchmarks/run_bench.py --device cpu --count-at 448 --update-results
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Training and inference (mtlora bench, {preset})"
CONFIG = "configs/swin_tiny_r16.yaml"
VARIANTS = "[config, full, decoders, checkpointing, selective, config_full, shared_only, frozen_encoder]"
COMPILED_VARIANTS = "[config, full]"
_CUDA = [
    "--trainer.accelerator",
    "gpu",
    "--trainer.devices",
    "1",
    "--batch_size",
    "32",
    "--precision",
    "bf16",
]
# inductor compiles take about a minute per graph (forward and backward per variant): the compiled
# preset times the training of the two variants the speed and MFU targets compare, so that each
# preset fits one device call (merged vs plain inference is compared eagerly by the cuda preset)
PRESETS: dict[str, tuple[list[str], str]] = {
    "cuda": ([*_CUDA, "--compile", "false", "--steps", "20", "--warmup", "5"], VARIANTS),
    "cuda-compiled": (
        [*_CUDA, "--compile", COMPILED_VARIANTS, "--inference", "false", "--steps", "20", "--warmup", "3"],
        COMPILED_VARIANTS,
    ),
    "cpu": (
        [
            *["--trainer.accelerator", "cpu", "--trainer.devices", "1", "--img_size", "224"],
            *["--batch_size", "2", "--precision", "fp32", "--compile", "false"],
            *["--steps", "3", "--warmup", "1", "--repeats", "2"],
        ],
        VARIANTS,
    ),
}


def _command(options: list[str], variants: str, json_out: Path) -> list[str]:
    """``mtlora bench`` on the standard config with ``options`` and ``variants``, writing ``json_out``."""
    json_arg = json_out.relative_to(ROOT) if json_out.is_relative_to(ROOT) else json_out
    head = [sys.executable, "-m", "mtlora.cli", "bench", "--config", CONFIG]
    return [*head, *options, "--variants", variants, "--json_out", str(json_arg)]


def bench_command(preset: str, json_out: Path, extra: list[str]) -> list[str]:
    """The ``mtlora bench`` command line of a preset."""
    options, variants = PRESETS[preset]
    return _command(options, variants, json_out) + extra


def count_command(img_size: int, json_out: Path) -> list[str]:
    """``mtlora bench --count_only`` at the issue's GPU setting (batch 32, bf16) and ``img_size``."""
    options = ["--trainer.accelerator", "cpu", "--img_size", str(img_size), "--batch_size", "32"]
    return _command([*options, "--precision", "bf16", "--count_only", "true"], VARIANTS, json_out)


def section(report: dict) -> str:
    """Markdown for RESULTS.md from a bench report."""
    from mtlora.bench import format_report

    d, s, g = report["device"], report["settings"], report["git"]
    cmd, load = report["run"]["command"], report["run"]["load_average"]
    counted = report.get("counted_at")
    lines = [
        SECTION.format(preset=report["run"].get("preset", d["type"])),
        "",
        f"Measured {report['run'].get('date', '?')} by `benchmarks/run_bench.py` on **{d['name']}** ({d['type']}, "
        f"{d['cpu_count']} cores visible, {d['torch_threads']} torch threads), torch {report['torch']}, git "
        f"`{g['commit']}`{' + uncommitted changes' if g['dirty'] else ''}.  Load average before/after: "
        f"{load[0]:.1f} / {load[1]:.1f}.",
        "",
        f"Input {s['img_size']}x{s['img_size']}, batch {s['batch_size']}, {s['precision']}, {s['warmup']} warm-up + "
        f"{s['steps']} timed steps, best of {s['repeats']} round(s).  Command:",
        "",
        "```",
        cmd,
        "```",
        "",
        "```",
        format_report(report),
        "```",
        "",
    ]
    if counted:
        lines += [
            f"Counted at {counted['settings']['img_size']}x{counted['settings']['img_size']}, batch "
            f"{counted['settings']['batch_size']}, {counted['settings']['precision']} (the issue's GPU setting; "
            "`mtlora bench --count_only`, fake tensors, device-independent).  Command:",
            "",
            "```",
            counted["run"]["command"],
            "```",
            "",
            "```",
            format_report(counted),
            "```",
            "",
        ]
    return "\n".join(lines)


def update_results(text: str) -> Path:
    """Replace (or append) the section ``text`` starts with, keeping every other section of RESULTS.md."""
    path = ROOT / "benchmarks" / "RESULTS.md"
    old = path.read_text() if path.exists() else "# Benchmark results\n"
    title = text.splitlines()[0]
    start = old.find(title + "\n")
    if start < 0:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        end = old.find("\n## ", start + len(title))
        new = old[:start] + text + ("\n" + old[end + 1 :] if end >= 0 else "")
    path.write_text(new.rstrip("\n") + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=sorted(PRESETS), default="cuda")
    parser.add_argument(
        "--out", type=Path, default=None, help="JSON report (default benchmarks/results/<device>.json)"
    )
    parser.add_argument(
        "--count-at", type=int, default=None, help="also count FLOPs and memory at this size, batch 32, bf16"
    )
    parser.add_argument("--update-results", action="store_true", help="rewrite this section of RESULTS.md")
    parser.add_argument(
        "--from-json",
        type=Path,
        default=None,
        help="render a report this script wrote earlier (no measurement)",
    )
    parser.add_argument("extra", nargs="*", help="more `mtlora bench` arguments (after --)")
    args = parser.parse_args(argv)
    if args.from_json:
        report = json.loads(args.from_json.read_text())
    else:
        out = (args.out or ROOT / "benchmarks" / "results" / f"{args.device}.json").resolve()
        out.parent.mkdir(parents=True, exist_ok=True)
        command = bench_command(args.device, out, args.extra)
        before = os.getloadavg()[0]
        subprocess.run(command, cwd=ROOT, check=True)
        report = json.loads(out.read_text())
        report["run"] = {
            "command": shlex.join(["python" if c == sys.executable else c for c in command]),
            "load_average": [before, os.getloadavg()[0]],
            "date": time.strftime("%Y-%m-%d"),
            "preset": args.device,
        }
        if args.count_at:
            count_out = out.with_name(f"{out.stem}_counted_{args.count_at}.json")
            command = count_command(args.count_at, count_out)
            subprocess.run(command, cwd=ROOT, check=True)
            report["counted_at"] = json.loads(count_out.read_text())
            report["counted_at"]["run"] = {
                "command": shlex.join(["python" if c == sys.executable else c for c in command])
            }
        out.write_text(json.dumps(report, indent=2, sort_keys=True))
    text = section(report)
    print(text)
    if args.update_results:
        print(f"updated {update_results(text)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
