"""MultiTaskModel: parameter counts, zero-init equivalence, MTLoRA stream semantics, shapes."""

import copy

import pytest
import torch
import torch.nn.functional as F

from mtlora.models.lora import MultiPathLoRALinear
from mtlora.models.model import EncoderConfig, MultiTaskModel, parameter_counts
from mtlora.models.plans import AdapterConfig, apply_plan
from mtlora.models.swin import SwinEncoder

from conftest import PASCAL_CHANNELS, randomize_lora, tiny_encoder

# trainable counts of the official models (Swin-T, 448, 4 PASCAL tasks)
OFFICIAL_TRAINABLE = {
    "r16": (AdapterConfig(shared_rank=16, task_rank=4), 4_953_146, 30_871_418),
    "r32": (AdapterConfig(shared_rank=32, task_rank=4), 6_083_642, 32_001_914),
    "r64": (AdapterConfig(shared_rank=64, task_rank=4), 8_344_634, 34_262_906),
    "plus_r4": (AdapterConfig(shared_rank=4, task_rank=None, patch_merging=True), 2_573_114, 30_039_674),
    "plus_r8": (AdapterConfig(shared_rank=8, task_rank=None, patch_merging=True), 3_148_346, 30_614_906),
    "plus_r16": (AdapterConfig(shared_rank=16, task_rank=None, patch_merging=True), 4_298_810, 31_765_370),
    "plus_r16_pertask": (
        AdapterConfig(shared_rank=16, task_rank=4, patch_merging=True),
        3_469_370,
        30_935_930,
    ),
}


@pytest.mark.parametrize("name", list(OFFICIAL_TRAINABLE))
def test_official_parameter_counts(name):
    adapter, trainable, total = OFFICIAL_TRAINABLE[name]
    counts = parameter_counts(MultiTaskModel(PASCAL_CHANNELS, EncoderConfig(), adapter))
    assert counts["trainable"] == trainable
    assert counts["total"] == total
    assert counts["decoder_trainable"] == 1_946_624


def test_decoders_only_and_full_counts():
    dec = parameter_counts(MultiTaskModel(PASCAL_CHANNELS, EncoderConfig(), AdapterConfig(method="decoders")))
    assert dec["trainable"] == 1_946_624 and dec["encoder_trainable"] == 0
    full = parameter_counts(MultiTaskModel(PASCAL_CHANNELS, EncoderConfig(), AdapterConfig(method="full")))
    assert full["trainable"] == full["total"]


def test_trainable_set_rules_mtlora_and_plus():
    model = MultiTaskModel(PASCAL_CHANNELS, tiny_encoder(), AdapterConfig(shared_rank=4, task_rank=2))
    trainable = {n for n, p in model.backbone.named_parameters() if p.requires_grad}
    frozen = {n for n, p in model.backbone.named_parameters() if not p.requires_grad}
    assert "layers.0.blocks.0.attn.qkv.lora_shared_A" in trainable
    assert "layers.0.blocks.1.attn.proj.lora_paths_B" in trainable
    assert "layers.0.downsample.reduction.weight" in trainable  # MTLoRA: dense merging trained
    assert {
        "patch_embed.proj.weight",
        "patch_embed.norm.weight",
        "layers.0.blocks.0.norm1.bias",
        "layers.0.downsample.norm.weight",
        "layers.1.blocks.0.attn.relative_position_bias_table",
    } <= trainable
    assert {
        "layers.0.blocks.0.attn.qkv.linear.weight",
        "layers.0.blocks.0.attn.qkv.linear.bias",
        "layers.2.blocks.1.mlp.fc2.linear.bias",
    } <= frozen
    assert not any("lora_paths" in n for n in trainable if ".blocks.0." in n)  # TS only in the last block
    assert not any(n.endswith("qkv.lora_paths_A") for n in trainable)  # qkv never task-specific
    assert all(p.requires_grad for p in model.decoder.parameters())

    plus = MultiTaskModel(PASCAL_CHANNELS, tiny_encoder(), AdapterConfig(shared_rank=4, patch_merging=True))
    names = {n: p.requires_grad for n, p in plus.backbone.named_parameters()}
    assert (
        names["layers.0.downsample.reduction.lora_shared_A"]
        and not names["layers.0.downsample.reduction.linear.weight"]
    )


