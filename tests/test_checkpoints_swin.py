"""ImageNet Swin weights: Microsoft release files, timm files and ``timm:<name>``, written here in the real formats."""

from __future__ import annotations

import logging

import pytest
import safetensors.torch
import timm
import torch
from timm.models.swin_transformer import SwinTransformer

from mtlora.io.checkpoints import (
    CheckpointError,
    convert_microsoft_swin,
    convert_swin_checkpoint,
    convert_timm_swin,
    detect_swin_format,
    load_pretrained_backbone,
    resize_relative_position_bias_table,
)
from mtlora.models.model import MultiTaskModel
from mtlora.models.plans import AdapterConfig
from mtlora.models.swin import SwinEncoder

from conftest import tiny_encoder

TASKS = {"semseg": 21, "normals": 3}
IMAGE = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def encoder(seed: int = 0, **overrides) -> SwinEncoder:
    torch.manual_seed(seed)
    return SwinEncoder(tiny_encoder(**overrides).swin_config()).eval()


def microsoft_release(enc: SwinEncoder, num_classes: int = 10) -> dict:
    """``{"model": state dict}`` as the Microsoft release stores it: plus buffers, final norm and head."""
    sd = {k: v.clone() for k, v in enc.state_dict().items()}
    for i, j, blk in enc.blocks():
        sd[f"layers.{i}.blocks.{j}.attn.relative_position_index"] = blk.attn.relative_position_index.clone()
        if blk.shift_mask is not None:
            sd[f"layers.{i}.blocks.{j}.attn_mask"] = blk.shift_mask.clone()
    width = enc.layers[-1].blocks[0].dim
    sd.update(
        {
            "norm.weight": torch.ones(width),
            "norm.bias": torch.zeros(width),
            "head.weight": torch.randn(num_classes, width),
            "head.bias": torch.zeros(num_classes),
        }
    )
    return {"model": sd}


def tiny_timm(seed: int = 0, **overrides) -> SwinTransformer:
    """A timm Swin with the architecture of ``conftest.tiny_encoder``."""
    torch.manual_seed(seed)
    kw = dict(
        img_size=64,
        patch_size=4,
        embed_dim=16,
        depths=(2, 2, 2, 2),
        num_heads=(1, 2, 2, 4),
        window_size=2,
        drop_path_rate=0.0,
        num_classes=5,
    )
    return SwinTransformer(**{**kw, **overrides}).eval()


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


# ---------------------------------------------------------------------------------------------- formats
def test_detect_and_convert_formats():
    enc = encoder()
    ms = microsoft_release(enc)["model"]
    tm = tiny_timm().state_dict()
    assert detect_swin_format(ms) == "microsoft" and detect_swin_format(tm) == "timm"
    assert detect_swin_format({f"module.{k}": v for k, v in ms.items()}) == "microsoft"

    converted = convert_microsoft_swin(ms)
    assert converted.keys() == enc.state_dict().keys()
    assert all(converted[k] is ms[k] for k in converted)  # pure renaming: tensors shared, input untouched
    assert "head.weight" in ms and "layers.0.blocks.1.attn_mask" in ms

    ct = convert_timm_swin(tm)
    assert ct.keys() == enc.state_dict().keys()
    assert ct["layers.2.downsample.reduction.weight"] is tm["layers.3.downsample.reduction.weight"]
    assert not any(k.startswith("layers.3.downsample") for k in ct)
    assert convert_swin_checkpoint(tm).keys() == ct.keys()
    assert convert_timm_swin(ms).keys() == converted.keys()  # old timm files use the Microsoft layout

    with pytest.raises(CheckpointError, match="convert_timm_swin"):
        convert_microsoft_swin(tm)
    with pytest.raises(CheckpointError, match="Swin V2"):
        detect_swin_format({"layers.0.blocks.0.attn.logit_scale": torch.zeros(1), **ms})
    with pytest.raises(CheckpointError, match="load_official_mtlora_checkpoint"):
        detect_swin_format(
            {"backbone.patch_embed.proj.weight": torch.zeros(1), "downsampler.semseg.x": torch.zeros(1)}
        )
    with pytest.raises(CheckpointError, match="no Swin backbone keys"):
        detect_swin_format({"foo.weight": torch.zeros(1)})


