import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from darts_sg.train.data import load_cifar10
from darts_sg.jobs.deploy import CIFAR10_CLASSES, ONNX_HINT, DeployError, evaluate_network, export_network, load_trained

ROOT = Path(__file__).resolve().parents[1]


def darts_sg_cli(*args):
    return subprocess.run([sys.executable, "-m", "darts_sg", *map(str, args)], capture_output=True, text=True, timeout=300)


def test_evaluate_reproduces_the_runs_test_accuracy_per_class(planted_training_run, planted_data_root):
    run, summary = planted_training_run
    network, config = load_trained(run / "model.pt")
    assert not network.training and config.layers == 3
    result = evaluate_network(network, str(planted_data_root))
    assert result["images"] == 64 and result["test_acc"] == pytest.approx(summary["test_acc"])
    assert result["test_loss"] == pytest.approx(summary["test_loss"], rel=1e-3)
    assert result["params"] == summary["params"] and result["latency_ms"] > 0
    per_class = result["per_class_acc"]
    assert list(per_class) == list(CIFAR10_CLASSES)
    assert all(per_class[name] is None for name in CIFAR10_CLASSES[2:])  # the planted set has classes 0 and 1 only
    labels = load_cifar10(planted_data_root, train=False).labels
    counts = [int((labels == k).sum()) for k in (0, 1)]
    overall = (per_class["airplane"] * counts[0] + per_class["automobile"] * counts[1]) / 64
    assert overall == pytest.approx(result["test_acc"])


def test_evaluate_command_prints_and_writes_json(planted_training_run, planted_data_root, tmp_path):
    run, summary = planted_training_run
    result = darts_sg_cli("evaluate", run, "--data-root", planted_data_root, "--device", "cpu", "--json", tmp_path / "e.json")
    assert result.returncode == 0, result.stderr
    first = result.stdout.splitlines()[0]
    assert first.startswith(f"test accuracy {100 * summary['test_acc']:.2f}%") and "ms/image" in first
    assert "  airplane" in result.stdout and "n/a" in result.stdout
    assert json.loads((tmp_path / "e.json").read_text())["test_acc"] == pytest.approx(summary["test_acc"])


def test_torchscript_export_gives_the_same_logits(planted_training_run, tmp_path):
    run, _ = planted_training_run
    result = darts_sg_cli("export", run, "--format", "torchscript", "-o", tmp_path / "net.pt")
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr
    with warnings.catch_warnings():  # torch.jit is deprecated in torch 2.15; TorchScript runtimes still load the file
        warnings.simplefilter("ignore", FutureWarning)
        exported = torch.jit.load(str(tmp_path / "net.pt"))
    network, _ = load_trained(run)
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = network(x)
        torch.testing.assert_close(exported(x), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(exported(x[:2]), expected[:2], rtol=1e-5, atol=1e-5)  # any batch size
    meta = json.loads((tmp_path / "net.pt.json").read_text())
    assert meta["classes"][0] == "airplane" and meta["genotype"]["normal"][0] == ["sep_conv_3x3", 0]


def test_onnx_export_gives_the_same_logits(planted_training_run, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    run, _ = planted_training_run
    network, config = load_trained(run)
    path = export_network(network, config, tmp_path / "net.onnx", "onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    (logits,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(logits), network(x), rtol=1e-4, atol=1e-4)


def test_onnx_export_without_onnx_says_what_to_install(planted_training_run, tmp_path, monkeypatch):
    run, _ = planted_training_run
    network, config = load_trained(run)
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if it were not installed
    with pytest.raises(DeployError) as error:
        export_network(network, config, tmp_path / "net.onnx", "onnx")
    assert str(error.value) == ONNX_HINT and "pip install onnx onnxscript" in ONNX_HINT
    assert not (tmp_path / "net.onnx").exists()


def test_evaluating_something_that_is_not_a_retraining_run_is_one_line(tmp_path):
    (tmp_path / "search").mkdir()
    (tmp_path / "search" / "config.json").write_text(json.dumps({"ops": "sgblock"}))
    (tmp_path / "search" / "model.pt").write_bytes(b"")
    for target, message in ((tmp_path / "empty", "not a finished retraining run"), (tmp_path / "search", "records no genotype")):
        result = darts_sg_cli("evaluate", target)
        assert result.returncode == 2 and message in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
