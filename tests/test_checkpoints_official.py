"""Official MTLoRA training checkpoints: written here in the official layout, read back.

The config is pickled as an instance of a fake ``yacs.config.CfgNode`` (injected into
``sys.modules`` while saving only), so loading must work without yacs and without unpickling
arbitrary code.
"""

from __future__ import annotations

import io
import os
import pickle
import sys
import types

import pytest
import torch

from mtlora.io.checkpoints import (
    CheckpointError,
    ConfigNode,
    UnsafeCheckpointError,
    compare_official_config,
    convert_official_mtlora,
    load_official_mtlora_checkpoint,
    official_config_summary,
)
from mtlora.io.loading import LoadReport, apply_state_dict
from mtlora.io.official_mtlora import _convert_official
from mtlora.io.serialization import RestrictedUnpickler
from mtlora.models.model import EncoderConfig, MultiTaskModel
from mtlora.models.plans import AdapterConfig

from conftest import PASCAL_CHANNELS, randomize_lora, tiny_encoder

TASKS = list(PASCAL_CHANNELS)  # semseg, human_parts, sal, normals: not alphabetical on purpose
IMAGE = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


# ---------------------------------------------------------------------------------------------- writers
def fake_yacs() -> tuple[types.ModuleType, types.ModuleType, type]:
    """Modules ``yacs`` / ``yacs.config`` with a CfgNode that pickles like the real one (dict + bookkeeping)."""

    class CfgNode(dict):
        def __init__(self, init=None, new_allowed=False):
            super().__init__(init or {})
            self.__dict__["__immutable__"] = False
            self.__dict__["__deprecated_keys__"] = set()
            self.__dict__["__renamed_keys__"] = {}
            self.__dict__["__new_allowed__"] = new_allowed

        def __getattr__(self, name):
            if name in self:
                return self[name]
            raise AttributeError(name)

    CfgNode.__module__, CfgNode.__qualname__ = "yacs.config", "CfgNode"
    yacs, config = types.ModuleType("yacs"), types.ModuleType("yacs.config")
    config.CfgNode, yacs.config = CfgNode, config
    return yacs, config, CfgNode


def official_config(
    cfg_node: type,
    tasks: list[str],
    shared_rank: int,
    task_rank: int,
    *,
    img_size: int = 64,
    swin: dict | None = None,
    scale: float = 4.0,
    downsampler: bool = False,
):
    """A config as the official ``update_config`` leaves it (per-stage lists, *_LIST entries)."""
    swin = swin or dict(EMBED_DIM=16, DEPTHS=[2, 2, 2, 2], NUM_HEADS=[1, 2, 2, 4], WINDOW_SIZE=2)
    n = len(swin["DEPTHS"])
    mtlora = cfg_node(
        {
            "ENABLED": True,
            "R": [shared_rank] * n,
            "SHARED_SCALE": [scale] * n,
            "TASK_SCALE": [scale] * n,
            "DROPOUT": [0.05] * n,
            "TRAINABLE_SCALE_SHARED": False,
            "TRAINABLE_SCALE_PER_TASK": False,
            "INTERMEDIATE_SPECIALIZATION": False,
            "SHARED_MODE": "matrix",
            "DOWNSAMPLER_ENABLED": downsampler,
            "R_PER_TASK": cfg_node(
                {**{t: [task_rank] * n for t in tasks}, "shared": [shared_rank] * n}, new_allowed=True
            ),
            "R_PER_TASK_LIST": [{"shared": shared_rank, **{t: task_rank for t in tasks}} for _ in range(n)],
            "SCALE_PER_TASK_LIST": [{t: scale for t in tasks} for _ in range(n)],
            "QKV_ENABLED": True,
            "PROJ_ENABLED": True,
            "FC1_ENABLED": True,
            "FC2_ENABLED": True,
        }
    )
    model = cfg_node(
        {
            "TYPE": "swin",
            "NAME": "mtlora_tiny",
            "DROP_PATH_RATE": 0.2,
            "SWIN": cfg_node({"PATCH_SIZE": 4, "MLP_RATIO": 4.0, "QK_SCALE": None, **swin}),
            "MTLORA": mtlora,
            "DECODER_CHANNELS": [18, 36, 72, 144],
        }
    )
    return cfg_node(
        {
            "TASKS": list(tasks),
            "DATA": cfg_node({"IMG_SIZE": img_size, "DBNAME": "PASCALContext"}),
            "MODEL": model,
            "TRAIN": cfg_node({"BASE_LR": 5e-4, "OPTIMIZER": cfg_node({"BETAS": (0.9, 0.999)})}),
        }
    )


