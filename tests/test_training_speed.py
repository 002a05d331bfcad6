"""Training-path properties: torch.compile without graph breaks, gradient checkpointing, no host syncs.

Inductor on this CPU takes minutes per graph, so the compile tests use ``backend="aot_eager"``
(Dynamo capture with ``fullgraph=True`` + AOTAutograd forward/backward tracing, run eagerly) and
``backend="eager"`` (Dynamo capture only): both fail on any graph break, which is what these tests
are for.  ``mtlora bench --compile true`` checks inductor outputs against eager on the target device.
"""

import warnings
from dataclasses import replace

import pytest
import torch

from mtlora.bench import ValueReadCounter, synthetic_batch
from mtlora.models.model import MultiTaskModel
from mtlora.models.plans import AdapterConfig
from mtlora.training.module import MultiTaskModule

from conftest import PASCAL_CHANNELS, randomize_lora, tiny_encoder

ALL_TASKS = {**PASCAL_CHANNELS, "edge": 1, "depth": 1}
PROGRESSIVE = AdapterConfig(
    shared_rank=4,
    task_rank=2,
    dropout=0.0,
    method="progressive",
    groups=["shared", "shared", [["semseg", "human_parts"], ["sal", "normals"]], "tasks"],
    split_block=[None, None, 1, 0],
)


def build(adapter: AdapterConfig, tasks: dict[str, int] = PASCAL_CHANNELS, **encoder) -> MultiTaskModel:
    torch.manual_seed(0)
    model = MultiTaskModel(tasks, tiny_encoder(**encoder), adapter)
    randomize_lora(model, std=0.1)
    return model


def loss_and_grads(model: torch.nn.Module, net: torch.nn.Module, x: torch.Tensor):
    model.zero_grad(set_to_none=True)
    out = net(x)
    sum((v.float() ** 2).mean() for v in out.values()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, grads


def test_compiled_training_step_fullgraph_equals_eager():
    """Forward + backward of the MTLoRA model compile as one graph and match eager."""
    two_tasks = {"semseg": 21, "normals": 3}  # two heads: a shorter trace, the same encoder code paths
    model = build(AdapterConfig(shared_rank=4, task_rank=2, dropout=0.0), two_tasks).train()
    x = torch.randn(2, 3, 64, 64)
    ref_out, ref_grads = loss_and_grads(model, model, x)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    out, grads = loss_and_grads(model, compiled, x)
    for task in two_tasks:
        torch.testing.assert_close(out[task], ref_out[task], atol=1e-5, rtol=1e-5)
    assert grads.keys() == ref_grads.keys() and any("lora_paths_A" in n for n in grads)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_stream_plan_with_checkpointing_captures_one_graph():
    """Stream blocks (index_select routes) and checkpointed blocks trace without graph breaks."""
    model = build(PROGRESSIVE, gradient_checkpointing=True).train()
    x = torch.randn(1, 3, 64, 64)
    ref_out, _ = loss_and_grads(model, model, x)
    out, grads = loss_and_grads(model, torch.compile(model, backend="eager", fullgraph=True), x)
    torch.testing.assert_close(out["sal"], ref_out["sal"], atol=1e-5, rtol=1e-5)
    assert any("lora_paths_B" in n for n in grads)


@pytest.mark.parametrize(
    "adapter",
    [AdapterConfig(shared_rank=4, task_rank=2, dropout=0.0), PROGRESSIVE],
    ids=["mtlora", "progressive"],
)
def test_gradient_checkpointing_equals_plain_backward(adapter):
    model = build(adapter, drop_path_rate=0.0).train()
    x = torch.randn(2, 3, 64, 64)
    ref_out, ref_grads = loss_and_grads(model, model, x)
    model.backbone.cfg = replace(model.backbone.cfg, gradient_checkpointing=True)
    out, grads = loss_and_grads(model, model, x)
    for task in PASCAL_CHANNELS:
        torch.testing.assert_close(out[task], ref_out[task], atol=0, rtol=0)
    assert grads.keys() == ref_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], atol=1e-6, rtol=1e-5, msg=name)


def test_training_and_validation_steps_read_no_tensor_values():
    """No ``.item()``/``bool(tensor)`` in the steps: on a GPU each would stall the host."""
    module = MultiTaskModule(
        ALL_TASKS, encoder=tiny_encoder(), adapter={"shared_rank": 4, "task_rank": 2}, delta_m_baseline=None
    )
    batch = synthetic_batch(ALL_TASKS, 2, 64, torch.device("cpu"))
    with ValueReadCounter() as control:
        torch.ones(2).sum().item()  # the counter does see a read
    assert control.count == 1
    with warnings.catch_warnings(), ValueReadCounter() as counter:
        warnings.simplefilter("ignore")  # self.log without a Trainer warns
        loss = module.training_step(batch, 0)
        loss.backward()
    assert counter.count == 0
    module.eval()
    with warnings.catch_warnings(), ValueReadCounter() as counter, torch.no_grad():
        warnings.simplefilter("ignore")
        module.validation_step(batch, 0)
    assert counter.count == 0


def test_module_compile_option_compiles_model_in_place():
    module = MultiTaskModule(
        PASCAL_CHANNELS,
        encoder=tiny_encoder(),
        adapter={"shared_rank": 4, "task_rank": 2},
        delta_m_baseline=None,
        compile=True,
    )
    keys = set(module.state_dict())
    assert module.model._compiled_call_impl is None
    module.configure_model()
    module.configure_model()  # Lightning may call the hook more than once
    assert module.model._compiled_call_impl is not None
    assert set(module.state_dict()) == keys  # checkpoints keep their names (no "_orig_mod.")
    assert (
        MultiTaskModule(PASCAL_CHANNELS, encoder=tiny_encoder(), delta_m_baseline=None).hparams.compile
        is False
    )
