"""Training metrics: an append-only JSONL log (one record per logged step) and its PNG plot."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

FIELDS = ("step", "loss", "grad_norm", "rank", "lr", "seconds")


class MetricsLog:
    """``metrics.jsonl`` under ``out_dir``: append records, drop records past a resume point, plot."""

    def __init__(self, out_dir: str | os.PathLike) -> None:
        self.dir = Path(out_dir)
        self.path = self.dir / "metrics.jsonl"
        self.plot_path = self.dir / "metrics.png"

    def append(self, record: dict) -> None:
        """Append one record (a JSON object per line), flushed so a crash keeps what was logged."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, allow_nan=True) + "\n")
            f.flush()

    def read(self) -> list[dict]:
        """All records; a torn last line (crash mid-write) is ignored."""
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def truncate(self, before_step: int) -> None:
        """Keep only records with step < ``before_step`` (on resume, those steps are redone)."""
        kept = [r for r in self.read() if r.get("step", -1) < before_step]
        if not self.path.exists():
            return
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
        os.replace(tmp, self.path)

    def plot(self) -> Path | None:
        """Loss, grad norm and Phi rank against step, as ``metrics.png``; None when nothing was logged."""
        records = self.read()
        if not records:
            return None
        # The Agg canvas directly: no pyplot global state, no GUI backend needed.
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        steps = [r["step"] for r in records]
        fig = Figure(figsize=(7, 7))
        FigureCanvasAgg(fig)
        axes = fig.subplots(3, 1, sharex=True)
        for ax, key, log in zip(axes, ("loss", "grad_norm", "rank"), (True, True, False)):
            vals = [r.get(key, math.nan) for r in records]
            ax.plot(steps, vals, lw=1.2)
            ax.set_ylabel(key)
            ax.grid(alpha=0.3)
            if log and all(isinstance(v, (int, float)) and v > 0 for v in vals):
                ax.set_yscale("log")
        axes[-1].set_xlabel("step")
        fig.suptitle("distillation")
        fig.tight_layout()
        fig.savefig(self.plot_path, dpi=100)
        return self.plot_path
