"""What a run tells: terminal progress, one JSON line per logged step in log.jsonl (main rank
only), and what it learned for the summary."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

LOG_FILE = "log.jsonl"


class RunLog:
    """Losses averaged over `every` optimizer steps, with samples/s and ETA."""

    def __init__(self, output_dir: Path, runtime, total_steps: int, resume_step: int, every: int):
        self.path = output_dir / LOG_FILE
        self.runtime, self.total_steps, self.every = runtime, total_steps, max(int(every), 1)
        self.records: list[dict] = []
        if runtime.is_main and self.path.exists():
            # Steps logged after the checkpoint we resume from are replayed, so drop them.
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            self.records = [json.loads(line) for line in kept]
            self.path.write_text("".join(line + "\n" for line in kept))
        self.window_start = self.run_start = time.perf_counter()
        self.window_samples = 0
        self.window_losses: list[float] = []
        self.first_step = resume_step
        self.first_loss: float | None = None

    def restart_clock(self) -> None:
        """Throughput and ETA from now (after the ranks met, not from before the first compile)."""
        self.window_start = self.run_start = time.perf_counter()
        self.window_samples = 0

    def add_samples(self, samples: int) -> None:
        self.window_samples += samples

    def optimizer_step(self, step: int, epoch: int, loss: float, lr: float) -> None:
        self.first_loss = loss if self.first_loss is None else self.first_loss
        self.window_losses.append(loss)
        if step % self.every == 0 or step == self.total_steps:
            self._record({"step": step, "epoch": epoch, "loss": float(np.mean(self.window_losses)), "lr": lr})
            self.window_losses = []

    def _record(self, record: dict) -> None:
        now = time.perf_counter()
        rate = self.window_samples / max(now - self.window_start, 1e-9)
        per_step = (now - self.run_start) / max(record["step"] - self.first_step, 1)
        eta = per_step * (self.total_steps - record["step"])
        record = {**record, "samples_per_s": round(rate, 2), "time": round(time.time(), 3)}
        self.window_start, self.window_samples = now, 0
        if not self.runtime.is_main:
            return
        self.records.append(record)
        self.event(record)
        print(f"epoch {record['epoch'] + 1} step {record['step']}/{self.total_steps}  loss {record['loss']:.4f}  "
              f"lr {record['lr']:.3e}  {rate:.1f} samples/s  ETA {format_duration(eta)}", flush=True)

    def event(self, record: dict) -> None:
        if self.runtime.is_main:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")

    @property
    def losses(self) -> list[dict]:
        return [record for record in self.records if "loss" in record]


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
