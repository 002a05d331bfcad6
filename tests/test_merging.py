"""Merging adapters for inference: merged == unmerged, unmerge restores, the cost-based layout."""

import pytest
import torch

from mtlora.models.lora import LoRASpec, MultiPathLoRALinear
from mtlora.models.merging import is_merged, merge_model, unmerge_model
from mtlora.models.model import MultiTaskModel
from mtlora.models.plans import AdapterConfig

from conftest import PASCAL_CHANNELS, randomize_lora, tiny_encoder

GROUPS = [["semseg", "human_parts"], ["sal", "normals"]]
ADAPTERS = {
    "mtlora": AdapterConfig(shared_rank=4, task_rank=2),
    "mtlora_plus": AdapterConfig(shared_rank=4, task_rank=None, patch_merging=True),
    "mtlora_matrixv2": AdapterConfig(shared_rank=4, task_rank=2, shared_mode="matrixv2"),
    "progressive": AdapterConfig(
        shared_rank=4,
        task_rank=2,
        method="progressive",
        groups=["shared", "shared", GROUPS, "tasks"],
        split_block=[None, None, 1, 0],
    ),
    "per_task": AdapterConfig(shared_rank=4, task_rank=2, plan=["shared", "tasks", "tasks", "tasks"]),
}


def build(adapter: AdapterConfig, seed: int = 0) -> MultiTaskModel:
    torch.manual_seed(seed)
    model = MultiTaskModel(PASCAL_CHANNELS, tiny_encoder(), adapter).eval()
    randomize_lora(model, std=0.1)
    return model


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_merged_equals_unmerged_and_unmerge_restores(name):
    model = build(ADAPTERS[name])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        report = merge_model(model)
        assert is_merged(model)
        merged = model(x)
    for task in PASCAL_CHANNELS:
        torch.testing.assert_close(merged[task], ref[task], atol=1e-5, rtol=1e-5)
    # the merge changed weights (otherwise the comparison above proves nothing)
    changed = [k for k, v in model.state_dict().items() if k in before and not torch.equal(v, before[k])]
    assert changed
    unmerge_model(model)
    assert not is_merged(model)
    after = model.state_dict()
    assert set(after) == set(before)  # stacked stream weights are gone again
    for key, value in before.items():
        torch.testing.assert_close(after[key], value, atol=1e-6, rtol=0, msg=key)
    with torch.no_grad():
        again = model(x)
    for task in PASCAL_CHANNELS:
        torch.testing.assert_close(again[task], ref[task], atol=1e-6, rtol=1e-6)
    if name == "mtlora_plus":
        assert "backbone.layers.0.downsample.reduction" in report.shared


def test_merge_layout_follows_block_kind():
    """Branch blocks keep low-rank task paths, stream blocks get stacked dense weights."""
    mtlora = build(ADAPTERS["mtlora"])
    report = merge_model(mtlora)
    assert report.stream_paths == []
    assert "backbone.layers.1.blocks.1.mlp.fc1" in report.low_rank_paths
    assert "backbone.layers.1.blocks.0.attn.qkv" in report.shared
    assert all(m.merged_paths_weight is None for m in mtlora.modules() if isinstance(m, MultiPathLoRALinear))

    progressive = build(ADAPTERS["progressive"])
    report = merge_model(progressive)
    assert report.low_rank_paths == []
    assert "backbone.layers.3.blocks.0.attn.qkv" in report.stream_paths
    layer = progressive.backbone.layers[2].blocks[1].mlp.fc2
    assert layer.merged_paths_weight.shape == (2, 64, 256)  # (groups, out, in)
    assert "backbone.layers.2.blocks.1.mlp.fc2.merged_paths_weight" in progressive.state_dict()
    assert merge_model(progressive).stream_paths == report.stream_paths  # idempotent


def test_merged_streams_layer_equals_dense_per_path_weights():
    torch.manual_seed(0)
    layer = MultiPathLoRALinear(
        torch.nn.Linear(12, 10), LoRASpec(0, ("a", "b", "c"), 3, path_scale=2.0)
    ).eval()
    torch.nn.init.normal_(layer.lora_paths_B, std=0.3)
    xs = torch.randn(3, 2, 5, 12)
    with torch.no_grad():
        ref = layer.forward_streams(xs)
        layer.merge_paths()
        out = layer.forward_streams(xs)
    for p in range(3):
        dense = layer.linear.weight + 2.0 * layer.lora_paths_B[p] @ layer.lora_paths_A[p]
        torch.testing.assert_close(out[p], xs[p] @ dense.T + layer.linear.bias, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_fused_shared_update_equals_separate_terms():
    torch.manual_seed(0)
    layer = MultiPathLoRALinear(torch.nn.Linear(8, 6), LoRASpec(4, shared_scale=3.0)).eval()
    torch.nn.init.normal_(layer.lora_shared_B)
    x = torch.randn(2, 7, 8)
    base = layer.linear(x)
    torch.testing.assert_close(layer.add_shared(base, x), base + layer.shared_delta(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        layer.add_shared(base, x, sign=-1.0), base - layer.shared_delta(x), atol=1e-5, rtol=1e-5
    )
