"""`mtlora predict` writes a PNG panel and per-task outputs per image, for a data split and an image folder."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mtlora.cli import run_cli
from mtlora.data import ImageFolderDataModule
from mtlora.visualize import colour_range, decode_prediction, palette, prediction_panel, render

CONFIG = Path(__file__).parent / "configs" / "tiny_synthetic.yaml"
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("fit")
    cli = run_cli(
        [
            "fit",
            "--config",
            str(CONFIG),
            "--trainer.max_steps",
            "2",
            "--trainer.limit_val_batches",
            "1",
            "--trainer.default_root_dir",
            str(out),
            "--trainer.logger.init_args.save_dir",
            str(out),
        ]
    )
    return next(Path(cli.trainer.log_dir).glob("checkpoints/*.ckpt"))


def test_predict_on_data_split_writes_panels_with_ground_truth(tmp_path, checkpoint):
    out = tmp_path / "pred"
    run_cli(
        [
            "predict",
            "--config",
            str(CONFIG),
            "--ckpt_path",
            str(checkpoint),
            "--data.test_size",
            "3",
            "--trainer.logger.init_args.save_dir",
            str(out),
            "--trainer.default_root_dir",
            str(out),
        ]
    )
    panels = sorted(out.rglob("predictions/*.png"))
    assert len(panels) == 3
    for path in panels:
        assert path.read_bytes()[:8] == PNG
        with Image.open(path) as img:
            assert img.width > img.height  # input + six task columns side by side, two rows


def _photo(rng, h, w):
    return rng.integers(0, 255, (h, w, 3), dtype=np.uint8)


def test_predict_on_image_folder_takes_tasks_and_size_from_the_checkpoint(tmp_path, checkpoint, capsys):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(_photo(rng, 50, 70)).save(images / "x.jpg")  # landscape
    Image.fromarray(_photo(rng, 64, 64)).save(images / "x.png")  # same stem
    Image.fromarray((rng.random((90, 30)) * 65535).astype(np.uint16)).save(images / "tall16.png")
    (images / "broken.png").write_bytes(PNG + b"truncated")
    (images / "notes.txt").write_text("not an image")
    out = tmp_path / "pred"
    run_cli(
        [
            "predict",
            "--ckpt_path",
            str(checkpoint),
            "--data",
            "mtlora.data.ImageFolderDataModule",
            "--data.root",
            str(images),
            "--data.batch_size",
            "2",
            "--output.out_dir",
            str(out),
            "--trainer.accelerator",
            "cpu",
            "--trainer.logger",
            "false",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.default_root_dir",
            str(tmp_path),
        ]
    )
    printed = capsys.readouterr().out
    assert "broken.png" in printed and "skipped 1 unreadable files" in printed
    assert sorted(p.name for p in out.glob("*.png")) == ["tall16.png.png", "x.jpg.png", "x.png.png"]
    sizes = {"x.jpg": (50, 70), "x.png": (64, 64), "tall16.png": (90, 30)}
    for name, (h, w) in sizes.items():
        with Image.open(out / "semseg" / f"{name}.png") as label:
            assert label.mode == "P" and label.size == (w, h)  # original size, aspect ratio kept
            assert np.asarray(label).max() < 21
        with Image.open(out / "human_parts" / f"{name}.png") as label:
            assert np.asarray(label).max() < 7
        for task in ("sal", "edge"):
            prob = np.load(out / task / f"{name}.npy")
            assert prob.shape == (h, w) and prob.dtype == np.float32 and 0 <= prob.min() <= prob.max() <= 1
        assert np.load(out / "depth" / f"{name}.npy").shape == (h, w)
        normals = np.load(out / "normals" / f"{name}.npy")
        assert normals.shape == (h, w, 3) and np.allclose(np.linalg.norm(normals, axis=-1), 1, atol=1e-4)
    assert not (out / "semseg" / "broken.png.png").exists()


def test_predict_without_panels_writes_only_task_outputs(tmp_path, checkpoint):
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(_photo(np.random.default_rng(1), 40, 60)).save(images / "a.jpg")
    out = tmp_path / "pred"
    args = ["predict", "--ckpt_path", str(checkpoint), "--data", "mtlora.data.ImageFolderDataModule"]
    args += ["--data.root", str(images), "--output.out_dir", str(out), "--output.panels", "false"]
    run_cli(
        [
            *args,
            "--trainer.accelerator",
            "cpu",
            "--trainer.logger",
            "false",
            "--trainer.default_root_dir",
            str(tmp_path),
        ]
    )
    assert not list(out.glob("*.png"))
    assert (out / "semseg" / "a.jpg.png").is_file() and np.load(out / "depth" / "a.jpg.npy").shape == (40, 60)


def test_image_folder_letterboxes_and_skips_unreadable_files(tmp_path):
    Image.fromarray(np.full((30, 60, 3), 200, dtype=np.uint8)).save(tmp_path / "wide.png")
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    data = ImageFolderDataModule(str(tmp_path), tasks=["sal"], img_size=32, batch_size=2)
    batch = next(iter(data.predict_dataloader()))
    assert batch["meta"]["id"] == ["bad.jpg", "wide.png"]
    assert "bad.jpg" in batch["meta"]["error"][0] and batch["meta"]["error"][1] is None
    assert batch["meta"]["size"][1] == (30, 60) and batch["meta"]["content"][1] == (16, 32)
    image = batch["image"][1]
    assert image.shape == (3, 32, 32) and (image[:, 16:] == 0).all() and (image[:, :16] != 0).all()


def test_image_folder_needs_tasks_without_a_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="tasks, img_size not set.*--ckpt_path"):
        ImageFolderDataModule(str(tmp_path))


def test_decode_at_original_size_matches_full_resize():
    logits = torch.randn(5, 8, 8)
    ids = decode_prediction("semseg", logits, (20, 13))
    full = torch.nn.functional.interpolate(logits[None], size=(20, 13), mode="bilinear", align_corners=False)
    assert ids.shape == (20, 13) and np.array_equal(ids, full[0].argmax(0).numpy())
    assert decode_prediction("normals", torch.randn(3, 8, 8), (5, 9)).shape == (5, 9, 3)


def test_panel_keys_and_shared_depth_scale():
    depth_pred, depth_gt = np.array([[1.0, 2.0]]), np.array([[2.0, 4.0]])
    scale = colour_range("depth", depth_pred, depth_gt)
    assert scale == (1.0, 4.0)
    assert (
        render("depth", depth_pred, value_range=scale)[0, 1]
        == render("depth", depth_gt, value_range=scale)[0, 0]
    ).all()
    image = torch.zeros(3, 16, 16)
    preds = {"semseg": torch.zeros(21, 16, 16), "depth": torch.ones(1, 16, 16)}
    preds["semseg"][15] = 1  # every pixel "person"
    alone = prediction_panel(image, preds)
    with_gt = prediction_panel(
        image, preds, {"semseg": torch.full((16, 16), 15), "depth": torch.ones(1, 16, 16)}
    )
    assert isinstance(alone, Image.Image) and alone._repr_png_()[:8] == PNG  # shows inline in Jupyter
    assert with_gt.height > alone.height and with_gt.width == alone.width
    pixels = {tuple(p) for p in np.asarray(with_gt).reshape(-1, 3)}
    assert tuple(palette(21)[15]) in pixels  # tile and legend swatch
    assert tuple(render("depth", np.array([[0.0, 1.0]]))[0, 1]) in pixels  # top of the colour bar


def test_render_colours_and_ignore():
    seg = np.array([[0, 1], [2, 255]])
    pic = render("semseg", seg, 21)
    assert pic.shape == (2, 2, 3) and (pic[1, 1] == 255).all()
    assert (pic[0, 1] == palette(21)[1]).all() and tuple(palette(21)[1]) == (128, 0, 0)  # VOC colour map
    normals = np.zeros((1, 2, 3), dtype=np.float32)
    normals[0, 0] = (0, 0, 1)
    normals[0, 1] = 255
    pic = render("normals", normals)
    assert tuple(pic[0, 0]) == (127, 127, 255) and tuple(pic[0, 1]) == (255, 255, 255)
    assert render("depth", torch.rand(4, 4).numpy()).shape == (4, 4, 3)
