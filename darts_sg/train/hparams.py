"""A run's settings against its final metrics, for TensorBoard's HPARAMS tab."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["log_hparams"]


def log_hparams(run_path: str | Path, config: dict[str, Any], metrics: dict[str, float]) -> None:
    """Record the run's settings against its final metrics in RUN/tensorboard/hparams/ (as torch's
    `add_hparams` does, a folder of their own beside the run's event file; the HPARAMS tab shows
    one row per run under `tensorboard --logdir runs`). Settings that are not numbers, strings or
    booleans are written as text; metric tags are `hparams/<name>`."""
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    values = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in config.items()}
    tagged = {f"hparams/{k}": float(v) for k, v in metrics.items()}
    with SummaryWriter(str(Path(run_path) / "tensorboard" / "hparams")) as writer:
        for summary in hparams(values, tagged):
            writer.file_writer.add_summary(summary)
        for tag, value in tagged.items():
            writer.add_scalar(tag, value)