def to_official(model: MultiTaskModel) -> dict[str, torch.Tensor]:
    """Our state dict renamed to the official layout: per-task LoRA entries, alphabetical, plus buffers."""
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        value = value.clone()
        if key.endswith(("lora_paths_A", "lora_paths_B")):
            stem = key.replace("lora_paths_", "lora_tasks_")
            for task in sorted(model.tasks):
                out[f"{stem}.{task}"] = value[model.tasks.index(task)].clone()
        elif key.startswith("decoder.fusion."):
            out["downsampler." + key[len("decoder.fusion.") :]] = value
        elif key.startswith("decoder.heads."):
            out["decoders.decoders." + key[len("decoder.heads.") :]] = value
        else:
            out[key] = value
    for i, j, blk in model.backbone.blocks():
        out[f"backbone.layers.{i}.blocks.{j}.attn.relative_position_index"] = (
            blk.attn.relative_position_index.clone()
        )
        if blk.shift_mask is not None:
            out[f"backbone.layers.{i}.blocks.{j}.attn_mask"] = blk.shift_mask.clone()
    return out


def trained_model(adapter: AdapterConfig, seed: int = 0, tasks: list[str] = TASKS) -> MultiTaskModel:
    torch.manual_seed(seed)
    model = MultiTaskModel({t: PASCAL_CHANNELS[t] for t in tasks}, tiny_encoder(), adapter)
    randomize_lora(model, seed=seed)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_(0, 0.1)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 1.5)
    return model.eval()


def save_official(path, state_dict, config, monkeypatch, **extra) -> None:
    yacs, yacs_config, cfg = config
    checkpoint = {
        "model": state_dict,
        "optimizer": {
            "state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(2)}},
            "param_groups": [{"lr": 3.125e-5, "betas": (0.9, 0.999), "weight_decay": 0.05, "params": [0]}],
        },
        "lr_scheduler": {"t_initial": 46800, "warmup_prefix": True, "base_values": [3.125e-5]},
        "max_accuracy": 0.0,
        "scaler": {"scale": 65536.0, "growth_factor": 2.0, "_growth_tracker": 0},
        "epoch": 3,
        "config": cfg,
        **extra,
    }
    with monkeypatch.context() as m:  # yacs exists only while saving
        m.setitem(sys.modules, "yacs", yacs)
        m.setitem(sys.modules, "yacs.config", yacs_config)
        torch.save(checkpoint, path)
    assert "yacs" not in sys.modules and "yacs.config" not in sys.modules


@pytest.fixture
def yacs_modules():
    return fake_yacs()


# ---------------------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("patch_merging", [False, True], ids=["mtlora", "mtlora_plus"])
def test_official_checkpoint_round_trip(tmp_path, monkeypatch, yacs_modules, patch_merging):
    adapter = AdapterConfig(shared_rank=4, task_rank=2, patch_merging=patch_merging)
    src = trained_model(adapter, seed=0)
    cfg = official_config(yacs_modules[2], TASKS, 4, 2, downsampler=patch_merging)
    path = tmp_path / "ckpt_epoch_3.pth"
    save_official(path, to_official(src), (yacs_modules[0], yacs_modules[1], cfg), monkeypatch)

    dst = trained_model(adapter, seed=1)
    report = load_official_mtlora_checkpoint(path, dst)
    assert "yacs" not in sys.modules  # never imported
    with torch.no_grad():
        ours, ref = dst(IMAGE), src(IMAGE)
    for task in TASKS:
        assert torch.equal(ours[task], ref[task]), task
    for key, value in src.state_dict().items():
        assert torch.equal(dst.state_dict()[key], value), key

    assert report.source_format == "official_mtlora" and report.source == str(path)
    assert (
        not report.missing
        and not report.unexpected
        and not report.unsupported
        and not report.config_mismatches
    )
    assert set(report.loaded) == set(dst.state_dict())
    stacked = "backbone.layers.2.blocks.1.mlp.fc1.lora_paths_B"
    assert (
        report.renamed[stacked]
        == "backbone.layers.2.blocks.1.mlp.fc1.lora_tasks_B.{semseg,human_parts,sal,normals}"
    )
    assert report.renamed["decoder.fusion.sal.downsample_3.weight"] == "downsampler.sal.downsample_3.weight"
    assert (
        report.renamed["decoder.heads.normals.last_layer.1.running_var"]
        == "decoders.decoders.normals.last_layer.1.running_var"
    )
    assert "backbone.layers.0.blocks.1.attn_mask" in report.ignored
    assert report.meta["epoch"] == 3 and "optimizer" in report.meta["keys"]
    assert report.config["tasks"] == TASKS
    assert report.config["adapter"] == {
        "method": "mtlora",
        "shared_rank": 4,
        "task_rank": 2,
        "shared_scale": 4.0,
        "task_scale": 4.0,
        "dropout": 0.05,
        "shared_mode": "matrix",
        "patch_merging": patch_merging,
    }
    assert report.config["encoder"]["img_size"] == 64 and report.config["encoder"]["depths"] == [2, 2, 2, 2]


