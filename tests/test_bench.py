"""``mtlora bench``: runs on CPU at a tiny size and writes a complete report (no timing asserted)."""

import json
import math
from pathlib import Path

import pytest
import torch

from mtlora import bench
from mtlora.cli import run_cli

CONFIGS = Path(__file__).parent / "configs"


def test_bench_cli_writes_json(tmp_path, capsys):
    out = tmp_path / "bench" / "result.json"
    run_cli(
        [
            "bench",
            "--config",
            str(CONFIGS / "tiny_synthetic.yaml"),
            "--data.init_args.tasks",
            "[semseg, sal, normals, depth]",
            "--batch_size",
            "2",
            "--steps",
            "1",
            "--warmup",
            "1",
            "--peak_tflops",
            "2.0",
            "--json_out",
            str(out),
            "--variants",
            "[config, full, decoders, checkpointing, selective]",
        ]
    )
    text = capsys.readouterr().out
    assert "training" in text and "targets" in text and "train_speedup_vs_full" in text
    report = json.loads(out.read_text())
    assert report["device"]["type"] == "cpu" and report["device"]["peak_tflops"] == 2.0
    assert report["settings"]["precision"] == "fp32" and report["settings"]["img_size"] == 64
    v = report["variants"]
    assert [v[k]["method"] for k in ("config", "full", "decoders", "checkpointing")] == [
        "mtlora",
        "full",
        "decoders",
        "mtlora",
    ]
    assert v["checkpointing"]["gradient_checkpointing"] is True and not v["config"]["gradient_checkpointing"]
    assert v["selective"]["gradient_checkpointing"] == "selective" and v["selective"]["method"] == "mtlora"
    # trainable sets of the variants
    assert v["full"]["parameters"]["trainable"] == v["full"]["parameters"]["total"]
    assert v["decoders"]["parameters"]["encoder_trainable"] == 0
    assert 0 < v["config"]["parameters"]["encoder_trainable"] < v["full"]["parameters"]["encoder_trainable"]
    # FLOP definition: full FT ~3x forward (no input gradient for the image), frozen encoder far less,
    # checkpointing recomputation not counted
    full = v["full"]
    assert (
        2.7 * full["forward_flops_per_image"]
        < full["train_flops_per_image"]
        <= 3.0 * full["forward_flops_per_image"]
    )
    assert v["decoders"]["train_flops_per_image"] < full["train_flops_per_image"]
    assert v["checkpointing"]["train_flops_per_image"] == v["config"]["train_flops_per_image"]
    # activations kept for backward: a frozen encoder keeps little, checkpointing keeps block inputs only
    saved = {name: variant["saved_activation_bytes"] for name, variant in v.items()}
    assert 0 < saved["decoders"] < saved["full"] and 0 < saved["checkpointing"] < saved["config"]
    assert saved["checkpointing"] < saved["selective"] < saved["config"]
    # counted peak training memory: weights + grads + AdamW state + activations
    peak = {name: variant["counted_peak_memory_bytes"] for name, variant in v.items()}
    assert peak["checkpointing"] <= peak["selective"] < peak["config"]  # tiny: other peaks may dominate
    assert peak["decoders"] < peak["full"]
    assert v["config"]["merged_forward_flops_per_image"] < v["config"]["forward_flops_per_image"]
    for name, variant in v.items():
        train = variant["train"]
        assert train["images_per_s"] > 0 and train["loss_finite"], name
        assert train["value_reads_fwd_bwd"] == 0, name  # no host syncs in forward/loss/backward
        assert train["cuda_sync_warnings_per_step"] is None  # CPU run
        assert math.isclose(train["mfu"], train["achieved_tflops"] / 2.0, rel_tol=1e-9)
        assert train["peak_memory_bytes"] is None or train["peak_memory_bytes"] >= 0
        assert variant["inference"]["eager_images_per_s"] > 0
    for name in ("config", "checkpointing", "selective"):  # adapters: merged inference measured and checked
        assert v[name]["inference"]["merged_max_abs_diff"] < 1e-4
        assert v[name]["inference"]["merged_layers"] > 0
    assert "merged_images_per_s" not in v["full"]["inference"]
    ratios = report["ratios"]
    assert set(ratios) == set(bench.TARGETS)
    speed = v["config"]["train"]["images_per_s"] / v["full"]["train"]["images_per_s"]
    assert ratios["train_speedup_vs_full"]["value"] == pytest.approx(speed)
    assert ratios["merged_inference_vs_plain"]["plain_variant"] == "decoders"
    assert all(r["met"] in (True, False, None) for r in ratios.values())


