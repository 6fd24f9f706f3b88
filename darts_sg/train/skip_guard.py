"""Early stopping against skip-connection collapse (DARTS+, Liang et al. 2019).

As a DARTS search goes on, the parameter-free `skip_connect` takes over the normal cell and the
derived network degrades. DARTS+ stops the search as soon as the derived normal cell holds two
or more skip connections. ``SkipGuard`` stops it when the normal cell has more than K skips for
E epochs in a row (DARTS+: K = 1, E = 1); warm-up epochs, whose alphas do not move, are not
counted. The cap on skips in the derived cell (P-DARTS) is part
of the derivation: ``genotype.cap_skips``.
"""

from __future__ import annotations

from typing import Any

from ..model.genotype import SKIP, Genotype

__all__ = ["SkipGuard", "count_normal_skips"]


def count_normal_skips(genotype: Genotype) -> int:
    """Number of `skip_connect` edges in the normal cell."""
    return sum(op == SKIP for op, _ in genotype.normal)


class SkipGuard:
    """Counts epochs whose normal cell has more than `max_skips` skips; stops after `patience` in a row."""

    def __init__(self, max_skips: int | None, patience: int = 1):
        self.max_skips, self.patience = max_skips, patience
        self.streak = 0
        self.stop_reason: str | None = None

    def update(self, epoch: int, skips: int) -> str | None:
        """Record the skip count of epoch `epoch` (0-based); returns the reason when the search must stop."""
        if self.max_skips is None:
            return None
        self.streak = self.streak + 1 if skips > self.max_skips else 0
        if self.streak >= self.patience:
            self.stop_reason = (
                f"DARTS+ early stop after epoch {epoch + 1}: the normal cell had more than {self.max_skips} "
                f"skip connections for {self.streak} epoch(s) in a row ({skips} now)"
            )
        return self.stop_reason

    def state_dict(self) -> dict[str, Any]:
        return {"streak": self.streak, "stop_reason": self.stop_reason}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.streak = int(state.get("streak", 0))
        self.stop_reason = state.get("stop_reason")