def test_convert_official_is_pure_and_orders_by_name(yacs_modules):
    src = trained_model(AdapterConfig(shared_rank=4, task_rank=2))
    official = to_official(src)
    before = dict(official)
    converted = convert_official_mtlora(official, src.tasks)
    assert official.keys() == before.keys() and all(official[k] is before[k] for k in official)
    paths_a = converted["backbone.layers.1.blocks.1.attn.proj.lora_paths_A"]
    for p, task in enumerate(src.tasks):
        assert torch.equal(paths_a[p], official[f"backbone.layers.1.blocks.1.attn.proj.lora_tasks_A.{task}"])
    reordered = convert_official_mtlora(official, ["normals", "sal", "semseg", "human_parts"])
    assert torch.equal(reordered["backbone.layers.1.blocks.1.attn.proj.lora_paths_A"][0], paths_a[3])
    assert converted.keys() == src.state_dict().keys()


def test_task_subset_and_config_mismatch(tmp_path, monkeypatch, yacs_modules):
    src = trained_model(AdapterConfig(shared_rank=4, task_rank=2))
    cfg = official_config(yacs_modules[2], TASKS, 4, 2)
    path = tmp_path / "ckpt.pth"
    save_official(path, to_official(src), (yacs_modules[0], yacs_modules[1], cfg), monkeypatch)

    subset = ["normals", "semseg"]
    dst = trained_model(AdapterConfig(shared_rank=4, task_rank=2), seed=2, tasks=subset)
    with pytest.raises(CheckpointError) as err:
        load_official_mtlora_checkpoint(path, dst)
    msg = str(err.value)
    assert "unexpected: downsampler.sal.downsample_0.weight" in msg or "unexpected: decoder.fusion.sal" in msg
    assert "config: tasks: checkpoint" in msg and "strict=False" in msg

    report = load_official_mtlora_checkpoint(path, dst, strict=False)
    assert not report.missing
    assert "backbone.layers.0.blocks.1.attn.proj.lora_tasks_A.sal" in report.unexpected
    with torch.no_grad():
        ours, ref = dst(IMAGE), src(IMAGE)
    for task in subset:
        assert torch.equal(ours[task], ref[task])

    other_scale = trained_model(AdapterConfig(shared_rank=4, task_rank=2, shared_scale=2.0), seed=3)
    with pytest.raises(CheckpointError, match=r"adapter\.shared_scale: checkpoint 4\.0, model 2\.0"):
        load_official_mtlora_checkpoint(path, other_scale)

    other_rank = trained_model(AdapterConfig(shared_rank=8, task_rank=2), seed=3)
    with pytest.raises(
        CheckpointError, match=r"another architecture.*\n.*lora_shared_A: \[8, 16\] vs \[4, 16\]"
    ):
        load_official_mtlora_checkpoint(path, other_rank)


@pytest.mark.parametrize("value,accepted", [(4.0, True), (3.0, False)])
def test_trainable_scales(tmp_path, monkeypatch, yacs_modules, value, accepted):
    src = trained_model(AdapterConfig(shared_rank=4, task_rank=2))
    official = to_official(src)
    official["backbone.layers.0.blocks.0.attn.qkv.lora_shared_scale"] = torch.tensor([value])
    for task in TASKS:
        official[f"backbone.layers.0.blocks.1.mlp.fc1.lora_task_scale.{task}"] = torch.tensor([4.0])
    path = tmp_path / "ckpt.pth"
    cfg = official_config(yacs_modules[2], TASKS, 4, 2)
    save_official(path, official, (yacs_modules[0], yacs_modules[1], cfg), monkeypatch)
    dst = trained_model(AdapterConfig(shared_rank=4, task_rank=2), seed=1)
    if accepted:
        report = load_official_mtlora_checkpoint(path, dst)
        assert "backbone.layers.0.blocks.0.attn.qkv.lora_shared_scale" in report.ignored
        assert "backbone.layers.0.blocks.1.mlp.fc1.lora_task_scale.sal" in report.ignored
    else:
        with pytest.raises(
            CheckpointError, match=r"lora_shared_scale = 3 but the model's scale is 4.*not supported"
        ):
            load_official_mtlora_checkpoint(path, dst)
        report = load_official_mtlora_checkpoint(path, dst, strict=False)
        assert len(report.unsupported) == 1


