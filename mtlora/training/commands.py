"""Trainer subclass whose extra methods are the CLI's extra subcommands."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from lightning.pytorch import LightningDataModule, LightningModule, Trainer

# mtlora.bench.Variant, repeated so that parsing the CLI does not import the bench
BenchVariant = Literal[
    "config", "full", "decoders", "checkpointing", "selective", "config_full", "shared_only", "frozen_encoder"
]

log = logging.getLogger(__name__)


class MTLoRATrainer(Trainer):
    """Lightning's Trainer plus ``summary`` (and the other library subcommands)."""

    def summary(
        self,
        model: LightningModule,
        datamodule: LightningDataModule | None = None,
        macs: bool = True,
        json_out: str | None = None,
    ) -> dict:
        """Print total/trainable parameters (encoder, decoders) and GMACs per task.

        Args:
            macs: also count multiply-accumulates of one image (a forward pass on CPU).
            json_out: also write the numbers to this JSON file.
        """
        from mtlora.tools.summary import summary_table

        img_size = model.model.encoder_config.img_size
        text, result = summary_table(model.model, img_size, with_macs=macs)
        print(text)
        if json_out:
            from mtlora.io.atomic import write_json_atomic

            write_json_atomic(json_out, result)
        return result

    def similarity(
        self,
        model: LightningModule,
        datamodule: LightningDataModule,
        batches: int = 8,
        groups_per_stage: list[int] | None = None,
        out_dir: str = "runs/similarity",
    ) -> dict:
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

        from mtlora.io.atomic import write_json_atomic, write_text_atomic
        from mtlora.tools.similarity import group_tasks, plot_heatmaps, task_gradient_similarity

        # the network fit would start from (encoder.pretrained, init_weights), not a random one
        model.load_initial_weights()
        net = model.model
        device = self.strategy.root_device
        datamodule.setup("fit")
        loader = datamodule.train_dataloader()
        print(
            f"similarity: {batches} batches, one backward per task each ({len(net.tasks)} tasks)", flush=True
        )
        # raw batches of the device-side augmentation get it here (on the CPU) like a trainer's would
        augmented = (datamodule.on_after_batch_transfer(batch, 0) for batch in loader)
        result = task_gradient_similarity(
            net,
            augmented,
            batches,
            device,
            progress=lambda done, total, seconds: print(
                f"similarity: batch {done}/{total} ({seconds:.1f}s)", flush=True
            ),
        )
        n_stages = len(result.matrices)
        groups = group_tasks(result, groups_per_stage or [1] * (n_stages - 2) + [2, len(net.tasks)])

        # overhead relative to one training epoch, from the time of a plain training step
        batch = datamodule.on_after_batch_transfer(next(iter(loader)), 0)
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
        header = (
            f"# task groups from gradient similarity ({result.batches} batches); compose with a config:\n"
            f"#   mtlora fit --config <config.yaml> -c {out / 'plan.yaml'}\n"
        )
        write_text_atomic(out / "plan.yaml", header + yaml.safe_dump(plan, sort_keys=False))
        plot_heatmaps(result, str(out / "similarity.png"))
        report = {
            "tasks": result.tasks,
            "groups": groups,
            "batches": result.batches,
            "seconds": result.seconds,
            "epoch_seconds_estimate": epoch,
            "overhead_fraction_of_epoch": result.seconds / epoch if epoch else None,
            "similarity": [m.tolist() for m in result.matrices],
        }
        write_json_atomic(out / "similarity.json", report)
        print(f"groups per stage: {groups}")
        print(
            f"similarity took {result.seconds:.1f}s for {result.batches} batches "
            f"(~{100 * report['overhead_fraction_of_epoch']:.1f}% of one training epoch); wrote {out}/plan.yaml"
        )
        return report

    def bench(
        self,
        model: LightningModule,
        datamodule: LightningDataModule | None = None,
        batch_size: int | None = None,
        img_size: int | None = None,
        steps: int = 20,
        warmup: int = 5,
        precision: Literal["auto", "bf16", "fp32"] = "auto",
        compile: bool | list[BenchVariant] = False,
        variants: list[BenchVariant] | None = None,
        peak_tflops: float | None = None,
        inference: bool = True,
        repeats: int = 1,
        count_only: bool = False,
        json_out: str | None = None,
    ) -> dict:
        """Measure training/inference throughput, peak memory and MFU against full FT and decoders-only.

        Runs on the trainer's device (``--trainer.accelerator cpu|gpu``) with synthetic inputs;
        see :mod:`mtlora.bench` for the definitions.

        Args:
            batch_size: images per step (default: 32 on CUDA, 2 elsewhere).
            img_size: input size (default: the config's; must fit the Swin windows).
            steps: timed steps per measurement, after ``warmup`` untimed ones.
            warmup: untimed steps first (compilation happens here; at least 3: the first call and
                the two of ``torch.utils.benchmark``'s timer).
            precision: ``bf16`` autocast, ``fp32``, or ``auto`` (bf16 on CUDA, fp32 elsewhere).
            compile: also measure ``torch.compile(fullgraph=True)`` training and inference, for
                every variant (``true``) or the listed ones (inductor compiles take minutes each).
            variants: ``config`` (as configured), ``full`` (full fine-tuning), ``decoders``
                (frozen encoder), ``checkpointing`` (config + full gradient checkpointing),
                ``selective`` (config + selective checkpointing), ``config_full`` (the config's
                network with every weight trained), ``shared_only`` (the config without its
                task-specific streams), ``frozen_encoder`` (frozen encoder that gradients still
                cross: the cost floor of any method adapting every block); default: config,
                full, decoders.
            peak_tflops: device peak for MFU where the built-in table does not know it (CPUs).
            inference: also measure inference (eager, compiled, merged).
            repeats: measure all variants this many times in turn and keep the best of each
                (for shared machines, whose other load only ever slows a run down).
            count_only: only count, on fake tensors: FLOPs and peak tensor memory of every
                variant at any size (e.g. 448x448, batch 32, bf16 on a laptop); nothing is timed.
            json_out: write the report to this JSON file.
        """
        from mtlora.bench import BenchSettings, format_report, run_bench
        from mtlora.io.atomic import write_json_atomic

        device = self.strategy.root_device
        settings = BenchSettings(
            batch_size=batch_size or (32 if device.type == "cuda" else 2),
            img_size=img_size,
            steps=steps,
            warmup=warmup,
            precision=precision,
            compile=compile,
            variants=list(variants or BenchSettings().variants),
            peak_tflops=peak_tflops,
            inference=inference,
            repeats=repeats,
            count_only=count_only,
        )
        report = run_bench(model.model, model.criterion, settings, device)
        print(format_report(report))
        if json_out:
            write_json_atomic(Path(json_out), report)
        return report

    def export(
        self,
        model: LightningModule,
        ckpt_path: str,
        datamodule: LightningDataModule | None = None,
        out: str = "export",
        program: bool = True,
    ) -> dict:
        """Write an inference model with merged adapters: model.safetensors + config.json (+ model.pt2).

        The weights and the architecture come from the Lightning checkpoint (loaded weights-only);
        the ``--config`` only has to describe the same task set.

        Args:
            ckpt_path: Lightning checkpoint (``.ckpt``) of a trained model.
            out: output directory.
            program: also write a ``torch.export`` program (``model.pt2``) that runs with PyTorch
                alone (``torch.export.load(path).module()(images)``).
        """
        from mtlora.io.export import export_model
        from mtlora.training.module import MultiTaskModule

        loaded = MultiTaskModule.load_from_checkpoint(ckpt_path, map_location="cpu", weights_only=True)
        if list(loaded.tasks) != list(model.tasks):
            log.warning(
                "checkpoint tasks %s differ from the config's %s; exporting the checkpoint's",
                loaded.tasks,
                model.tasks,
            )
        config = export_model(loaded.model, out, program=program)
        merged = config["merged"]
        print(
            f"exported {ckpt_path} -> {out}: {len(merged['shared'])} layers with the shared path merged, "
            f"{len(merged['stream_paths'])} stream layers merged, {len(merged['low_rank_paths'])} branch layers "
            f"keep low-rank task paths; files: {', '.join(f for f in config['files'].values() if f)}"
        )
        return config

    def export_adapters(
        self,
        model: LightningModule,
        ckpt_path: str,
        out: str = "adapters.safetensors",
        datamodule: LightningDataModule | None = None,
    ) -> dict:
        """Write the trained part of a checkpoint (adapters, norms, heads) as a small safetensors file.

        The file holds the trainable parameters and the heads' BatchNorm statistics, the
        architecture, the ``encoder.pretrained`` source and a SHA-256 of the frozen base weights
        (see :mod:`mtlora.io.adapters`).  Use it with ``--model.init_weights <out>`` on the same
        pretrained weights; another base is refused.

        Args:
            ckpt_path: Lightning checkpoint (``.ckpt``) of a trained model (loaded weights-only).
            out: adapter file to write (``.safetensors``).
        """
        from mtlora.io.adapters import save_adapters
        from mtlora.training.module import MultiTaskModule

        loaded = MultiTaskModule.load_from_checkpoint(ckpt_path, map_location="cpu", weights_only=True)
        metadata = save_adapters(loaded.model, out)
        size = Path(out).stat().st_size
        trainable = int(metadata["trainable_parameters"])
        print(
            f"wrote {out}: {size / 1e6:.2f} MB, {trainable:,} trainable parameters "
            f"(base {metadata['base_source'] or 'random init'}, sha256 {metadata['base_sha256'][:12]}...)"
        )
        return {"out": out, "bytes": size, **{k: v for k, v in metadata.items() if k != "config"}}
