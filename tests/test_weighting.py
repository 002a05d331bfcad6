"""Loss weighting: fixed sum, Kendall uncertainty and DWA formulas on hand-made numbers, and in a real fit."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from mtlora.weighting import DWAWeighting, FixedWeighting, UncertaintyWeighting, build_weighting, dwa_lambdas

CONFIG = Path(__file__).parent / "configs" / "tiny_synthetic.yaml"
FIXED = {"semseg": 1.0, "sal": 5.0, "normals": 10.0}
TASKS = list(FIXED)


def losses(*values: float) -> dict[str, torch.Tensor]:
    return {t: torch.tensor(v) for t, v in zip(TASKS, values)}


def test_fixed_is_the_weighted_sum():
    total = FixedWeighting(TASKS, FIXED)(losses(2.0, 0.4, 0.1))
    assert total.item() == pytest.approx(1 * 2.0 + 5 * 0.4 + 10 * 0.1)


def test_uncertainty_uses_kendall_forms_for_classification_and_regression():
    w = UncertaintyWeighting(TASKS, FIXED)
    # starts at the fixed recipe: c_t exp(-s_t) = w_t
    torch.testing.assert_close(w.effective(), torch.tensor([1.0, 5.0, 10.0]))
    with torch.no_grad():
        w.log_vars.copy_(torch.tensor([0.5, -1.0, 2.0]))
    total = w(losses(2.0, 0.4, 0.1))
    # semseg, sal: classification 1/sigma^2 L + log sigma; normals: regression 1/(2 sigma^2) L + log sigma
    expected = (
        (math.exp(-0.5) * 2.0 + 0.25) + (math.exp(1.0) * 0.4 - 0.5) + (0.5 * math.exp(-2.0) * 0.1 + 1.0)
    )
    assert total.item() == pytest.approx(expected, rel=1e-6)
    total.backward()
    # d/ds (c e^-s L + s/2) = -c e^-s L + 1/2
    grad = [-math.exp(-0.5) * 2.0 + 0.5, -math.exp(1.0) * 0.4 + 0.5, -0.5 * math.exp(-2.0) * 0.1 + 0.5]
    torch.testing.assert_close(w.log_vars.grad, torch.tensor(grad), rtol=1e-5, atol=1e-6)


def test_uncertainty_optimum_balances_each_loss():
    w = UncertaintyWeighting(TASKS, FIXED)
    opt = torch.optim.SGD(w.parameters(), lr=0.5)
    for _ in range(400):
        opt.zero_grad()
        w(losses(2.0, 0.4, 0.1)).backward()
        opt.step()
    # minimum of c e^-s L + s/2 at e^-s = 1/(2 c L): the effective weight becomes 1/(2L)
    torch.testing.assert_close(
        w.effective().detach(), torch.tensor([1 / 4.0, 1 / 0.8, 1 / 0.2]), rtol=1e-3, atol=1e-4
    )


def test_dwa_weights_from_last_two_epochs():
    w = DWAWeighting(TASKS, FIXED).train()
    epochs = [(2.0, 0.5, 0.2), (1.0, 0.45, 0.1), (0.9, 0.3, 0.1)]
    for k, means in enumerate(epochs):
        if k < 2:  # the first two epochs use lambda = 1: the fixed weights
            torch.testing.assert_close(w.effective(), torch.tensor([1.0, 5.0, 10.0]))
        else:  # the third uses the ratio of epochs 1 and 0
            z = [math.exp(x / 2) for x in (1.0 / 2.0, 0.45 / 0.5, 0.1 / 0.2)]
            torch.testing.assert_close(
                w.lambdas, torch.tensor([3 * v / sum(z) for v in z]), rtol=1e-5, atol=1e-6
            )
        for jitter in (-0.1, 0.1):  # two steps per epoch, averaging to the means
            w({t: torch.tensor(m * (1 + jitter)) for t, m in zip(TASKS, means)})
        w.end_epoch()
    # for the next epoch: r = L(2) / L(1), lambda = K softmax(r / 2)
    r = [0.9 / 1.0, 0.3 / 0.45, 0.1 / 0.1]
    z = [math.exp(x / 2) for x in r]
    lam = [3 * v / sum(z) for v in z]
    torch.testing.assert_close(w.lambdas, torch.tensor(lam), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        w.effective(), torch.tensor(lam) * torch.tensor([1.0, 5.0, 10.0]), rtol=1e-5, atol=1e-6
    )
    total = w(losses(1.0, 1.0, 1.0))
    assert total.item() == pytest.approx(sum(a * b for a, b in zip(lam, [1.0, 5.0, 10.0])), rel=1e-5)


def test_dwa_is_one_for_two_epochs_ignores_eval_and_uses_the_reduced_means():
    w = DWAWeighting(TASKS, FIXED)
    w.eval()
    w(losses(5.0, 5.0, 5.0))  # validation losses never enter the averages
    assert w.epoch_steps.item() == 0
    w.train()
    w(losses(1.0, 1.0, 1.0))
    w(losses(float("nan"), 1.0, 1.0))  # a non-finite step does not poison the epoch mean
    w.end_epoch(reduce=lambda t: t * 2)  # e.g. the mean over processes
    torch.testing.assert_close(w.history[1], torch.tensor([2.0, 2.0, 2.0]))
    torch.testing.assert_close(w.lambdas, torch.ones(3))
    torch.testing.assert_close(dwa_lambdas(torch.ones(2), torch.tensor([1.0, 3.0]), 2.0, 1), torch.ones(2))


def test_unknown_scheme_is_rejected():
    with pytest.raises(ValueError, match="model.loss_weighting: expected one of"):
        build_weighting("gradnorm", TASKS, FIXED)


@pytest.mark.parametrize("scheme", ["uncertainty", "dwa"])
def test_weighting_in_a_fit_logs_weights_and_reaches_the_optimizer(scheme, tmp_path):
    from mtlora.cli import run_cli

    cli = run_cli(
        [
            "fit",
            "--config",
            str(CONFIG),
            "--model.loss_weighting",
            scheme,
            "--trainer.max_epochs",
            "3",
            "--data.init_args.tasks",
            "[semseg, normals]",
            "--data.init_args.train_size",
            "8",
            "--data.init_args.val_size",
            "4",
            "--trainer.enable_checkpointing",
            "false",
            "--trainer.logger.init_args.save_dir",
            str(tmp_path),
            "--trainer.default_root_dir",
            str(tmp_path),
        ]
    )
    module = cli.model
    groups = cli.trainer.optimizers[0].param_groups
    weighting_params = {id(p) for p in module.weighting.parameters()}
    with open(Path(cli.trainer.log_dir) / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    logged = [float(r["train/weight/normals"]) for r in rows if r.get("train/weight/normals")]
    assert logged, "train/weight/<task> is logged"
    if scheme == "uncertainty":
        no_decay = next(g for g in groups if g["weight_decay"] == 0.0)
        assert weighting_params <= {id(p) for p in no_decay["params"]}
        assert not torch.allclose(
            module.weighting.log_vars, torch.tensor([0.0, -math.log(20.0)])
        )  # it learned
    else:
        assert not weighting_params
        assert module.weighting.epochs_seen.item() == 3
        assert "weighting.history" in module.state_dict()  # a resumed run keeps its loss history
        assert not torch.allclose(module.weighting.lambdas, torch.ones(2))
