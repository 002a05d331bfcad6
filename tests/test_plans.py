"""Sharing plans: validation, stream-tree shapes and equivalence of the special cases."""

import copy

import pytest
import torch

from mtlora.models.lora import MultiPathLoRALinear
from mtlora.models.model import MultiTaskModel
from mtlora.models.plans import AdapterConfig

from conftest import PASCAL_CHANNELS, randomize_lora, tiny_encoder

TASKS = list(PASCAL_CHANNELS)
GROUPS = [["semseg", "human_parts"], ["sal", "normals"]]


def build(seed=0, **adapter):
    torch.manual_seed(seed)
    return MultiTaskModel(
        PASCAL_CHANNELS, tiny_encoder(), AdapterConfig(shared_rank=4, task_rank=2, **adapter)
    ).eval()


def test_explicit_mtlora_plan_equals_mtlora_model():
    ref = build()
    randomize_lora(ref)
    explicit = build(plan=[["shared", "branch"]] * 4)
    explicit.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a, b = ref(x), explicit(x)
    for t in TASKS:
        torch.testing.assert_close(a[t], b[t], atol=0, rtol=0)


def test_task_agnostic_plan_equals_lora_only_mode():
    a = build(shared_mode="lora_only")
    b = build(plan=["shared"] * 4)
    assert set(a.state_dict()) == set(b.state_dict())
    randomize_lora(a)
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(a(x)["sal"], b(x)["sal"], atol=0, rtol=0)


def test_stream_tree_shapes_and_routes():
    model = build(
        method="progressive", groups=["shared", "shared", GROUPS, "tasks"], split_block=[None, None, 1, 0]
    )
    kinds = [[blk.kind for blk in stage.blocks] for stage in model.backbone.layers]
    assert kinds == [
        ["shared", "shared"],
        ["shared", "shared"],
        ["shared", "streams"],
        ["streams", "streams"],
    ]
    feats = model.backbone(torch.randn(2, 3, 64, 64))
    assert [f.shape[0] for f in feats] == [1, 1, 2, 4]  # shared, shared, 2 groups, 4 tasks
    assert model.plan.stage_task_streams == [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 1], [0, 1, 2, 3]]
    assert model.backbone.layers[2].blocks[1].stream_route.tolist() == [0, 0]
    assert model.backbone.layers[3].blocks[0].stream_route.tolist() == [0, 0, 1, 1]
    assert model.backbone.layers[3].blocks[1].stream_route is None
    qkv = model.backbone.layers[2].blocks[1].attn.qkv
    assert qkv.path_names == ("semseg+human_parts", "sal+normals") and qkv.shared_rank == 0


def merged_plain_block(blk, path):
    """The block as a plain Swin block whose adapted weights have path ``path`` merged in."""
    plain = copy.deepcopy(blk)
    for name, layer in list(plain.named_modules()):
        if isinstance(layer, MultiPathLoRALinear):
            lin = layer.linear
            with torch.no_grad():
                lin.weight += layer.path_scale * layer.lora_paths_B[path] @ layer.lora_paths_A[path]
            parent, _, attr = name.rpartition(".")
            setattr(plain.get_submodule(parent), attr, lin)
    plain.kind = "shared"
    return plain


def test_stream_block_equals_per_stream_reference():
    model = build(plan=["shared", "shared", "shared", "tasks"])
    randomize_lora(model)
    blk = model.backbone.layers[3].blocks[0]
    xs = torch.randn(4, 2, 2, 2, 128)
    with torch.no_grad():
        out = blk.forward_streams(xs)
        for p in range(4):
            torch.testing.assert_close(out[p], merged_plain_block(blk, p)(xs[p]), atol=1e-5, rtol=1e-5)


def test_per_task_plan_streams_are_independent():
    model = build(plan=["tasks"] * 4)
    randomize_lora(model)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        model.backbone.layers[0].blocks[0].mlp.fc1.lora_paths_B[TASKS.index("sal")].mul_(3)
        after = model(x)
    assert not torch.allclose(before["sal"], after["sal"])
    for t in ("semseg", "human_parts", "normals"):
        torch.testing.assert_close(before[t], after[t], atol=0, rtol=0)


@pytest.mark.parametrize(
    "plan,message",
    [
        (["shared"] * 3, "expected 4 stages"),
        ([["shared"]] + ["shared"] * 3, "stage 0 has 2 blocks"),
        (["shared", "shared", [["semseg"], ["sal", "normals"]], "tasks"], "missing \\['human_parts'\\]"),
        (
            ["shared", "shared", [["semseg", "semseg", "human_parts"], ["sal", "normals"]], "tasks"],
            "in several groups",
        ),
        (
            ["shared", "shared", [["semseg", "human_parts", "depth"], ["sal", "normals"]], "tasks"],
            "unknown \\['depth'\\]",
        ),
        (
            ["shared", "shared", [[], ["semseg", "human_parts", "sal", "normals"]], "tasks"],
            "empty task group",
        ),
        (["shared", "tasks", GROUPS, "tasks"], "do not refine"),
        (["shared", "tasks", "shared", "shared"], "after the streams split"),
        (["shared", "mystery", "shared", "shared"], "expected 'shared', 'branch', 'tasks'"),
    ],
)
def test_plan_validation_errors(plan, message):
    with pytest.raises(ValueError, match=message):
        build(plan=plan)


def test_progressive_split_block_outside_stage():
    with pytest.raises(ValueError, match="outside stage 2"):
        build(
            method="progressive",
            groups=["shared", "shared", GROUPS, "tasks"],
            split_block=[None, None, 5, None],
        )