@pytest.mark.parametrize(
    "name,precision,peak",
    [
        ("NVIDIA H100 80GB HBM3", "bf16", 989.0),
        ("NVIDIA H100 PCIe", "bf16", 756.0),
        ("NVIDIA H200", "bf16", 989.0),
        ("NVIDIA H100 NVL", "bf16", 835.0),  # Lightning lists the pair of GPUs
        ("NVIDIA GH200 480GB", "fp32", 67.0),
        ("NVIDIA A100-SXM4-80GB", "bf16", 312.0),
        ("NVIDIA A100-SXM4-80GB", "fp32", 19.5),
        ("Tesla T4", "bf16", None),
    ],
)
def test_peak_table(monkeypatch, name, precision, peak):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    # Lightning asks the (absent) GPU whether fp32 matmuls may run as TF32; they may not by default
    monkeypatch.setattr("lightning.fabric.accelerators.cuda._is_ampere_or_later", lambda device=None: True)
    value, source = bench.device_peak_tflops(torch.device("cuda"), precision)
    assert value == (None if peak is None else pytest.approx(peak, rel=1e-3))
    assert (peak is None) == ("unknown" in source)
    assert bench.device_peak_tflops(torch.device("cpu"), "fp32") == (
        None,
        "unknown peak (pass --peak_tflops)",
    )
    assert bench.device_peak_tflops(torch.device("cpu"), "fp32", 1.5)[0] == 1.5


def test_summarise_targets():
    def variant(ips, mem, mfu=None, merged=None, eager=None, counted=None):
        inf = {"eager_images_per_s": eager}
        if merged is not None:
            inf["merged_images_per_s"] = merged
        return {
            "train": {"images_per_s": ips, "peak_memory_bytes": mem, "mfu": mfu},
            "inference": inf,
            "memory_kind": "cuda_max_memory_allocated" if mem is not None else "cpu_peak_rss_growth",
            "counted_peak_memory_bytes": counted,
        }

    ratios = bench.summarise(
        {
            "config": variant(12.0, 50, 0.4, merged=97.0),
            "full": variant(10.0, 100),
            "decoders": variant(20.0, 40, eager=100.0),
        },
        compiled=False,
    )
    assert ratios["train_speedup_vs_full"] == {"value": 1.2, "phase": "train", "target": 1.2, "met": True}
    assert ratios["train_memory_vs_full"]["value"] == 0.5 and ratios["train_memory_vs_full"]["met"]
    assert ratios["train_memory_vs_full"]["source"] == "measured"
    assert ratios["merged_inference_vs_plain"]["value"] == pytest.approx(0.97)
    assert ratios["train_mfu"]["met"] is True
    cpu = bench.summarise({"config": variant(1.0, None), "full": variant(2.0, None)}, compiled=False)
    assert cpu["train_memory_vs_full"]["met"] is None and cpu["train_mfu"]["met"] is None
    assert cpu["train_speedup_vs_full"]["met"] is False
    # off CUDA the memory ratio comes from the exact count
    counted = bench.summarise(
        {"config": variant(1.0, None, counted=30), "full": variant(2.0, None, counted=60)}, compiled=False
    )
    assert counted["train_memory_vs_full"] == {"value": 0.5, "source": "counted", "target": 0.6, "met": True}


