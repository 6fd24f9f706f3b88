"""The acceleration layer: the per-device policy, the module swaps, and that they change nothing but speed."""

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import darts_sg
from darts_sg.speed.accelerate import FLAGS, Acceleration, accelerate, device_policy, resolve_acceleration
from darts_sg.speed.batchnorm import UncountedBatchNorm2d, WideBatchNorm2d
from darts_sg.model.cells import MixedOp
from darts_sg.train.config import RunConfig
from darts_sg.speed.fused_mixed_op import FusedMixedOp
from darts_sg.speed.layout import LayoutKeepingFactorizedReduce, LayoutKeepingGlobalPool
from darts_sg.speed.norm_act_conv import LeanSequential
from darts_sg.model.ops import FactorizedReduce
from darts_sg.speed.polyphase import PolyphaseDilatedConv2d
from darts_sg.speed.relu6 import LeanReLU6

CPU = torch.device("cpu")
CPU_SUBSTITUTES = ("channels_last", "fast_dilated", "fast_batchnorm", "keep_layout", "lean_blocks")
SUBSTITUTE_CLASSES = (
    WideBatchNorm2d, PolyphaseDilatedConv2d, LayoutKeepingFactorizedReduce, LayoutKeepingGlobalPool, FusedMixedOp, LeanReLU6, LeanSequential,
)


def _supernet():
    torch.manual_seed(0)
    return darts_sg.build_supernet("sgblock", C=8, layers=3, num_classes=10, steps=2).double()


def _kinds(model):
    return {type(m) for m in model.modules()}


def test_cpu_policy_takes_every_cpu_substitute():
    policy = device_policy("cpu")
    assert all(getattr(policy, name) for name in CPU_SUBSTITUTES)
    assert policy.share_relu and policy.fused_sum and policy.lean_relu6
    assert not policy.recompute_cells and policy.amp == "off" and not policy.cudnn_benchmark


def test_cuda_policy_takes_no_cpu_substitute_and_benchmarks_cudnn():
    policy = device_policy("cuda")
    assert not any(getattr(policy, name) for name in CPU_SUBSTITUTES)
    assert policy.share_relu and policy.fused_sum and policy.lean_relu6
    assert policy.cudnn_benchmark
    assert not device_policy("cuda", deterministic=True).cudnn_benchmark


def test_an_explicit_flag_overrides_the_policy():
    cuda = torch.device("cuda")  # a device name only: no GPU needed to decide
    assert resolve_acceleration(RunConfig(), cuda) == device_policy("cuda")
    chosen = resolve_acceleration(RunConfig(channels_last=True, fast_batchnorm=True), cuda)
    assert chosen.channels_last and chosen.fast_batchnorm and not chosen.fast_dilated
    off = resolve_acceleration(RunConfig(fast_dilated=False, deterministic=True), CPU)
    assert not off.fast_dilated and off.fast_batchnorm and not off.cudnn_benchmark
    assert set(FLAGS) <= {f.name for f in dataclasses.fields(RunConfig)} | {"share_relu", "fused_sum"}


def test_the_model_code_builds_plain_modules():
    kinds = _kinds(_supernet()) | _kinds(darts_sg.build_network("darts_v2", C=8, layers=5, auxiliary=True))
    assert not kinds & {*SUBSTITUTE_CLASSES, UncountedBatchNorm2d}
    assert {nn.BatchNorm2d, FactorizedReduce, MixedOp, nn.AdaptiveAvgPool2d, nn.ReLU6} <= kinds


