"""Plain-text tables of a bench report and the target ratios (config vs full fine-tuning / the plain network)."""

from __future__ import annotations

from mtlora.bench.variants import Variant

TARGETS = {
    "train_speedup_vs_full": 1.2,  # >=
    "train_memory_vs_full": 0.6,  # <=
    "merged_inference_vs_plain": 0.95,  # >=
    "train_mfu": 0.35,  # >=
}


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def summarise(variants: dict[str, dict], compiled: bool) -> dict:
    """The issue's target ratios (config vs full fine-tuning / the plain network) where measurable.

    Like is compared with like: with ``compiled`` every ratio uses the compiled measurements of
    both sides (the compiler also changes memory: it recomputes cheap activations in backward).
    Memory is the CUDA allocator's peak when measured on CUDA, else the exact counted peak
    (:func:`count_variant`; a CPU's resident set also holds allocator caches and Python).
    """
    phase = "train_compiled" if compiled else "train"
    out: dict[str, dict] = {}
    cfg, full = variants.get("config"), variants.get("full")
    plain = variants.get("decoders") or full
    if cfg and full and phase in cfg and phase in full:
        out["train_speedup_vs_full"] = {
            "value": _ratio(cfg[phase]["images_per_s"], full[phase]["images_per_s"]),
            "phase": phase,
        }
    if cfg and full and phase in cfg and phase in full and cfg.get("memory_kind", "").startswith("cuda"):
        out["train_memory_vs_full"] = {
            "value": _ratio(cfg[phase]["peak_memory_bytes"], full[phase]["peak_memory_bytes"]),
            "phase": phase,
            "source": "measured",
        }
    elif cfg and full:  # off CUDA the resident set is a poor proxy: use the exact count
        out["train_memory_vs_full"] = {
            "value": _ratio(cfg["counted_peak_memory_bytes"], full["counted_peak_memory_bytes"]),
            "source": "counted",
        }
    if cfg and plain and "inference" in cfg and "merged_images_per_s" in cfg["inference"]:
        key = "merged_compiled_images_per_s" if compiled else "merged_images_per_s"
        base = "compiled_images_per_s" if compiled else "eager_images_per_s"
        out["merged_inference_vs_plain"] = {
            "value": _ratio(cfg["inference"].get(key), plain["inference"].get(base)),
            "plain_variant": "decoders" if "decoders" in variants else "full",
        }
    if cfg and phase in cfg:
        out["train_mfu"] = {"value": cfg[phase]["mfu"], "phase": phase}
    for name, entry in out.items():
        target, value = TARGETS[name], entry["value"]
        entry["target"] = target
        entry["met"] = (
            None
            if value is None
            else (value <= target if name == "train_memory_vs_full" else value >= target)
        )
    return out


def _ordered(variants: dict[str, dict]) -> list[tuple[str, dict]]:
    """Variants in the order of :data:`Variant` (a JSON file written with sorted keys loses it)."""
    order = {name: i for i, name in enumerate(Variant.__args__)}
    return sorted(variants.items(), key=lambda item: order.get(item[0], len(order)))


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _mib(value: float | None) -> float | None:
    return None if value is None else value / 2**20


