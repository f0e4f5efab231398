"""Run records: local files are the truth; W&B (optional, imported lazily) mirrors them.

A run directory holds
  ``config.yaml``   the resolved config (written first, atomically);
  ``rounds.jsonl``  one JSON object per completed round, appended with a single write each;
  ``summary.json``  written last and atomically, so its presence means the run finished;
  ``checkpoints/round_NNN.pt``  model weights and masks after each round;
  ``collapsed.pt2``  the kept model collapsed (torch.export; loads without nepenthe).

Fields of a round record (stable; analysis reads these names):
  round              0 is the dense model, then one per pruning round
  method, ratio      pruning method and per-round ratio
  pruned             weights removed this round; plan: {layer: count}
  frozen_units       zero-entropy units the method left alone this round
  sparsity           fraction of pruned weights over every conv/linear layer
  unit_sparsity      {unit: fraction of pruned weights in the layers feeding it}
  entropy            {unit: layer entropy in bits}
  neurons            {unit: {neurons, always_on, always_off, switching}}
  zero_entropy_units names of units at exactly zero entropy; k = their count; N = number of units
  val_acc, val_loss, test_acc, test_loss, train_acc, train_loss   top-1 in %, mean cross-entropy
  epochs             training epochs spent in this round
  wall_time_s        seconds spent in this round; elapsed_s since the run started (resumes included)

Fields of the summary: status, stop_reason, rounds_completed, final_round, dense (round-0 record subset),
final (the kept round's record subset), k, N, depth (``"k/N"``: the paper's depth metric), zero_entropy_units,
cost ({dense, final, collapsed}: macs, macs_nonzero, params, params_nonzero, weight_layers_on_longest_path — per
input, see nepenthe/metrics.py), collapse (below; absent with collapse.enabled=false), config_hash, versions, device,
wall_time_s.

Fields of ``collapse`` (also ``collapse.json`` from ``python -m nepenthe.collapse``):
  merge, tolerance, input_shape   the settings and the verification batch's shape (constants are sized for it)
  units              per unit: action (identity | scale_folded | scale | zero | dead_channels_zeroed | kept),
                     always_on, always_off, switching, exact_on_probe (false for ReLU6/GELU identities)
  operations         every rewrite: fold_batchnorm, drop_identity, fold_constant (removed_layers, shape),
                     fold_constant_into_bias, remove_channels, merge (layers, exact, macs_before/after, kernel,
                     max_abs_diff, interior_max_abs_diff for convs)
  removed_layers     conv/linear layers no longer in the collapsed graph
  before, after      cost of the uncollapsed (kept) and the collapsed model, as in ``cost``
  max_abs_diff       collapsed (exact steps) vs the linearized model on the batch; within tolerance·max|output|
  border_diff        what inexact (k×k∘k×k) merges add; linearization_diff: linearized vs uncollapsed (the probe's
                     decision); diff_vs_original: collapsed vs uncollapsed; output_scale: max |output|
  test_acc, val_acc  of the collapsed model (compare final.test_acc)
  latency_ms         {uncollapsed, collapsed}: {batch_<n>: median ms}, measured side by side; latency_threads,
                     latency_device
  file               the collapsed model, a torch.export program: ``torch.export.load(path).module()``
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

ROUNDS_FILE, SUMMARY_FILE, CONFIG_FILE = "rounds.jsonl", "summary.json", "config.yaml"


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write to a temporary file in the same folder and rename over the target: readers see old or new, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide records from collaborators
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_rounds(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / ROUNDS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_summary(run_dir: str | Path) -> dict | None:
    path = Path(run_dir) / SUMMARY_FILE
    return json.loads(path.read_text()) if path.exists() else None


def flatten(record: dict, prefix: str = "") -> dict:
    """``{"entropy": {"relu": 0.5}}`` -> ``{"entropy/relu": 0.5}`` for W&B charts."""
    flat = {}
    for key, value in record.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float, str, bool)) or value is None:
            flat[f"{prefix}{key}"] = value
    return flat


class RunRecorder:
    def __init__(self, run_dir: str | Path, *, wandb_settings: dict | None = None, config: dict | None = None):
        self.run_dir = Path(run_dir)
        self.wandb_settings = wandb_settings
        self.config = config or {}
        self._wandb_run = None

    def write_config(self, yaml_text: str) -> None:
        atomic_write_text(self.run_dir / CONFIG_FILE, yaml_text)

    def restore_rounds(self, records: list[dict]) -> None:
        """After a resume, make rounds.jsonl hold exactly the rounds the checkpoint knows (no dangling line)."""
        atomic_write_text(self.run_dir / ROUNDS_FILE, "".join(json.dumps(r) + "\n" for r in records))

    def round(self, record: dict) -> None:
        line = (json.dumps(record) + "\n").encode()
        fd = os.open(self.run_dir / ROUNDS_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)  # one write of a whole line: a crash leaves the file ending at a line boundary
            os.fsync(fd)
        finally:
            os.close(fd)
        run = self._wandb()
        if run is not None:
            run.log(flatten(record), step=record["round"])

    def summary(self, summary: dict) -> None:
        atomic_write_text(self.run_dir / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
        run = self._wandb()
        if run is not None:
            run.summary.update(flatten(summary))
            run.finish()
            self._wandb_run = None

    def _wandb(self):
        if self.wandb_settings is None:
            return None
        if self._wandb_run is None:
            import wandb  # optional dependency, only imported when the logger is on

            s = self.wandb_settings
            self._wandb_run = wandb.init(
                project=s.get("project"), entity=s.get("entity"), group=s.get("group"), tags=s.get("tags") or None,
                mode=s.get("mode", "offline"), dir=str(self.run_dir), config=self.config,
                name=self.run_dir.name, id=s.get("id"), resume="allow",
            )
        return self._wandb_run