# ---------------------------------------------------------------------------------------------- Microsoft
@pytest.mark.parametrize("zipfile_format", [True, False], ids=["zip", "legacy"])
def test_microsoft_release_file(tmp_path, zipfile_format, caplog):
    src = encoder(seed=0)
    path = tmp_path / "swin_tiny_patch4_window7_224.pth"
    torch.save(microsoft_release(src), path, _use_new_zipfile_serialization=zipfile_format)

    dst = encoder(seed=1)
    with caplog.at_level(logging.INFO, logger="mtlora.io"):
        report = load_pretrained_backbone(dst, path)
    assert_same_weights(src, dst)
    with torch.no_grad():
        for a, b in zip(src(IMAGE), dst(IMAGE)):
            assert torch.equal(a, b)
    assert report.source == str(path) and report.source_format == "microsoft"
    assert not report.missing and not report.unexpected and not report.kept_init and not report.resized
    assert set(report.loaded) == set(dst.state_dict())
    assert {
        "norm.weight",
        "head.weight",
        "layers.0.blocks.1.attn_mask",
        "layers.3.blocks.0.attn.relative_position_index",
    } <= set(report.ignored)
    assert str(path) in caplog.text and "loaded" in caplog.text


def test_multitask_model_loads_pretrained(tmp_path):
    """EncoderConfig(pretrained=...) loads before the adapters are injected; at B = 0 the streams equal the source."""
    src = encoder(seed=0)
    path = tmp_path / "release.pth"
    torch.save(microsoft_release(src), path)
    torch.manual_seed(5)
    model = MultiTaskModel(
        TASKS, tiny_encoder(pretrained=str(path)), AdapterConfig(shared_rank=4, task_rank=2)
    ).eval()
    qkv = model.backbone.layers[1].blocks[1].attn.qkv
    assert torch.equal(qkv.linear.weight, src.layers[1].blocks[1].attn.qkv.weight)
    assert torch.equal(
        model.backbone.layers[0].downsample.reduction.weight, src.layers[0].downsample.reduction.weight
    )
    with torch.no_grad():
        for ours, ref in zip(model.backbone(IMAGE), src(IMAGE)):
            for stream in ours:
                torch.testing.assert_close(stream, ref[0], atol=1e-6, rtol=1e-6)

    missing = tmp_path / "nope" / "swin.pth"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        MultiTaskModel(TASKS, tiny_encoder(pretrained=str(missing)))


# ---------------------------------------------------------------------------------------------- timm
@pytest.mark.parametrize("suffix", [".pth", ".safetensors", ".bin"])
def test_timm_files(tmp_path, suffix):
    timm_model = tiny_timm()
    sd = timm_model.state_dict()
    path = tmp_path / f"model{suffix}"
    if suffix == ".pth":
        torch.save(sd, path)
    else:  # .bin: safetensors content under another name (sniffed from the header)
        safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    dst = encoder(seed=3)
    report = load_pretrained_backbone(dst, path)
    assert report.source_format == "timm"
    assert not report.missing and not report.unexpected
    assert {"head.fc.weight", "head.fc.bias", "norm.weight", "norm.bias"} <= set(report.ignored)
    assert report.renamed["layers.0.downsample.norm.weight"] == "layers.1.downsample.norm.weight"
    for i in range(3):
        assert torch.equal(
            dst.layers[i].downsample.reduction.weight, timm_model.layers[i + 1].downsample.reduction.weight
        )
    assert torch.equal(dst.layers[3].blocks[1].mlp.fc2.weight, timm_model.layers[3].blocks[1].mlp.fc2.weight)


