"""The paper's ablation configs (Tables 2, 3, Figs. 4, 5): trainable counts equal the official model's.

The official MTLoRA code switches layers off with ``QKV/PROJ/FC1/FC2_ENABLED`` (the layer becomes a
plain frozen Linear: no shared and no task-specific low-rank pair) and freezes modules with
``TRAIN.FREEZE_*`` (parameter-name substrings: ``patch_embed`` freezes the patch-embedding
convolution only, since its LayerNorm matches ``norm`` and stays with the norms).  The expected
counts below are derived from the Swin-T shapes, not copied from a run.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mtlora.experiments import PUBLISHED_TABLE2, PUBLISHED_TABLE3, experiment
from mtlora.models.model import EncoderConfig, MultiTaskModel, parameter_counts
from mtlora.models.plans import AdapterConfig

from conftest import PASCAL_CHANNELS, summary_json

REPO = Path(__file__).parents[1]

# Swin-T: stage widths C and blocks per stage; the last block of each stage has task paths
C, DEPTHS, HEADS = (96, 192, 384, 768), (2, 2, 6, 2), (3, 6, 12, 24)
R, R_TASK, T = 64, 4, 4
SUM_C = sum(c * d for c, d in zip(C, DEPTHS))  # sum of block widths over all 12 blocks
SUM_C_TS = sum(C)  # one task-specific block per stage
# per layer: (in + out) / C of qkv (C -> 3C), proj (C -> C), fc1 (C -> 4C), fc2 (4C -> C)
IO = {"qkv": 4, "proj": 2, "fc1": 5, "fc2": 5}
R64 = 8_344_634  # the official r=64 model (Table 1's 8.34M): decoders 1,946,624 + encoder 6,398,010


def lora_params(layer: str) -> int:
    shared = R * IO[layer] * SUM_C
    task = 0 if layer == "qkv" else T * R_TASK * IO[layer] * SUM_C_TS  # qkv never has task paths
    return shared + task


FROZEN = {
    "patch_embed": 3 * C[0] * 4 * 4 + C[0],  # 4x4 conv, stride 4 (its norm trains with the norms)
    "layer_norm": 2 * 2 * SUM_C + 2 * 4 * sum(C[:3]),  # norm1/norm2 of every block + merging norms (4C)
    "position_bias": (2 * 7 - 1) ** 2 * sum(h * d for h, d in zip(HEADS, DEPTHS)),
    "patch_merging": sum(4 * c * 2 * c for c in C[:3]),  # 4C -> 2C reductions, no bias
}
EXPECTED = {
    **{f"table2_no_{layer}": R64 - lora_params(layer) for layer in IO},
    **{f"table3_freeze_{what}": R64 - n for what, n in FROZEN.items()},
}


def test_expected_counts_are_the_papers_to_two_decimals():
    # Table 2 prints truncated millions, Table 3 rounded ones
    for layer in IO:
        assert int(EXPECTED[f"table2_no_{layer}"] / 1e4) / 100 == PUBLISHED_TABLE2[f"No {layer}"][1]
    for what in FROZEN:
        published = PUBLISHED_TABLE3[f"Freeze {what.replace('_', ' ')}"][1]
        assert round(EXPECTED[f"table3_freeze_{what}"] / 1e6, 2) == published


@pytest.mark.parametrize("name", list(EXPECTED))
def test_summary_prints_the_official_count_of_each_ablation(name, tmp_path):
    result = summary_json(REPO / "configs" / "ablations" / f"{name}.yaml", tmp_path)
    assert result["parameters"]["trainable"] == EXPECTED[name]
    paper = result["paper"]
    assert paper["table"] == ("Table 2" if name.startswith("table2") else "Table 3")
    assert abs(paper["paper_m"] - EXPECTED[name] / 1e6) < 0.01 and paper["note"] == "matches the paper"


def _count(config: str, tasks: list[str]) -> int:
    section = yaml.safe_load((REPO / config).read_text())["model"]
    model = MultiTaskModel(
        {t: PASCAL_CHANNELS[t] for t in tasks},
        EncoderConfig(arch=section["encoder"]["arch"]),
        AdapterConfig(**section["adapter"]),
        load_pretrained=False,
    )
    return parameter_counts(model)["trainable"]


def test_fig5_swin_base_counts():
    # Swin-B: C = 128/256/512/1024, depths 2-2-18-2, heads 4-8-16-32
    c, depths, heads = (128, 256, 512, 1024), (2, 2, 18, 2), (4, 8, 16, 32)
    sum_c = sum(a * d for a, d in zip(c, depths))
    decoders = 4 * (18 * 2 * c[0] + 36 * 4 * c[0] + 72 * 8 * c[0] + 144 * 8 * c[0]) + 1_213_952
    outside = (
        3 * c[0] * 16
        + c[0]
        + 2 * c[0]  # patch embedding conv + its norm
        + 4 * sum_c
        + 8 * sum(c[:3])  # layer norms
        + 169 * sum(h * d for h, d in zip(heads, depths))  # position bias
        + sum(8 * x * x for x in c[:3])  # dense patch-merging reductions
    )
    for r in (16, 32):
        lora = r * 16 * sum_c + 4 * 4 * 12 * sum(c)  # shared on 4 layers + task paths on proj/fc1/fc2
        assert _count(f"configs/ablations/fig5_swin_base_r{r}.yaml", list(PASCAL_CHANNELS)) == (
            decoders + outside + lora
        )
    assert (decoders + outside + 16 * 16 * sum_c + 16 * 12 * sum(c)) == 8_517_560
    # single task: the whole Swin-B encoder (87.3M with the semseg decoder) trains
    assert _count("configs/ablations/fig5_single_task_swin_base.yaml", ["semseg"]) == 87_302_941


def test_experiments_list_existing_configs_and_unique_run_names():
    for name in ("table1", "table2", "table3", "fig4", "fig5"):
        exp = experiment(name)
        names = [r.name for r in exp.runs]
        assert len(set(names)) == len(names)
        for run in exp.runs:
            assert (REPO / run.config).is_file(), run.config
    fig4 = experiment("fig4")
    assert sorted({(r.series, r.x) for r in fig4.runs}) == sorted(
        (s, r) for s in ("task-agnostic", "task-specific") for r in (4, 8, 16, 32, 64)
    )
    with pytest.raises(ValueError, match="--experiment: unknown 'table9'"):
        experiment("table9")


@pytest.mark.parametrize("rank", [4, 32])
def test_fig4_counts_task_specific_vs_task_agnostic(rank):
    # outside the blocks: patch embedding 4,896 + norms 23,040 + position bias 23,322 + merging 1,548,288
    base = 1_946_624 + 4_896 + 23_040 + 23_322 + 1_548_288
    shared = rank * 16 * SUM_C  # (in + out) of qkv, proj, fc1, fc2 = 16 C per block
    task = T * R_TASK * (2 + 5 + 5) * SUM_C_TS  # proj, fc1, fc2 paths in the 4 task-specific blocks
    expected = {"task-specific": base + shared + task, "task-agnostic": base + shared}
    for run in experiment("fig4").runs:
        if run.x != rank:
            continue
        section = yaml.safe_load((REPO / run.config).read_text())["model"]
        adapter = AdapterConfig(
            **{
                **section["adapter"],
                "shared_rank": int(run.args[run.args.index("--model.adapter.shared_rank") + 1]),
            }
        )
        model = MultiTaskModel(PASCAL_CHANNELS, EncoderConfig(), adapter, load_pretrained=False)
        assert parameter_counts(model)["trainable"] == expected[run.series], run.name
    if rank == 32:
        assert expected["task-specific"] == 6_083_642  # Table 1's MTLoRA r=32 (6.08M)