def test_zero_init_adapters_equal_plain_encoder():
    torch.manual_seed(0)
    plain = SwinEncoder(tiny_encoder().swin_config()).eval()
    adapted = copy.deepcopy(plain)
    apply_plan(adapted, AdapterConfig(shared_rank=4, task_rank=2, patch_merging=True), list(PASCAL_CHANNELS))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref, out = plain(x), adapted.eval()(x)
    for r, o in zip(ref, out):
        assert o.shape[0] == len(PASCAL_CHANNELS) and r.shape[0] == 1
        torch.testing.assert_close(o, r.expand_as(o), atol=1e-5, rtol=1e-5)


def reference_branch_block(blk, x, tasks):
    """Straightforward per-task loop (official data flow of docs/official_implementation.md, matrix mode)."""

    def lora(layer, inp, t):
        return layer.path_scale * inp @ layer.lora_paths_A[t].T @ layer.lora_paths_B[t].T

    a = blk._attention(x, blk.attn.qkv)
    proj, fc1, fc2 = blk.attn.proj, blk.mlp.fc1, blk.mlp.fc2
    y = proj(a)
    x1 = x + y
    h = fc1(blk.norm2(x1))
    x2 = x1 + fc2(F.gelu(h))
    outs = []
    for t in range(len(tasks)):
        y_t = proj.linear(a) + lora(proj, a, t)
        x1_t = x + y_t
        h_t = fc1.linear(blk.norm2(x1)) + lora(fc1, blk.norm2(x1_t), t)  # frozen fc1 reads the SHARED input
        o_t = fc2.linear(F.gelu(h)) + lora(fc2, F.gelu(h_t), t)  # frozen fc2 reads the SHARED input
        outs.append(x1_t + o_t)
    return x2, torch.stack(outs)


def test_branch_block_matches_per_task_reference():
    torch.manual_seed(0)
    model = MultiTaskModel(PASCAL_CHANNELS, tiny_encoder(), AdapterConfig(shared_rank=4, task_rank=2)).eval()
    randomize_lora(model)
    blk = model.backbone.layers[1].blocks[1]
    assert blk.kind == "branch" and blk.attn.proj.path_names == tuple(PASCAL_CHANNELS)
    x = torch.randn(2, 8, 8, 32)  # stage 1 of the tiny encoder: 8x8 grid, 32 channels
    with torch.no_grad():
        shared, tasks = blk.forward_branch(x)
        ref_shared, ref_tasks = reference_branch_block(blk, x, list(PASCAL_CHANNELS))
    torch.testing.assert_close(shared, ref_shared, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tasks, ref_tasks, atol=1e-5, rtol=1e-5)


def test_task_streams_feed_decoders_not_later_stages():
    torch.manual_seed(0)
    model = MultiTaskModel(PASCAL_CHANNELS, tiny_encoder(), AdapterConfig(shared_rank=4, task_rank=2)).eval()
    randomize_lora(model)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        feats = model.backbone(x)
        # zeroing a task path of stage 0 changes that task's stage-0 feature only
        model.backbone.layers[0].blocks[1].mlp.fc2.lora_paths_B[0].zero_()
        feats2 = model.backbone(x)
    assert not torch.allclose(feats[0][0], feats2[0][0])
    torch.testing.assert_close(feats[0][1:], feats2[0][1:])
    for k in (1, 2, 3):  # later stages consume only the shared stream
        torch.testing.assert_close(feats[k], feats2[k])


def test_output_shapes_and_gradients_small():
    model = MultiTaskModel({**PASCAL_CHANNELS, "edge": 1, "depth": 1}, tiny_encoder(drop_path_rate=0.1))
    out = model(torch.randn(2, 3, 64, 64))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "semseg": (2, 21, 64, 64),
        "human_parts": (2, 7, 64, 64),
        "sal": (2, 1, 64, 64),
        "normals": (2, 3, 64, 64),
        "edge": (2, 1, 64, 64),
        "depth": (2, 1, 64, 64),
    }
    sum(v.mean() for v in out.values()).backward()
    for name, p in model.named_parameters():
        if p.requires_grad and "lora_" not in name:
            assert p.grad is not None, name
        if not p.requires_grad:
            assert p.grad is None, name


