"""CUDA checks: run with `pytest -m cuda` on a machine with a GPU; skipped (never faked) without one.

Each test compares what runs on the GPU with the same computation on the CPU, or runs a whole
job there (search, kill and resume, torchrun with NCCL).
"""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import darts_sg
from darts_sg.train.architect import Architect, frozen
from darts_sg.train.engine import weight_step
from darts_sg.utils.io import load_checkpoint

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["--preset", "smoke", "--epochs", "2", "--subset", "128", "--batch-size", "32", "--no-progress", "--device", "cuda"]


@pytest.fixture(autouse=True)
def _exact_cuda():
    """fp32 without TF32, as the CPU computes, for the CPU-vs-GPU comparisons."""
    saved = (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision)
    torch.backends.cuda.matmul.fp32_precision = torch.backends.cudnn.conv.fp32_precision = "ieee"
    yield
    torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = saved


def _pair(build, policy="plain"):
    """The same freshly built model on the CPU and on the GPU; with policy "cuda", the GPU one
    runs the CUDA device policy's substitutes (wide edges, ...), as the jobs do there."""
    torch.manual_seed(0)
    cpu = build()
    gpu = build()
    gpu.load_state_dict(cpu.state_dict())
    gpu = gpu.cuda()
    if policy == "cuda":
        from darts_sg.speed.accelerate import accelerate, device_policy

        gpu = accelerate(gpu, torch.device("cuda"), device_policy("cuda"))
    return cpu, gpu


def _batch(n=16, size=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g), torch.randint(0, 10, (n,), generator=g)


def _to(batch, device):
    return tuple(t.to(device) for t in batch)


@pytest.mark.parametrize("policy", ["plain", "cuda"])
@pytest.mark.parametrize("order", [1, 2])
def test_search_step_agrees_with_the_cpu(order, policy):
    """The alpha gradients of the first step, then the weights after its weight step.

    The gradients are compared, not the alphas after Adam's first step: that step moves every
    alpha by +-lr whatever the gradient's size, so a near-zero gradient that rounds to the other
    sign on the GPU moves its alpha by 2 lr.
    """
    cpu, gpu = _pair(lambda: darts_sg.build_supernet("sgblock", C=8, layers=5, num_classes=10), policy)
    train, val = _batch(), _batch(seed=2)
    results = []
    for model, device in ((cpu, "cpu"), (gpu, "cuda")):
        w_opt = torch.optim.SGD(model.weights(), 0.025, momentum=0.9, weight_decay=3e-4)
        architect = Architect(model, lr=3e-3, order=order)
        grads, val_loss = architect.alpha_grads(_to(train, device), _to(val, device), w_opt, 0.025)
        with frozen(model.alphas()):
            loss, _, _ = weight_step(model, w_opt, _to(train, device), 5.0)
        results.append((val_loss.item(), loss.item(), [g.cpu() for g in grads], [w.detach().cpu() for w in model.weights()]))
    (val_c, loss_c, grads_c, weights_c), (val_g, loss_g, grads_g, weights_g) = results
    assert val_g == pytest.approx(val_c, rel=1e-4) and loss_g == pytest.approx(loss_c, rel=1e-4)
    for a, b in zip(grads_c, grads_g):
        scale = a.abs().max().item()
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-3 * scale)  # finite differences (order 2) round at ~1e-4 of the largest
    for a, b in zip(weights_c, weights_g):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("policy", ["plain", "cuda"])
def test_retraining_step_agrees_with_the_cpu(policy):
    def build():
        net = darts_sg.build_network("darts_v2", C=8, layers=5, num_classes=10, auxiliary=True)
        net.drop_path_prob = 0.0
        return net

    cpu, gpu = _pair(build, policy)
    batch = _batch(size=32)

    def loss_fn(output, y):
        return F.cross_entropy(output[0], y) + 0.4 * F.cross_entropy(output[1], y)

    losses, weights = [], []
    for model, device in ((cpu, "cpu"), (gpu, "cuda")):
        model.train()
        opt = torch.optim.SGD(model.parameters(), 0.025, momentum=0.9, weight_decay=3e-4)
        loss, _, _ = weight_step(model.forward_with_aux, opt, _to(batch, device), 5.0, loss_fn)
        losses.append(loss.item())
        weights.append([p.detach().cpu() for p in model.parameters()])
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)
    for a, b in zip(*weights):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-5)