def test_not_an_official_checkpoint(tmp_path):
    dst = trained_model(AdapterConfig(shared_rank=4, task_rank=2))
    plain = tmp_path / "plain.pth"
    torch.save({"epoch": 1}, plain)
    with pytest.raises(CheckpointError, match=r"not an official MTLoRA training checkpoint.*'epoch'"):
        load_official_mtlora_checkpoint(plain, dst)
    swin = tmp_path / "swin.pth"
    torch.save({"model": {"patch_embed.proj.weight": torch.zeros(16, 3, 4, 4)}}, swin)
    with pytest.raises(CheckpointError, match="load_pretrained_backbone"):
        load_official_mtlora_checkpoint(swin, dst)
    junk = tmp_path / "junk.pth"
    torch.save({"model": {"backbone.unrelated.weight": torch.zeros(2)}}, junk)
    with pytest.raises(CheckpointError, match="nothing in the checkpoint matches the model"):
        load_official_mtlora_checkpoint(junk, dst)


# ---------------------------------------------------------------------------------------------- safety
class Evil:
    marker = ""

    def __reduce__(self):
        return os.system, (f"echo pwned > {self.marker}",)


@pytest.mark.parametrize("zipfile_format", [True, False], ids=["zip", "legacy"])
def test_malicious_pickle_is_refused(tmp_path, zipfile_format):
    src = trained_model(AdapterConfig(shared_rank=4, task_rank=2))
    marker = tmp_path / "pwned"
    evil = Evil()
    evil.marker = str(marker)
    path = tmp_path / "evil.pth"
    torch.save(
        {"model": to_official(src), "epoch": 1, "config": evil},
        path,
        _use_new_zipfile_serialization=zipfile_format,
    )
    with pytest.raises(UnsafeCheckpointError) as err:
        load_official_mtlora_checkpoint(path, src)
    assert f"{os.system.__module__}.system" in str(err.value) and str(path) in str(err.value)
    assert not marker.exists()


def test_restricted_unpickler_refuses_globals():
    for payload in (Evil(), eval, types.SimpleNamespace(a=1)):
        with pytest.raises(pickle.UnpicklingError, match="refused to load the global"):
            RestrictedUnpickler(io.BytesIO(pickle.dumps(payload, protocol=2))).load()
    node = RestrictedUnpickler(io.BytesIO(pickle.dumps({"a": [1, 2.5, (3,)], "b": {4}}, protocol=2))).load()
    assert node == {"a": [1, 2.5, (3,)], "b": {4}}


def test_config_node_stand_in(monkeypatch, yacs_modules):
    yacs, yacs_config, cfg_node = yacs_modules
    cfg = official_config(cfg_node, TASKS, 64, 4, img_size=448)
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "yacs", yacs)
        m.setitem(sys.modules, "yacs.config", yacs_config)
        data = pickle.dumps(cfg, protocol=2)
    node = RestrictedUnpickler(io.BytesIO(data)).load()
    assert isinstance(node, ConfigNode) and isinstance(node.MODEL.MTLORA, ConfigNode)
    assert node.MODEL.MTLORA.R == [64] * 4 and node.DATA.IMG_SIZE == 448
    plain = node.to_dict()
    assert type(plain["MODEL"]["SWIN"]) is dict and plain["TASKS"] == TASKS
    with pytest.raises(AttributeError):
        _ = node.NOT_THERE