def test_output_shapes_at_448_swin_tiny():
    model = MultiTaskModel(PASCAL_CHANNELS, EncoderConfig(drop_path_rate=0.0)).eval()
    with torch.no_grad():
        feats = model.backbone(torch.randn(1, 3, 448, 448))
        assert [tuple(f.shape) for f in feats] == [
            (4, 1, 56, 56, 192),
            (4, 1, 28, 28, 384),
            (4, 1, 14, 14, 768),
            (4, 1, 14, 14, 768),
        ]
        out = model.decoder(feats, model.plan.stage_task_streams, (448, 448))
    assert out["semseg"].shape == (1, 21, 448, 448) and out["normals"].shape == (1, 3, 448, 448)


@pytest.mark.parametrize("mode", ["matrixv2", "addition", "lora_only"])
def test_other_shared_modes_run(mode):
    model = MultiTaskModel(
        PASCAL_CHANNELS, tiny_encoder(), AdapterConfig(shared_rank=4, task_rank=2, shared_mode=mode)
    )
    out = model(torch.randn(1, 3, 64, 64))
    assert out["semseg"].shape == (1, 21, 64, 64)
    has_paths = any(isinstance(m, MultiPathLoRALinear) and m.num_paths for m in model.modules())
    assert has_paths == (mode != "lora_only")


def test_bad_configuration_errors():
    with pytest.raises(ValueError, match="unknown task 'segm'"):
        MultiTaskModel({"segm": 3}, tiny_encoder())
    with pytest.raises(ValueError, match="shared_rank must be a positive"):
        MultiTaskModel(PASCAL_CHANNELS, tiny_encoder(), AdapterConfig(shared_rank=0))
    with pytest.raises(ValueError, match="not divisible by window_size"):
        MultiTaskModel(PASCAL_CHANNELS, EncoderConfig(img_size=512))
    with pytest.raises(ValueError, match="unknown layer names"):
        MultiTaskModel(PASCAL_CHANNELS, tiny_encoder(), AdapterConfig(targets=["qkv", "fc3"]))
    model = MultiTaskModel(PASCAL_CHANNELS, tiny_encoder())
    with pytest.raises(ValueError, match="built for 64x64"):
        model(torch.randn(1, 3, 32, 32))


@pytest.mark.parametrize(
    "img_size,window_size", [(60, 2), (100, 2), (230, 7), (500, 7), (30, 2), (4, 2), (100, 3)]
)
def test_image_size_hint_suggests_sizes_that_build(img_size, window_size):
    """The error for a size the windows do not fit lists the nearest sizes, and each of them works."""
    import re

    with pytest.raises(ValueError, match=rf"img_size {img_size}: .*Image sizes that work") as err:
        MultiTaskModel({"sal": 1}, tiny_encoder(img_size=img_size, window_size=window_size))
    suggested = [int(s) for s in re.findall(r"\d+", str(err.value).rsplit(":", 1)[1])]
    assert any(s > img_size for s in suggested)
    if img_size > 64:  # above the smallest working size there is one below too
        assert any(s < img_size for s in suggested)
    for size in suggested:
        model = MultiTaskModel({"sal": 1}, tiny_encoder(img_size=size, window_size=window_size)).eval()
        with torch.no_grad():
            assert model(torch.randn(1, 3, size, size))["sal"].shape == (1, 1, size, size)


def test_from_config_inverts_config_dict_and_names_unknown_options():
    model = MultiTaskModel(
        {"semseg": 5, "depth": 1}, tiny_encoder(), AdapterConfig(shared_rank=2, task_rank=1)
    )
    rebuilt = MultiTaskModel.from_config(model.config_dict())
    assert rebuilt.config_dict() == model.config_dict()
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }
    bad = {**model.config_dict(), "adapter": {**model.config_dict()["adapter"], "shared_rnak": 4}}
    with pytest.raises(ValueError, match=r"run.json: AdapterConfig: unknown options \['shared_rnak'\]"):
        MultiTaskModel.from_config(bad, where="run.json: ")