def test_second_order_gradient_matches_autograd_on_cuda(monkeypatch):
    from test_architect import second_order_against_autograd

    approx, exact, _ = second_order_against_autograd(monkeypatch, "cuda")
    for a, e in zip(approx, exact):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-8)


def test_bf16_search_step_is_finite_on_cuda():
    if not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    model = darts_sg.build_supernet("sgblock", C=8, layers=5, num_classes=10).cuda()
    w_opt = torch.optim.SGD(model.weights(), 0.025, momentum=0.9)
    architect = Architect(model, lr=3e-3, order=2)
    train, val = _to(_batch(), "cuda"), _to(_batch(), "cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        val_loss, _ = architect.step(train, val, w_opt, 0.025)
        with frozen(model.alphas()):
            loss, _, _ = weight_step(model, w_opt, train, 5.0)
    assert torch.isfinite(val_loss) and torch.isfinite(loss)
    assert all(torch.isfinite(a).all() for a in model.alphas())


def test_fp16_search_step_scales_and_skips_overflows_on_cuda():
    from darts_sg.speed.precision import autocast

    model = darts_sg.build_supernet("sgblock", C=8, layers=5, num_classes=10).cuda()
    train, val = _to(_batch(), "cuda"), _to(_batch(), "cuda")
    w_opt = torch.optim.SGD(model.weights(), 0.025, momentum=0.9)
    for scale, skipped in ((2.0**10, 0), (2.0**60, 1)):  # 2^60 overflows fp16 gradients
        w_scaler = torch.amp.GradScaler("cuda", init_scale=scale)
        architect = Architect(model, lr=3e-3, order=1, scaler=torch.amp.GradScaler("cuda", init_scale=scale))
        with autocast(torch.device("cuda"), "fp16"):
            val_loss, alpha_skipped = architect.step(train, val, w_opt, 0.025)
            with frozen(model.alphas()):
                loss, _, weight_skipped = weight_step(model, w_opt, train, 5.0, scaler=w_scaler)
        assert torch.isfinite(val_loss) and torch.isfinite(loss)
        assert (int(alpha_skipped), int(weight_skipped)) == (skipped, skipped)
        assert all(torch.isfinite(a).all() for a in model.alphas())


def test_batches_held_on_the_gpu_equal_the_cpu_ones(data_root):
    from darts_sg.train.data import BatchLoader, DataAugmentation, load_cifar

    data = load_cifar("cifar10", data_root, train=True).slice(0, 256)
    augmentation = DataAugmentation(cutout=16)
    cpu, gpu = (BatchLoader(data, 64, augmentation, seed=3, device=d) for d in ("cpu", "cuda"))
    for (x_cpu, y_cpu), (x_gpu, y_gpu) in zip(cpu.iterate(2, 1), gpu.iterate(2, 1)):
        assert x_gpu.is_cuda and torch.equal(y_gpu.cpu(), y_cpu)
        torch.testing.assert_close(x_gpu.cpu(), x_cpu, rtol=0, atol=1e-6)


def test_compiled_cells_agree_with_eager_on_cuda():
    import dataclasses

    from darts_sg.speed.accelerate import accelerate, device_policy

    eager, compiled = _pair(lambda: darts_sg.build_supernet("sgblock", C=8, layers=5, num_classes=10))
    cuda = torch.device("cuda")
    eager = accelerate(eager.cuda(), cuda, device_policy("cuda"))
    compiled = accelerate(compiled, cuda, dataclasses.replace(device_policy("cuda"), compile=True))
    x, y = _to(_batch(), "cuda")
    for model in (eager, compiled):
        F.cross_entropy(model(x), y).backward()
    torch.testing.assert_close(compiled(x), eager(x), rtol=1e-4, atol=1e-5)
    for p, q in zip(compiled.parameters(), eager.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("space", ["darts", "sgblock"])
def test_wide_edges_agree_with_plain_edges_on_cuda(space):
    import dataclasses

    from darts_sg.speed.accelerate import accelerate, device_policy
    from darts_sg.speed.wide_edges import WideCell

    plain, wide = _pair(lambda: darts_sg.build_supernet(space, C=8, layers=5, num_classes=10))
    cuda = torch.device("cuda")
    plain = accelerate(plain.cuda(), cuda, dataclasses.replace(device_policy("cuda"), wide_edges=False))
    wide = accelerate(wide, cuda, device_policy("cuda"))
    assert sum(isinstance(m, WideCell) and m._wide_groups is not None for m in wide.modules()) == 5
    x, y = _to(_batch(), "cuda")
    for model in (plain, wide):
        F.cross_entropy(model(x), y).backward()
    torch.testing.assert_close(wide(x), plain(x), rtol=1e-4, atol=1e-5)
    for (name, p), q in zip(wide.named_parameters(), plain.parameters()):  # weights and alphas
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=1e-5, msg=name)
    plain_state = plain.state_dict()
    for key, value in wide.state_dict().items():  # running statistics (the wide batch norms count no batches)
        if not key.endswith("num_batches_tracked"):
            torch.testing.assert_close(value, plain_state[key], rtol=1e-4, atol=1e-5, msg=key)


def test_wide_cells_agree_with_plain_cells_on_cuda():
    """DARTS_V2 with its auxiliary head and drop path: the wide cells draw the same masks from the CUDA generator."""
    import dataclasses

    from darts_sg.speed.accelerate import accelerate, device_policy
    from darts_sg.speed.wide_cells import WideDerivedCell

    plain, wide = _pair(lambda: darts_sg.build_network("darts_v2", C=8, layers=5, num_classes=10, auxiliary=True))
    cuda = torch.device("cuda")
    plain = accelerate(plain.cuda(), cuda, dataclasses.replace(device_policy("cuda"), wide_cells=False))
    wide = accelerate(wide, cuda, device_policy("cuda"))
    assert sum(isinstance(m, WideDerivedCell) and m._waves is not None for m in wide.modules()) == 5
    x, y = _to(_batch(size=32), "cuda")
    outputs = []
    for model in (plain, wide):
        model.drop_path_prob = 0.3
        torch.manual_seed(3)
        logits, logits_aux = model.forward_with_aux(x)
        (F.cross_entropy(logits, y) + 0.4 * F.cross_entropy(logits_aux, y)).backward()
        outputs.append(logits)
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-4, atol=1e-5)
    for (name, p), q in zip(wide.named_parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=1e-5, msg=name)
    plain_state = plain.state_dict()
    for key, value in wide.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            torch.testing.assert_close(value, plain_state[key], rtol=1e-4, atol=1e-5, msg=key)