def test_best_of_repeats_keeps_fastest_run_and_smallest_peak():
    def run(ips, mem, eager, diff):
        return {
            "train": {"images_per_s": ips, "step_ms": 1e3 / ips, "peak_memory_bytes": mem},
            "inference": {"eager_images_per_s": eager, "merged_max_abs_diff": diff},
        }

    best = bench.best_of([run(2.0, 300, 5.0, 1e-7), run(4.0, 200, 3.0, 2e-7), run(3.0, None, 1.0, 0.0)])
    assert best["train"] == {"images_per_s": 4.0, "step_ms": 250.0, "peak_memory_bytes": 200}
    assert best["inference"] == {"eager_images_per_s": 5.0, "merged_max_abs_diff": 2e-7}
    assert [r["train"] for r in best["runs"]] == [2.0, 4.0, 3.0]


def test_bench_count_only_counts_without_timing(tmp_path, capsys):
    """``--count_only``: FLOPs and peak memory on fake tensors, at a size the machine need not hold."""
    out = tmp_path / "count.json"
    run_cli(
        [
            "bench",
            "--config",
            str(CONFIGS / "tiny_synthetic.yaml"),
            "--batch_size",
            "64",
            "--img_size",
            "128",
            "--precision",
            "bf16",
            "--count_only",
            "true",
            "--variants",
            "[config, full]",
            "--json_out",
            str(out),
        ]
    )
    assert "counted only" in capsys.readouterr().out
    report = json.loads(out.read_text())
    v = report["variants"]
    assert "train" not in v["config"] and "inference" not in v["config"]
    assert report["settings"]["precision"] == "bf16" and report["settings"]["img_size"] == 128
    for variant in v.values():
        assert variant["counted_peak_memory_bytes"] > variant["saved_activation_bytes"] > 0
        assert variant["train_flops_per_image"] > variant["forward_flops_per_image"] > 0
    ratio = report["ratios"]["train_memory_vs_full"]
    assert ratio["source"] == "counted"
    assert ratio["value"] == pytest.approx(
        v["config"]["counted_peak_memory_bytes"] / v["full"]["counted_peak_memory_bytes"]
    )


def test_cli_variant_names_match_the_bench():
    from mtlora.training.commands import BenchVariant

    assert BenchVariant.__args__ == bench.Variant.__args__
    assert bench.BenchSettings(compile=["config"]).compiles("config")
    assert not bench.BenchSettings(compile=["config"]).compiles("full")
    assert bench.BenchSettings(compile=True).compiles("full") and not bench.BenchSettings().compiles("config")