def test_accelerate_on_cpu_swaps_each_substitute_and_keeps_the_state():
    model = _supernet()
    params = {name: p for name, p in model.named_parameters()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    accelerate(model, CPU, device_policy("cpu"))
    assert set(SUBSTITUTE_CLASSES) <= _kinds(model)
    assert not {nn.BatchNorm2d, FactorizedReduce, MixedOp, nn.AdaptiveAvgPool2d, nn.ReLU6} & _kinds(model)
    dilated = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.dilation[0] > 1]
    assert dilated and all(type(m) is PolyphaseDilatedConv2d for m in dilated)
    # the very same parameter objects (an optimizer made before still works), same keys and values
    assert all(p is params[name] for name, p in model.named_parameters())
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert model.stem[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_the_cuda_policy_leaves_the_cpu_substitutes_out():
    model = accelerate(_supernet(), CPU, device_policy("cuda"))  # what a CUDA run applies, checked on the CPU
    kinds = _kinds(model)
    assert not kinds & {WideBatchNorm2d, PolyphaseDilatedConv2d, LayoutKeepingFactorizedReduce, LayoutKeepingGlobalPool, LeanSequential}
    assert {FusedMixedOp, LeanReLU6, UncountedBatchNorm2d} <= kinds
    assert nn.BatchNorm2d not in kinds  # every batch norm has a momentum: none counts its batches
    assert model.stem[0].weight.is_contiguous()
    assert UncountedBatchNorm2d not in _kinds(accelerate(_supernet(), CPU, device_policy("cpu")))  # the CPU keeps its own


def test_accelerate_applies_recomputation_and_no_substitute_when_all_off():
    off = Acceleration(**{name: False for name in Acceleration.__dataclass_fields__})
    model = accelerate(_supernet(), CPU, dataclasses.replace(off, recompute_cells=True))
    assert model.recompute_cells
    assert not _kinds(model) & set(SUBSTITUTE_CLASSES)


@pytest.mark.parametrize("build", ["supernet", "network"])
def test_accelerated_model_computes_what_the_plain_one_does(build):
    if build == "supernet":
        plain = _supernet()
    else:
        torch.manual_seed(0)
        plain = darts_sg.build_network("darts_v2", C=8, layers=5, auxiliary=False).double()
    fast = accelerate(copy.deepcopy(plain), CPU, device_policy("cpu"))
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3])
    results = []
    for model, inputs in ((plain, x), (fast, x.contiguous(memory_format=torch.channels_last))):
        model.zero_grad()
        loss = F.cross_entropy(model(inputs), y)
        loss.backward()
        results.append((loss, {n: p.grad for n, p in model.named_parameters()}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-12, atol=1e-12)
    for name, grad in grads_a.items():
        torch.testing.assert_close(grads_b[name], grad, rtol=1e-9, atol=1e-12, msg=name)


def test_compile_compiles_every_cell_in_place(monkeypatch):
    """--compile is regional: each cell compiled in place (same parameters and state-dict keys), same results.
    The test compiles with dynamo's `eager` backend (graph capture without code generation), which takes
    seconds instead of minutes; the CUDA suite runs the real compiler. Three ops (the sandglass block, a
    classic conv, a skip) keep dynamo's tracing, which grows with the ops per edge, short."""
    import copy

    compiled = []
    original = torch.nn.Module.compile

    def compile_quickly(self, *args, **kwargs):
        compiled.append(self)
        original(self, backend="eager")

    monkeypatch.setattr(torch.nn.Module, "compile", compile_quickly)
    torch.manual_seed(0)
    model = darts_sg.build_supernet(["sg_block", "sep_conv_3x3", "skip_connect"], C=4, layers=3, num_classes=10, steps=1)
    eager = copy.deepcopy(model)
    cpu = torch.device("cpu")
    model = accelerate(model, cpu, dataclasses.replace(device_policy("cpu"), compile=True))
    eager = accelerate(eager, cpu, device_policy("cpu"))
    assert compiled == list(model.cells)
    assert list(model.state_dict()) == list(eager.state_dict())
    x = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    for net in (model, eager):
        net(x).logsumexp(1).sum().backward()
    torch.testing.assert_close(model(x), eager(x))
    for p, q in zip(model.parameters(), eager.parameters()):
        torch.testing.assert_close(p.grad, q.grad)
