"""MultiPathLoRALinear maths against explicit matrix computations, per mode."""

import pytest
import torch
from torch import nn

from mtlora.models.lora import LoRASpec, MultiPathLoRALinear, inject_lora


def make_layer(mode="matrix", paths=("a", "b", "c"), shared_rank=3, path_rank=2, dropout=0.0, seed=0):
    torch.manual_seed(seed)
    layer = MultiPathLoRALinear(
        nn.Linear(5, 7), LoRASpec(shared_rank, tuple(paths), path_rank, 4.0, 2.0, dropout, mode)
    )
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if name.endswith("_B"):
                p.normal_()
    return layer.eval()


def test_init_is_exact_noop_and_kaiming_bounds():
    base = nn.Linear(5, 7)
    layer = MultiPathLoRALinear(base, LoRASpec(3, ("a", "b"), 2))
    x = torch.randn(4, 5)
    torch.testing.assert_close(layer(x), base(x))
    shared, paths = layer.forward_branch(x)
    torch.testing.assert_close(paths, base(x).expand(2, 4, 7))
    assert layer.lora_shared_A.abs().max() <= 1 / 5**0.5
    assert layer.lora_paths_A.abs().max() <= 1 / 5**0.5
    assert torch.count_nonzero(layer.lora_shared_B) == 0 and torch.count_nonzero(layer.lora_paths_B) == 0
    assert layer.lora_paths_A.shape == (2, 2, 5) and layer.lora_paths_B.shape == (2, 7, 2)


def explicit(layer, x, x_paths=None):
    W, b = layer.linear.weight, layer.linear.bias
    P = x @ W.T + b
    shared_delta = 4.0 * x @ layer.lora_shared_A.T @ layer.lora_shared_B.T if layer.shared_rank else 0
    deltas = []
    for p in range(layer.num_paths):
        u = x if x_paths is None else x_paths[p]
        deltas.append(2.0 * u @ layer.lora_paths_A[p].T @ layer.lora_paths_B[p].T)
    return P, shared_delta, deltas


@pytest.mark.parametrize("given_paths", [False, True])
def test_matrix_mode_excludes_shared_delta_and_reads_shared_input(given_paths):
    layer = make_layer("matrix")
    x = torch.randn(2, 4, 5)
    xp = torch.randn(3, 2, 4, 5) if given_paths else None
    P, sd, deltas = explicit(layer, x, xp)
    shared, paths = layer.forward_branch(x, xp)
    torch.testing.assert_close(shared, P + sd)
    for p in range(3):
        torch.testing.assert_close(paths[p], P + deltas[p])  # frozen weight on the shared x


def test_matrixv2_includes_shared_delta():
    layer = make_layer("matrixv2")
    x, xp = torch.randn(6, 5), torch.randn(3, 6, 5)
    P, sd, deltas = explicit(layer, x, xp)
    shared, paths = layer.forward_branch(x, xp)
    torch.testing.assert_close(shared, P + sd)
    for p in range(3):
        torch.testing.assert_close(paths[p], P + sd + deltas[p])


def test_addition_mode_layernorm_of_sum():
    layer = make_layer("addition")
    assert not hasattr(layer, "lora_shared_A") and hasattr(layer, "lora_norm")
    with torch.no_grad():
        layer.lora_norm.weight.normal_()
    x = torch.randn(6, 5)
    P, _, deltas = explicit(layer, x)
    shared, paths = layer.forward_branch(x)
    task_outs = [P + d for d in deltas]
    torch.testing.assert_close(paths, torch.stack(task_outs))
    torch.testing.assert_close(shared, P + layer.lora_norm(sum(task_outs)))  # P counted T times, as official
    torch.testing.assert_close(layer(x), shared)


def test_pathless_layer_coerced_to_matrix_and_lora_only_rejected():
    layer = MultiPathLoRALinear(nn.Linear(5, 7), LoRASpec(2, (), 0, mode="addition"))
    assert layer.mode == "matrix" and hasattr(layer, "lora_shared_A")
    with pytest.raises(ValueError, match="lora_only"):
        MultiPathLoRALinear(nn.Linear(5, 7), LoRASpec(2, ("a",), 2, mode="lora_only"))
    with pytest.raises(ValueError, match="ranks must be"):
        MultiPathLoRALinear(nn.Linear(5, 7), LoRASpec(-1))


def test_streams_apply_own_path_and_base_on_own_input():
    layer = make_layer("matrix", shared_rank=0)
    xs = torch.randn(3, 2, 5)
    out = layer.forward_streams(xs)
    for p in range(3):
        expected = xs[p] @ layer.linear.weight.T + layer.linear.bias
        expected = expected + 2.0 * xs[p] @ layer.lora_paths_A[p].T @ layer.lora_paths_B[p].T
        torch.testing.assert_close(out[p], expected)
    with pytest.raises(ValueError, match="expected 3 streams"):
        layer.forward_streams(xs[:2])


def test_dropout_only_on_lowrank_input():
    layer = make_layer("matrix", dropout=0.5).train()
    with torch.no_grad():
        layer.lora_shared_B.zero_()
        layer.lora_paths_B.zero_()
    x = torch.randn(64, 5)
    torch.testing.assert_close(layer(x), layer.linear(x))  # frozen path never sees dropout
    layer2 = make_layer("matrix", dropout=0.5).train()
    torch.manual_seed(1)
    a = layer2(x)
    torch.manual_seed(2)
    b = layer2(x)
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("mode", ["matrix", "matrixv2"])
def test_merge_unmerge_roundtrip(mode):
    layer = make_layer(mode)
    x, xp = torch.randn(6, 5), torch.randn(3, 6, 5)
    W0 = layer.linear.weight.clone()
    ref_shared, ref_paths = layer.forward_branch(x, xp)
    layer.merge()
    assert layer.merged and not torch.equal(layer.linear.weight, W0)
    shared, paths = layer.forward_branch(x, xp)
    torch.testing.assert_close(shared, ref_shared, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(paths, ref_paths, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer(x), ref_shared, atol=1e-5, rtol=1e-5)
    layer.unmerge()
    torch.testing.assert_close(layer.linear.weight, W0, atol=1e-6, rtol=0)


def test_inject_by_name():
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    wrapped = inject_lora(net, lambda name, _: LoRASpec(2) if name == "2" else None)
    assert wrapped == ["2"] and isinstance(net[2], MultiPathLoRALinear) and isinstance(net[0], nn.Linear)
    assert set(dict(net.named_parameters())) >= {"2.linear.weight", "2.lora_shared_A", "2.lora_shared_B"}