def _run(args, timeout=600):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_search_job_runs_and_resumes_after_a_kill_on_cuda(tmp_path, data_root):
    out = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "search.py"), *SMOKE, "--checkpoint-every", "1", "--data-root", str(data_root),
           "--out", str(out)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (out / "checkpoint.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    result = _run([str(ROOT / "search.py"), "--resume", str(out), "--data-root", str(data_root), "--no-progress"])
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert json.loads((out / "config.json").read_text())["device"] == "cuda"
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 2


@pytest.mark.parametrize("cuda_graphs", [False, True], ids=["eager", "graphs"])
def test_search_resumed_mid_epoch_on_cuda_is_bit_identical(tmp_path, data_root, monkeypatch, cuda_graphs):
    """As on the CPU (tests/test_search_cli.py): killed after a checkpoint and resumed, the run ends
    with the very weights, alphas, metrics and genotype of the run that was never stopped."""
    from darts_sg.jobs.search import run_search
    from test_search_cli import assert_same_run, interrupt_after, resumable_config

    config = dataclasses.replace(resumable_config(data_root), device="cuda", cuda_graphs=cuda_graphs)
    straight, split = tmp_path / "straight", tmp_path / "split"
    run_search(config, straight, progress=False)
    with monkeypatch.context() as patch:
        interrupt_after(patch, 0, 2)
        with pytest.raises(KeyboardInterrupt):
            run_search(config, split, progress=False)
    run_search(config, split, resume=True, progress=False)
    assert_same_run(straight, split)


def test_one_process_torchrun_search_with_nccl(tmp_path, data_root):
    out = tmp_path / "run"
    env = {**os.environ, "TORCH_DISTRIBUTED_DEBUG": "DETAIL"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "search.py", *SMOKE,
           "--data-root", str(data_root), "--out", str(out)]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2 and all(m["alphas_identical_across_ranks"] for m in metrics)


# --- CUDA graphs (darts_sg.speed.cuda_graphs) --------------------------------------------------------------


def _fit(job_kind, tmp_path, data_root, graphs, epochs=3, same_optimizers_eager=False, resume=False, name="run", **options):
    """A whole smoke job on the planted data, with the training step graphed or eager; returns (job, records).

    `same_optimizers_eager` builds the graphed job's optimizers (fused SGD, capturable Adam, device
    learning rates) but runs its steps eagerly: the comparison that isolates capture and replay.
    """
    from darts_sg.train.config import AUGMENT_PRESETS, AugmentConfig
    from darts_sg.jobs.augment import AugmentJob
    from darts_sg.train.engine import fit
    from darts_sg.train.launch import start_run
    from darts_sg.train.rundir import RunDirectory
    from darts_sg.train.config import SEARCH_PRESETS, SearchConfig
    from darts_sg.jobs.search import SearchJob

    if job_kind == "search":
        config = SearchConfig(**{**SEARCH_PRESETS["smoke"], "subset": 160, "epochs": epochs, "alpha_lr": 3e-3,
                                 "data_root": str(data_root), "device": "cuda", "deterministic": True,
                                 "cuda_graphs": graphs, **options})  # fmt: skip
        make = SearchJob
    else:
        config = AugmentConfig(**{**AUGMENT_PRESETS["smoke"], "genotype": "darts_v2", "train_subset": 160, "epochs": epochs,
                                  "drop_path": 0.3, "data_root": str(data_root), "device": "cuda", "deterministic": True,
                                  "cuda_graphs": graphs, **options})  # fmt: skip
        make = AugmentJob
    run = RunDirectory(tmp_path / name)
    device, rank, world, acceleration = start_run(run, config, resume=resume)
    assert acceleration.cuda_graphs == graphs
    job = make(config, run, device, rank, world, acceleration)
    if same_optimizers_eager:
        job.step.graphed = None
    records = fit(job, run, config.epochs, resume=resume, progress=False)
    return job, records


def _assert_runs_agree(a, b, rtol, atol):
    (job_a, records_a), (job_b, records_b) = a, b
    for ra, rb in zip(records_a, records_b, strict=True):
        for key in ("train_loss", "val_loss", "test_loss", "train_alpha_loss"):
            if key in ra:
                assert rb[key] == pytest.approx(ra[key], rel=rtol, abs=atol), key
    for (name, p), (_, q) in zip(job_a.model.state_dict().items(), job_b.model.state_dict().items()):
        if p.is_floating_point():
            torch.testing.assert_close(q, p, rtol=rtol, atol=atol, msg=name)


@pytest.mark.parametrize("order", [1, 2])
def test_graphed_search_replays_the_eager_steps(tmp_path, planted_data_root, order):
    """15 steps over 3 epochs (the learning rate changes each epoch): replayed = eager with the same optimizers."""
    graphed = _fit("search", tmp_path, planted_data_root, True, order=order, name="graphed")
    eager = _fit("search", tmp_path, planted_data_root, True, order=order, same_optimizers_eager=True, name="eager")
    plain = _fit("search", tmp_path, planted_data_root, False, order=order, name="plain")
    steps = graphed[0].step.graphed
    assert steps.captures == 1 and steps.replays == 15 - 3  # three eager steps, then one capture replayed
    _assert_runs_agree(eager, graphed, rtol=1e-5, atol=1e-6)
    _assert_runs_agree(plain, graphed, rtol=1e-3, atol=1e-4)  # fused SGD and capturable Adam round differently (1.1e-4 seen)


def test_graphed_retraining_replays_the_eager_steps_with_drop_path(tmp_path, planted_data_root):
    """One graph per epoch's drop-path probability; the masks come from torch's generator, as eagerly."""
    graphed = _fit("augment", tmp_path, planted_data_root, True, name="graphed")
    eager = _fit("augment", tmp_path, planted_data_root, True, same_optimizers_eager=True, name="eager")
    steps = graphed[0].step.graphed  # 5 steps an epoch: 3 eager + capture + replay, then one eager step and a capture per new p
    assert (steps.captures, steps.replays) == (3, 2 + 4 + 4)
    assert [r["drop_path_prob"] for r in graphed[1]] == pytest.approx([0.0, 0.1, 0.2])
    _assert_runs_agree(eager, graphed, rtol=1e-5, atol=1e-6)


def test_a_graphed_search_resumes_eagerly_and_back(tmp_path, planted_data_root):
    """Checkpoints load across the two paths: 2 epochs graphed + 1 eager, and 2 eager + 1 graphed, match 3 graphed."""
    straight = _fit("search", tmp_path, planted_data_root, True, name="straight")
    _fit("search", tmp_path, planted_data_root, True, epochs=2, name="a")
    first = _fit("search", tmp_path, planted_data_root, False, resume=True, name="a")
    _fit("search", tmp_path, planted_data_root, False, epochs=2, name="b")
    second = _fit("search", tmp_path, planted_data_root, True, resume=True, name="b")
    for resumed in (first, second):
        assert [r["epoch"] for r in resumed[1]] == [1, 2, 3]
        _assert_runs_agree(straight, resumed, rtol=1e-3, atol=1e-4)


def test_search_cli_with_cuda_graphs_runs_and_says_so(tmp_path, data_root):
    out = tmp_path / "run"
    result = _run([str(ROOT / "search.py"), *SMOKE, "--cuda-graphs", "--data-root", str(data_root), "--out", str(out)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / "config.json").read_text())["acceleration"]["cuda_graphs"] is True
    fp16 = _run([str(ROOT / "search.py"), *SMOKE, "--cuda-graphs", "--amp", "fp16", "--data-root", str(data_root), "--out", str(tmp_path / "fp16")])
    assert fp16.returncode == 0, fp16.stderr[-3000:]
    assert "--cuda-graphs is off for this run: fp16 loss scaling" in fp16.stderr


def test_graphed_evaluation_equals_the_eager_one(planted_data_root):
    """Full batches and the last, smaller one each get their graph; three passes, the same sums as eager."""
    from darts_sg.train.data import BatchLoader, load_cifar
    from darts_sg.train.engine import evaluate, graphed_batch_sums

    torch.manual_seed(0)
    model = darts_sg.build_supernet("sgblock", C=8, layers=5, num_classes=10).cuda()
    loader = BatchLoader(load_cifar("cifar10", planted_data_root, train=True), 48, shuffle=False, drop_last=False, device="cuda")
    eager = evaluate(model, loader)
    sums = graphed_batch_sums(model)
    for _ in range(3):  # eager, then captured, then replayed
        graphed = evaluate(model, loader, sums)
        assert graphed["loss"] == pytest.approx(eager["loss"], rel=1e-6) and graphed["acc"] == eager["acc"]
    assert model.training  # evaluate puts it back