@pytest.mark.parametrize("preset", ["cuda", "cuda-compiled", "cpu"])
def test_run_bench_presets_parse(preset, tmp_path, capsys, monkeypatch):
    """Every preset of benchmarks/run_bench.py is a valid ``mtlora bench`` command line (parsed, not run),
    so a device session does not spend its time on a typo."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "run_bench", Path(__file__).parents[1] / "benchmarks" / "run_bench.py"
    )
    run_bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_bench)
    command = run_bench.bench_command(preset, tmp_path / "out.json", [])
    args = command[command.index("bench") :]
    with pytest.raises(SystemExit) as exit_info:
        run_cli([*args, "--print_config"])
    assert exit_info.value.code in (None, 0)
    printed = capsys.readouterr().out
    assert "batch_size" in printed and "variants" in printed
    counted = run_bench.count_command(448, tmp_path / "count.json")
    with pytest.raises(SystemExit):
        run_cli([*counted[counted.index("bench") :], "--print_config"])


def test_bench_variants_that_bound_the_speed_target(tmp_path, capsys):
    """``shared_only`` removes the task streams, ``frozen_encoder`` is the floor of adapting every block.

    The speed target compares MTLoRA with full fine-tuning; these two variants say how much of the
    difference the task streams cost and how much any adapter could save at all.
    """
    out = tmp_path / "count.json"
    run_cli(
        [
            "bench",
            "--config",
            str(CONFIGS / "tiny_synthetic.yaml"),
            "--count_only",
            "true",
            "--variants",
            "[config, full, decoders, shared_only, frozen_encoder]",
            "--json_out",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    assert "flop cap" in printed and "frozen_encoder" in printed
    v = json.loads(out.read_text())["variants"]
    train = {name: variant["train_flops_per_image"] for name, variant in v.items()}
    forward = {name: variant["forward_flops_per_image"] for name, variant in v.items()}
    # the floor pays the decoders plus input gradients through every frozen block, no weight gradients
    assert train["decoders"] < train["frozen_encoder"] < train["shared_only"] < train["config"]
    assert train["frozen_encoder"] < train["full"]  # (the tiny config's own decoders outweigh its encoder)
    assert forward["frozen_encoder"] == forward["full"] == forward["decoders"]
    assert forward["full"] < forward["shared_only"] < forward["config"]  # low-rank paths; + task streams
    params = {name: variant["parameters"] for name, variant in v.items()}
    assert params["frozen_encoder"]["encoder_trainable"] > 0 == params["decoders"]["encoder_trainable"]
    assert params["shared_only"]["trainable"] < params["config"]["trainable"]


def test_shared_only_needs_a_config_with_task_streams():
    from mtlora.models.model import EncoderConfig, MultiTaskModel
    from mtlora.models.plans import AdapterConfig

    encoder = EncoderConfig(
        embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4], window_size=2, img_size=64
    )
    template = MultiTaskModel({"semseg": 5}, encoder, AdapterConfig(method="bitfit"), load_pretrained=False)
    with pytest.raises(ValueError, match="shared_only.*bitfit"):
        bench.build_variant(template, "shared_only")


_HOST_MEMORY_SCRIPT = """
import torch
from pathlib import Path
from mtlora import bench

def rss():
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024

def released_after_free():
    block = torch.ones(16 * 2**20)  # 64 MiB, above glibc's largest mmap threshold
    before = rss()
    del block
    return before - rss()

outside = released_after_free()  # first, in a fresh process: glibc's defaults
with bench.host_memory_kept(torch.device("cpu")) as how:
    inside = released_after_free()
print(outside, inside, how is not None)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_host_memory_kept_retains_large_blocks():
    """Inside, a freed 64 MiB block stays resident (no page faults to time on reuse); glibc's default unmaps it.

    In a fresh process: once a process has kept such a block, glibc reuses it, whatever the settings.
    """
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, "-c", _HOST_MEMORY_SCRIPT], capture_output=True, text=True, check=True
    )
    outside, inside, changed = run.stdout.split()
    if changed != "True":
        pytest.skip("not glibc")
    assert int(outside) > 56 * 2**20 and int(inside) < 8 * 2**20
    with bench.host_memory_kept(torch.device("meta")) as how:
        assert how is None  # only CPU timings are affected


def test_counting_keeps_dropout_masks_of_one_byte_like_cuda():
    """The counted model's dropout keeps CUDA's bool mask (a CPU's ``F.dropout`` keeps float noise)."""
    x = torch.ones(200_000, requires_grad=True)
    model = bench.count_dropout_as_cuda(torch.nn.Sequential(torch.nn.Dropout(0.2)))
    drop = model[0]
    assert isinstance(drop, bench.MaskDropout) and drop.p == 0.2
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = drop(x)
    assert [t.dtype for t in saved] == [torch.bool]
    assert abs(float((y == 0).float().mean()) - 0.2) < 0.01
    assert float(y.detach().max()) == pytest.approx(1 / 0.8)
    y.sum().backward()
    torch.testing.assert_close(x.grad, (y != 0).float() / 0.8)
    drop.eval()
    assert drop(x) is x
