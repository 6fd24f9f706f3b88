"""What the CUDA-graph path needs that a CPU can check: device learning rates under a schedule,
optimizer state that loads across the eager and graphed paths, and when graphs are refused.

The capture and replay themselves need a GPU: tests/test_cuda.py."""

import copy

import pytest
import torch

from darts_sg.speed.accelerate import resolve_acceleration
from darts_sg.speed.cuda_graphs import GraphedStep, device_learning_rates, graph_blocker, load_optimizer_state
from darts_sg.train.config import SearchConfig


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))


def _train(model, optimizer, scheduler, steps):
    g = torch.Generator().manual_seed(1)
    lrs = []
    for _ in range(steps):
        x, y = torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        lrs.append(float(optimizer.param_groups[0]["lr"]))
        scheduler.step()
    return lrs


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_device_learning_rates_follow_the_schedule_and_train_the_same(kind):
    """A schedule written into a learning-rate tensor gives the same rates and weights as plain floats."""
    results = []
    for on_device in (False, True):
        model = _model()
        if kind == "sgd":
            optimizer = torch.optim.SGD(model.parameters(), 0.1, momentum=0.9, weight_decay=3e-4)
        else:
            optimizer = torch.optim.Adam(model.parameters(), 0.05, betas=(0.5, 0.999), weight_decay=1e-3)
        if on_device:
            device_learning_rates(optimizer, torch.device("cpu"))
            lr_tensor = optimizer.param_groups[0]["lr"]
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, 5, eta_min=0.001)
        lrs = _train(model, optimizer, scheduler, 5)
        if on_device:
            assert optimizer.param_groups[0]["lr"] is lr_tensor  # written in place: a captured graph sees it
        results.append((lrs, [p.detach().clone() for p in model.parameters()]))
    (lrs_float, w_float), (lrs_tensor, w_tensor) = results
    assert lrs_tensor == pytest.approx(lrs_float, rel=1e-6)
    assert len(set(lrs_float)) == 5  # the schedule moved
    for a, b in zip(w_float, w_tensor):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)