# ---------------------------------------------------------------------------------------------- the released config
def official_swin_t_keys(
    tasks: list[str], shared_rank: int, task_rank: int, channels: dict[str, int]
) -> dict:
    """Key -> shape of the official MTLoRA Swin-T model at 448 px, written from the table in docs/official_implementation.md."""
    keys: dict[str, tuple] = {
        "backbone.patch_embed.proj.weight": (96, 3, 4, 4),
        "backbone.patch_embed.proj.bias": (96,),
        "backbone.patch_embed.norm.weight": (96,),
        "backbone.patch_embed.norm.bias": (96,),
    }
    n_windows = (256, 64, 16, 4)
    for i, depth in enumerate((2, 2, 6, 2)):
        c, heads = 96 * 2**i, 3 * 2**i
        for j in range(depth):
            b = f"backbone.layers.{i}.blocks.{j}."
            for norm in ("norm1", "norm2"):
                keys[f"{b}{norm}.weight"] = keys[f"{b}{norm}.bias"] = (c,)
            keys[f"{b}attn.relative_position_bias_table"] = (169, heads)
            keys[f"{b}attn.relative_position_index"] = (49, 49)
            if j % 2:
                keys[f"{b}attn_mask"] = (n_windows[i], 49, 49)
            for name, (cin, cout) in {
                "attn.qkv": (c, 3 * c),
                "attn.proj": (c, c),
                "mlp.fc1": (c, 4 * c),
                "mlp.fc2": (4 * c, c),
            }.items():
                keys[f"{b}{name}.linear.weight"], keys[f"{b}{name}.linear.bias"] = (cout, cin), (cout,)
                keys[f"{b}{name}.lora_shared_A"], keys[f"{b}{name}.lora_shared_B"] = (
                    (shared_rank, cin),
                    (cout, shared_rank),
                )
                if j == depth - 1 and name != "attn.qkv":
                    for t in sorted(tasks):
                        keys[f"{b}{name}.lora_tasks_A.{t}"] = (task_rank, cin)
                        keys[f"{b}{name}.lora_tasks_B.{t}"] = (cout, task_rank)
        if i < 3:
            d = f"backbone.layers.{i}.downsample."
            keys[f"{d}norm.weight"] = keys[f"{d}norm.bias"] = (4 * c,)
            keys[f"{d}reduction.weight"] = (2 * c, 4 * c)
    for t in sorted(tasks):
        for k, (cin, cout) in enumerate(zip((192, 384, 768, 768), (18, 36, 72, 144))):
            keys[f"downsampler.{t}.downsample_{k}.weight"] = (cout, cin, 1, 1)
        h = f"decoders.decoders.{t}.last_layer."
        keys[f"{h}0.weight"], keys[f"{h}0.bias"] = (1080, 270, 1, 1), (1080,)
        for stat in ("weight", "bias", "running_mean", "running_var"):
            keys[f"{h}1.{stat}"] = (1080,)
        keys[f"{h}1.num_batches_tracked"] = ()
        keys[f"{h}3.weight"], keys[f"{h}3.bias"] = (channels[t], 1080, 1, 1), (channels[t],)
    return keys


def test_released_r64_layout_fits_our_config(yacs_modules):
    """The released checkpoint's keys and config (mtlora_tiny_448_r64_scale4_pertask) fit AdapterConfig(64, 4)."""
    r16 = official_swin_t_keys(TASKS, 16, 4, PASCAL_CHANNELS)
    backbone = [k for k in r16 if k.startswith("backbone.")]
    assert len(backbone) == 379 and len(r16) - len(backbone) == 52  # the official key counts
    assert sum(".lora_" in k for k in backbone) == 192

    keys = official_swin_t_keys(TASKS, 64, 4, PASCAL_CHANNELS)
    state_dict = {k: torch.empty(shape, device="meta") for k, shape in keys.items()}
    model = MultiTaskModel(PASCAL_CHANNELS, EncoderConfig(), AdapterConfig(shared_rank=64, task_rank=4))
    report = LoadReport(source="released r64 layout", source_format="official_mtlora")
    apply_state_dict(model, _convert_official(state_dict, model.tasks), report, dry_run=True)
    assert not report.problems and set(report.loaded) == set(model.state_dict())
    assert len(report.ignored) == 18  # 12 position indices + 6 shift masks

    cfg = official_config(
        yacs_modules[2],
        sorted(TASKS),
        64,
        4,
        img_size=448,
        swin=dict(EMBED_DIM=96, DEPTHS=[2, 2, 6, 2], NUM_HEADS=[3, 6, 12, 24], WINDOW_SIZE=7),
    )
    summary = official_config_summary(cfg)
    assert summary["adapter"]["shared_rank"] == 64 and summary["adapter"]["task_rank"] == 4
    assert compare_official_config(summary, model) == []
    assert AdapterConfig(**summary["adapter"]).shared_rank == 64