def format_report(report: dict) -> str:
    """Plain-text tables of a :func:`run_bench` report."""
    s, d = report["settings"], report["device"]
    variants = _ordered(report["variants"])
    full = report["variants"].get("full")
    lines = [
        f"device: {d['name']} ({d['type']}, {d['torch_threads']} threads)   peak: "
        f"{_fmt(d['peak_tflops'], '.0f')} TFLOP/s [{d['peak_source']}]"
        + (f"   host memory: {d['host_allocator']}" if d.get("host_allocator") else ""),
        f"input {s['img_size']}x{s['img_size']}, batch {s['batch_size']}, {s['precision']}, "
        + (
            "counted only (fake tensors, nothing timed)"
            if s.get("count_only")
            else f"{s['warmup']} warm-up + {s['steps']} timed steps"
        )
        + f", git {report['git']['commit']}{' (dirty)' if report['git']['dirty'] else ''}",
        "",
        "counted (device-independent: FLOPs per image; saved = activations kept for backward; "
        "peak = weights + grads + AdamW state + activations of a training step; mem/full = peak / full's; "
        "flop cap = full's training FLOPs / this one's, the speed-up over full at equal MFU)",
        f"{'variant':<16}{'method':<12}{'ckpt':<10}{'trainable':>12}{'train GF':>10}{'fwd GF':>8}"
        f"{'merged GF':>10}{'saved MiB':>10}{'peak MiB':>10}{'mem/full':>9}{'flop cap':>9}",
    ]
    for name, v in variants:
        peak = v.get("counted_peak_memory_bytes")
        ratio = _ratio(peak, full.get("counted_peak_memory_bytes")) if full else None
        cap = _ratio(full["train_flops_per_image"], v["train_flops_per_image"]) if full else None
        merged = v.get("merged_forward_flops_per_image")
        lines.append(
            f"{name:<16}{v['method']:<12}{str(v.get('gradient_checkpointing', False)):<10}"
            f"{v['parameters']['trainable']:>12,}{v['train_flops_per_image'] / 1e9:>10.2f}"
            f"{v['forward_flops_per_image'] / 1e9:>8.2f}{_fmt(None if merged is None else merged / 1e9, '.2f'):>10}"
            f"{_mib(v.get('saved_activation_bytes', 0)):>10.0f}{_fmt(_mib(peak), '.0f'):>10}"
            f"{_fmt(ratio, '.3f'):>9}{_fmt(cap, '.3f'):>9}"
        )
    timed = [(n, v) for n, v in variants if "train" in v]
    if timed:
        lines += [
            "",
            "training, timed (peak: the device's own peak of the phase: CUDA allocator, or CPU resident-set growth)",
            f"{'variant':<16}{'img/s':>9}{'step ms':>10}{'vs full':>8}{'peak MiB':>10}{'TFLOP/s':>9}{'MFU':>7}",
        ]
        for name, v in timed:
            for phase in ("train", "train_compiled"):
                if phase not in v:
                    continue
                r = v[phase]
                speed = (
                    _ratio(r["images_per_s"], full[phase]["images_per_s"]) if full and phase in full else None
                )
                label = name if phase == "train" else "  +compile"
                lines.append(
                    f"{label:<16}{r['images_per_s']:>9.2f}{r['step_ms']:>10.1f}{_fmt(speed, '.3f'):>8}"
                    f"{_fmt(_mib(r['peak_memory_bytes']), '.0f'):>10}{r['achieved_tflops']:>9.3f}"
                    f"{_fmt(None if r['mfu'] is None else 100 * r['mfu'], '.1f'):>7}"
                )
    if any("inference" in v for v in report["variants"].values()):
        lines += [
            "",
            "inference (images/s)",
            f"{'variant':<16}{'eager':>10}{'compiled':>10}{'merged':>10}{'merged+c':>10}{'merge diff':>12}",
        ]
        for name, v in variants:
            inf = v.get("inference")
            if not inf:
                continue
            lines.append(
                f"{name:<16}"
                f"{_fmt(inf.get('eager_images_per_s'), '.2f'):>10}"
                f"{_fmt(inf.get('compiled_images_per_s'), '.2f'):>10}"
                f"{_fmt(inf.get('merged_images_per_s'), '.2f'):>10}"
                f"{_fmt(inf.get('merged_compiled_images_per_s'), '.2f'):>10}"
                f"{_fmt(inf.get('merged_max_abs_diff'), '.1e'):>12}"
            )
    if report["ratios"]:
        lines += ["", "targets (config vs full fine-tuning / the plain network)"]
        for name, r in sorted(report["ratios"].items(), key=lambda item: list(TARGETS).index(item[0])):
            cmp = "<=" if name == "train_memory_vs_full" else ">="
            met = {True: "met", False: "NOT met", None: "not measured"}[r["met"]]
            source = f" [{r['source']}]" if r.get("source") else ""
            lines.append(
                f"{name:<28}{_fmt(r['value'], '.3f'):>8}  (target {cmp} {r['target']}: {met}){source}"
            )
    return "\n".join(lines)