HUB_NAME = "swin_tiny_patch4_window7_224.ms_in1k"


def empty_hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache in ``tmp_path``; returns its folder."""
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def block_network(monkeypatch):
    """No name resolution and no connections, as on a cluster node without internet."""
    import socket

    def offline(*args, **kwargs):
        raise socket.gaierror(-3, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", offline)
    monkeypatch.setattr(socket.socket, "connect", offline)


def test_timm_hub_name(tmp_path, monkeypatch):
    calls = []

    def fake_create_model(name, pretrained=False, **kwargs):
        calls.append((name, pretrained, kwargs))
        return tiny_timm(seed=7, num_classes=0)

    monkeypatch.setattr(timm, "create_model", fake_create_model)
    cache = empty_hub_cache(tmp_path, monkeypatch)
    # weights already in the local cache are read from there, with the network blocked
    snapshot = cache / f"models--timm--{HUB_NAME}" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    safetensors.torch.save_file(tiny_timm(seed=7, num_classes=0).state_dict(), snapshot / "model.safetensors")
    (cache / f"models--timm--{HUB_NAME}" / "refs").mkdir()
    (cache / f"models--timm--{HUB_NAME}" / "refs" / "main").write_text("abc123")
    block_network(monkeypatch)
    dst = encoder(seed=3)
    report = load_pretrained_backbone(dst, f"timm:{HUB_NAME}")
    overlay = {"file": str(snapshot / "model.safetensors")}
    assert calls == [(HUB_NAME, True, {"num_classes": 0, "pretrained_cfg_overlay": overlay})]
    assert report.source == f"timm:{HUB_NAME}" and not report.missing
    assert torch.equal(dst.patch_embed.proj.weight, tiny_timm(seed=7, num_classes=0).patch_embed.proj.weight)

    # not cached, hub reachable: timm downloads
    monkeypatch.undo()
    monkeypatch.setattr(timm, "create_model", fake_create_model)
    (tmp_path / "other").mkdir()
    empty_hub_cache(tmp_path / "other", monkeypatch)
    monkeypatch.setattr("socket.create_connection", lambda *a, **k: _Closable())
    load_pretrained_backbone(encoder(), f"timm:{HUB_NAME}")
    assert calls[-1] == (HUB_NAME, True, {"num_classes": 0, "pretrained_cfg_overlay": None})


class _Closable:
    """A connection that was made (the hub is reachable)."""

    def close(self) -> None:
        pass


def test_timm_hub_offline_fails_at_once_and_unknown(tmp_path, monkeypatch):
    def no_download(*args, **kwargs):
        pytest.fail("timm was asked to download although the hub cannot be reached")

    monkeypatch.setattr(timm, "create_model", no_download)
    empty_hub_cache(tmp_path, monkeypatch)
    block_network(monkeypatch)
    # our error straight away, not the hub client's ~50 s of retries
    with pytest.raises(CheckpointError) as err:
        load_pretrained_backbone(encoder(), f"timm:{HUB_NAME}")
    msg = str(err.value)
    assert "--model.encoder.pretrained" in msg and "swin_tiny_patch4_window7_224.pth" in msg
    assert "https://github.com/SwinTransformer/storage/releases/download/v1.0.0/" in msg
    assert "huggingface.co cannot be reached" in msg and "Temporary failure" in msg

    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(CheckpointError, match="HF_HUB_OFFLINE is set and the weights are not in the local"):
        load_pretrained_backbone(encoder(), "timm:swin_tiny_patch4_window7_224")

    def failing(*args, **kwargs):
        raise OSError("disk quota exceeded")

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr("socket.create_connection", lambda *a, **k: _Closable())
    monkeypatch.setattr(timm, "create_model", failing)
    with pytest.raises(CheckpointError, match="OSError: disk quota exceeded"):
        load_pretrained_backbone(encoder(), f"timm:{HUB_NAME}")
    with pytest.raises(CheckpointError, match="no model named 'swin_nonexistent'"):
        load_pretrained_backbone(encoder(), "timm:swin_nonexistent")
    with pytest.raises(CheckpointError, match="not a Swin V1 model"):
        load_pretrained_backbone(encoder(), "timm:resnet18")


# ---------------------------------------------------------------------------------------------- mismatches
def test_window_size_difference_resizes_tables(tmp_path, caplog):
    timm_model = tiny_timm(window_size=4)  # grids 16, 8, 4, 2: tables 7x7 in stages 0-2, 3x3 in stage 3
    path = tmp_path / "w4.pth"
    torch.save(timm_model.state_dict(), path)
    dst = encoder()  # window 2: 3x3 tables everywhere
    with caplog.at_level(logging.WARNING):
        report = load_pretrained_backbone(dst, path)
    resized = {k: (e, g) for k, e, g in report.resized}
    assert set(resized) == {
        f"layers.{i}.blocks.{j}.attn.relative_position_bias_table" for i in range(3) for j in range(2)
    }
    assert resized["layers.1.blocks.0.attn.relative_position_bias_table"] == ((9, 2), (49, 2))
    expected = resize_relative_position_bias_table(
        timm_model.layers[1].blocks[0].attn.relative_position_bias_table, 9
    )
    assert torch.equal(dst.layers[1].blocks[0].attn.relative_position_bias_table, expected)
    assert torch.equal(
        dst.layers[3].blocks[0].attn.relative_position_bias_table,
        timm_model.layers[3].blocks[0].attn.relative_position_bias_table,
    )
    assert "bicubic" in caplog.text


def test_resize_keeps_constant_tables():
    table = torch.full((49, 3), 0.25)
    out = resize_relative_position_bias_table(table, 169)
    assert out.shape == (169, 3) and torch.allclose(out, torch.full((169, 3), 0.25))
    with pytest.raises(CheckpointError, match="square"):
        resize_relative_position_bias_table(torch.zeros(50, 3), 9)


def test_other_architecture_is_refused(tmp_path):
    path = tmp_path / "wide.pth"
    torch.save(microsoft_release(encoder(embed_dim=24)), path)
    dst = encoder()
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(CheckpointError) as err:
        load_pretrained_backbone(dst, path)
    msg = str(err.value)
    assert str(path) in msg and "another architecture" in msg
    assert "patch_embed.proj.weight: [16, 3, 4, 4] vs [24, 3, 4, 4]" in msg
    assert all(torch.equal(before[k], v) for k, v in dst.state_dict().items())  # nothing half-loaded

    heads = tmp_path / "heads.pth"
    torch.save(microsoft_release(encoder(num_heads=[2, 2, 2, 4])), heads)
    with pytest.raises(
        CheckpointError,
        match=r"layers\.0\.blocks\.0\.attn\.relative_position_bias_table: \[9, 1\] vs \[9, 2\]",
    ):
        load_pretrained_backbone(encoder(), heads)


def test_other_depth_strict_and_lenient(tmp_path):
    path = tmp_path / "deep.pth"
    torch.save(microsoft_release(encoder(depths=[2, 2, 4, 2])), path)
    with pytest.raises(CheckpointError) as err:
        load_pretrained_backbone(encoder(), path)
    assert "unexpected: layers.2.blocks.3.mlp.fc2.weight" in str(err.value) and "strict=False" in str(
        err.value
    )

    shallow = tmp_path / "shallow.pth"
    torch.save(microsoft_release(encoder(depths=[2, 2, 1, 2])), shallow)
    with pytest.raises(CheckpointError, match=r"missing: layers\.2\.blocks\.1\.norm1\.weight"):
        load_pretrained_backbone(encoder(), shallow)
    report = load_pretrained_backbone(encoder(), shallow, strict=False)
    assert "layers.2.blocks.1.attn.qkv.weight" in report.missing and report.loaded
