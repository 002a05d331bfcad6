"""Numerical oracle: our Swin encoder equals timm's SwinTransformer on the same weights.

timm 1.x stores patch merging at the start of stage i+1, we at the end of stage i, so our
stage-i features (taken after merging, as the official MTLoRA code does) correspond to
``timm.layers[i + 1].downsample(timm stage-i output)``; the last stage has no merging.
Weights are randomised with large relative position biases and non-trivial LayerNorms, so a
wrong shift mask, window order or merging order would show.
"""

from __future__ import annotations

import pytest
import torch
from timm.models.swin_transformer import SwinTransformer

from mtlora.io.checkpoints import convert_timm_swin, load_pretrained_backbone
from mtlora.models.plans import AdapterConfig, apply_plan
from mtlora.models.swin import SwinConfig, SwinEncoder

# Stage grids for 64 px / patch 4: 16, 8, 4, 2.
CASES = {
    # window 4: shifted windows in stages 0-1, stage 2 grid == window (no shift), stage 3 window clamped to 2
    "window4": dict(img_size=64, window_size=4, embed_dim=24, depths=(2, 2, 2, 2), num_heads=(1, 2, 3, 4)),
    # window 2, deeper stage 2: shifts in stages 0-2 (two shifted blocks in stage 2), stage 3 grid == window
    "window2_deep": dict(
        img_size=64, window_size=2, embed_dim=16, depths=(2, 2, 4, 2), num_heads=(1, 2, 2, 4)
    ),
}


def make_timm(case: dict, seed: int = 0) -> SwinTransformer:
    torch.manual_seed(seed)
    model = SwinTransformer(patch_size=4, drop_path_rate=0.0, num_classes=7, **case).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("relative_position_bias_table"):
                p.normal_(0.0, 1.0)  # large biases: attention patterns depend on the index layout
            elif "norm" in name and name.endswith("weight"):
                p.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.1)
    return model


def timm_stage_features(model: SwinTransformer, image: torch.Tensor) -> list[torch.Tensor]:
    """timm outputs re-cut at our stage boundaries (after merging, NHWC)."""
    x = model.patch_embed(image)
    outs = []
    for layer in model.layers:
        x = layer(x)
        outs.append(x)
    return [model.layers[i + 1].downsample(outs[i]) for i in range(len(outs) - 1)] + [outs[-1]]


def our_config(case: dict) -> SwinConfig:
    return SwinConfig(patch_size=4, drop_path_rate=0.0, **case)


def assert_layout_exercised(encoder: SwinEncoder, case: dict) -> None:
    """The case really has shifted blocks and a stage whose grid equals its window."""
    shifts = [blk.shift for _, _, blk in encoder.blocks()]
    assert any(shifts)
    assert any(blk.res == blk.window_size and blk.shift == 0 for _, _, blk in encoder.blocks())
    assert encoder.layers[0].blocks[1].shift == case["window_size"] // 2


@pytest.mark.parametrize("case", list(CASES))
def test_plain_encoder_matches_timm(case):
    timm_model = make_timm(CASES[case])
    encoder = SwinEncoder(our_config(CASES[case])).eval()
    result = encoder.load_state_dict(convert_timm_swin(timm_model.state_dict()), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert_layout_exercised(encoder, CASES[case])

    image = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours = encoder(image)
        ref = timm_stage_features(timm_model, image)
    assert len(ours) == len(ref) == 4
    for i, (o, r) in enumerate(zip(ours, ref)):
        assert o.shape == (1, *r.shape), f"stage {i}"
        torch.testing.assert_close(o[0], r, atol=1e-5, rtol=1e-5, msg=f"stage {i}")


@pytest.mark.parametrize("patch_merging", [False, True], ids=["mtlora", "mtlora_plus"])
def test_zero_init_adapters_match_timm(tmp_path, patch_merging):
    """Adapters injected first, weights loaded from a timm file after: B = 0 => every task stream equals timm."""
    case = CASES["window4"]
    timm_model = make_timm(case, seed=1)
    path = tmp_path / "swin_timm.pth"
    torch.save(timm_model.state_dict(), path)

    encoder = SwinEncoder(our_config(case))
    tasks = ["semseg", "normals", "sal"]
    apply_plan(encoder, AdapterConfig(shared_rank=4, task_rank=2, patch_merging=patch_merging), tasks)
    report = load_pretrained_backbone(encoder, path)
    encoder.eval()

    assert report.source_format == "timm"
    assert not report.missing and not report.unexpected and not report.mismatched
    assert report.kept_init and all(".lora_" in k for k in report.kept_init)
    assert "layers.0.blocks.0.attn.qkv.linear.weight" in report.loaded
    merging = (
        "layers.0.downsample.reduction.linear.weight"
        if patch_merging
        else "layers.0.downsample.reduction.weight"
    )
    assert report.renamed[merging] == "layers.1.downsample.reduction.weight"

    image = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours = encoder(image)
        ref = timm_stage_features(timm_model, image)
    for i, (o, r) in enumerate(zip(ours, ref)):
        assert o.shape[0] == len(tasks), f"stage {i}: one stream per task"
        for s in range(len(tasks)):
            torch.testing.assert_close(o[s], r, atol=1e-5, rtol=1e-5, msg=f"stage {i}, stream {s}")
