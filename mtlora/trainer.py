"""Trainer subclass whose extra methods are the CLI's extra subcommands."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from lightning.pytorch import LightningDataModule, LightningModule, Trainer

log = logging.getLogger(__name__)


class MTLoRATrainer(Trainer):
    """Lightning's Trainer plus ``summary`` (and the other library subcommands)."""

    def summary(self, model: LightningModule, datamodule: LightningDataModule | None = None,
                macs: bool = True, json_out: str | None = None) -> dict:
        """Print total/trainable parameters (encoder, decoders) and GMACs per task.

        Args:
            macs: also count multiply-accumulates of one image (a forward pass on CPU).
            json_out: also write the numbers to this JSON file.
        """
        from mtlora.summary import summary_table

        img_size = model.model.encoder_config.img_size
        text, result = summary_table(model.model, img_size, with_macs=macs)
        print(text)
        if json_out:
            Path(json_out).write_text(json.dumps(result, indent=2))
        return result

    def similarity(self, model: LightningModule, datamodule: LightningDataModule, batches: int = 8,
                   groups_per_stage: list[int] | None = None, out_dir: str = "runs/similarity") -> dict:
        """Group tasks by gradient similarity and write a progressive plan config + heat map.

        Args:
            batches: training batches whose per-task gradients are summed.
            groups_per_stage: number of task groups at the end of each stage (default: 1, 1,
                2, one per task); each stage refines the previous one.
            out_dir: where ``plan.yaml``, ``similarity.png`` and ``similarity.json`` go.
        """
        import time

        import torch
        import yaml

        from mtlora.callbacks import write_json_atomic
        from mtlora.similarity import group_tasks, plot_heatmaps, task_gradient_similarity

        net = model.model
        device = self.strategy.root_device
        datamodule.setup("fit")
        loader = datamodule.train_dataloader()
        result = task_gradient_similarity(net, iter(loader), batches, device)
        n_stages = len(result.matrices)
        groups = group_tasks(result, groups_per_stage or [1] * (n_stages - 2) + [2, len(net.tasks)])

        # overhead relative to one training epoch, from the time of a plain training step
        batch = next(iter(loader))
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        start = time.perf_counter()
        for _ in range(2):
            losses = model.criterion(net(batch["image"]), batch)
            sum(losses.values()).backward()
        net.zero_grad(set_to_none=True)
        step = (time.perf_counter() - start) / 2
        epoch = step * len(loader)
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        plan = {"model": {"adapter": {"method": "progressive", "groups": groups}}}
        header = (f"# task groups from gradient similarity ({result.batches} batches); compose with a config:\n"
                  f"#   mtlora fit --config <config.yaml> -c {out / 'plan.yaml'}\n")
        (out / "plan.yaml").write_text(header + yaml.safe_dump(plan, sort_keys=False))
        plot_heatmaps(result, str(out / "similarity.png"))
        report = {"tasks": result.tasks, "groups": groups, "batches": result.batches,
                  "seconds": result.seconds, "epoch_seconds_estimate": epoch,
                  "overhead_fraction_of_epoch": result.seconds / epoch if epoch else None,
                  "similarity": [m.tolist() for m in result.matrices]}
        write_json_atomic(out / "similarity.json", report)
        print(f"groups per stage: {groups}")
        print(f"similarity took {result.seconds:.1f}s for {result.batches} batches "
              f"(~{100 * report['overhead_fraction_of_epoch']:.1f}% of one training epoch); wrote {out}/plan.yaml")
        return report