def test_optimizer_state_loads_across_float_and_tensor_learning_rates():
    model = _model()
    plain = torch.optim.SGD(model.parameters(), 0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(plain, 5)
    _train(model, plain, scheduler, 2)
    saved = copy.deepcopy(plain.state_dict())

    graphed = torch.optim.SGD(model.parameters(), 0.5, momentum=0.9)
    device_learning_rates(graphed, torch.device("cpu"))
    lr_tensor = graphed.param_groups[0]["lr"]
    load_optimizer_state(graphed, saved)
    assert graphed.param_groups[0]["lr"] is lr_tensor and float(lr_tensor) == pytest.approx(saved["param_groups"][0]["lr"])
    for p in model.parameters():
        torch.testing.assert_close(graphed.state[p]["momentum_buffer"], plain.state[p]["momentum_buffer"])

    back = torch.optim.SGD(model.parameters(), 0.5, momentum=0.9)
    load_optimizer_state(back, graphed.state_dict())
    assert isinstance(back.param_groups[0]["lr"], float) and back.param_groups[0]["lr"] == pytest.approx(float(lr_tensor))
    floats = torch.optim.SGD(model.parameters(), 0.5, momentum=0.9)
    load_optimizer_state(floats, saved)  # float to float: the checkpoint's rate, not the constructor's
    assert floats.param_groups[0]["lr"] == saved["param_groups"][0]["lr"] != 0.5


def test_capturable_adam_stays_capturable_after_loading_an_eager_checkpoint():
    model = _model()
    eager = torch.optim.Adam(model.parameters(), 0.01)
    _train(model, eager, torch.optim.lr_scheduler.ConstantLR(eager, 1.0), 2)
    capturable = torch.optim.Adam(model.parameters(), 0.01, capturable=True, foreach=True)
    load_optimizer_state(capturable, eager.state_dict())
    assert capturable.param_groups[0]["capturable"] and capturable.param_groups[0]["foreach"]
    assert all(float(capturable.state[p]["step"]) == 2 for p in model.parameters())
    again = torch.optim.Adam(model.parameters(), 0.01)
    load_optimizer_state(again, capturable.state_dict())
    assert not again.param_groups[0]["capturable"]
    assert all(again.state[p]["step"].device.type == "cpu" for p in model.parameters())


@pytest.mark.parametrize(
    "device, amp, world, compile, reason",
    [
        ("cpu", "off", 1, False, "need a CUDA device"),
        ("cuda", "fp16", 1, False, "fp16 loss scaling"),
        ("cuda", "off", 2, False, "all-reduce"),
        ("cuda", "off", 1, True, "--compile"),
        ("cuda", "bf16", 1, False, None),
    ],
)
def test_graph_blocker_names_what_stands_in_the_way(device, amp, world, compile, reason):
    blocker = graph_blocker(torch.device(device), amp, world, compile)
    assert (blocker is None) if reason is None else (reason in blocker)


def test_explicit_cuda_graphs_on_the_cpu_are_turned_off_with_one_line():
    lines = []
    acceleration = resolve_acceleration(SearchConfig(cuda_graphs=True), torch.device("cpu"), lines.append)
    assert not acceleration.cuda_graphs
    assert len(lines) == 1 and "CUDA graphs need a CUDA device" in lines[0]
    auto = []
    assert not resolve_acceleration(SearchConfig(), torch.device("cpu"), auto.append).cuda_graphs
    assert auto == []  # left on auto: nothing to say


class _RecordedGraphs(GraphedStep):
    """GraphedStep with its two CUDA calls replaced by records: its bookkeeping runs on any machine."""

    def __init__(self, fail_capture=False, **options):
        super().__init__(lambda x: {"y": x * 2}, **options)
        self.events, self.fail_capture = [], fail_capture

    def _eager(self, inputs):
        self.events.append("eager")
        return self.step(*inputs)

    def _capture(self, inputs):
        if self.fail_capture:
            raise RuntimeError("operation not permitted when stream is capturing\nmore detail")
        self.events.append("capture")
        static_inputs = [t.clone() for t in inputs]
        static_outputs = self.step(*static_inputs)

        class Replay:  # recomputes into the static outputs from the static inputs, as a replay does
            @staticmethod
            def replay():
                self.events.append("replay")
                for name, value in self.step(*static_inputs).items():
                    static_outputs[name].copy_(value)

        self.captures += 1
        return Replay, static_inputs, static_outputs


def test_graphed_step_warms_up_captures_once_per_key_and_replays_fresh_inputs():
    steps = _RecordedGraphs(eager_steps=2)
    outputs = [steps("p=0", torch.full((3,), float(i)))["y"] for i in range(4)]
    outputs += [steps("p=0.1", torch.full((3,), float(i)))["y"] for i in range(4, 7)]
    assert steps.events == ["eager", "eager", "capture", "replay", "replay", "eager", "capture", "replay", "replay"]
    for i, y in enumerate(outputs):  # every call computed on its own input
        assert torch.equal(y, torch.full((3,), 2.0 * i))
    assert outputs[2] is not outputs[3] and outputs[2].data_ptr() != outputs[3].data_ptr()  # copies, not the graph's buffers
    assert list(steps.graphs) == [steps._signature("p=0.1", [torch.zeros(3)])]  # the old key's graph was released
    steps("p=0.1", torch.zeros(2))  # a new shape: one eager step of its own first
    assert steps.events[-1] == "eager"


def test_a_step_that_cannot_be_captured_stays_eager_and_says_why_once():
    lines = []
    steps = _RecordedGraphs(fail_capture=True, eager_steps=1, log=lines.append)
    outputs = [steps("k", torch.full((2,), float(i)))["y"] for i in range(4)]
    assert steps.events == ["eager"] * 4 and steps.captures == 0
    assert [y.tolist() for y in outputs] == [[0.0, 0.0], [2.0, 2.0], [4.0, 4.0], [6.0, 6.0]]
    assert lines == ["CUDA graphs: the step could not be captured (operation not permitted when stream is capturing); it runs eagerly from now on"]
