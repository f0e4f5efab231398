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
trajectory ({round: {sparsity, val_acc, test_acc, k, N}} for every round, so a summary alone holds the curve),
cost ({dense, final, collapsed}: macs, macs_nonzero, params, params_nonzero, weight_layers_on_longest_path — per
input, see nepenthe/metrics.py), collapse (below; absent with collapse.enabled=false), config_hash, versions, device,
wall_time_s.

A sweep job that failed leaves ``status.json`` (status "failed", error: the one-line message, type: the exception's
class, when: UTC ISO time) and ``error.txt`` (the traceback) in its run directory; the next attempt removes both.

Fields of ``collapse`` (also ``collapse.json`` from ``python -m nepenthe.collapse``):
  merge, tolerance, input_shape, approximate_activations   the settings and the verification batch's shape
  units              per unit: action (identity | scale_folded | scale | zero | dead_channels_zeroed | kept),
                     always_on, always_off, switching, neuron_dim, exact_on_probe (false for approximated
                     ReLU6/GELU), approximation_error (approximated units: max |act(z) - reduced(z)| / max |act(z)|),
                     approximation_declined + reason (ReLU6/GELU left in place by default)
  operations         every rewrite: fold_batchnorm, drop_identity, fold_constant (removed_layers, shape),
                     fold_constant_into_bias, remove_channels, merge (layers, exact, macs_before/after, kernel,
                     max_abs_diff, relative_diff, interior_max_abs_diff and interior_relative_diff for convs)
  removed_layers     conv/linear layers no longer in the collapsed graph
  shared_layers      tied or directly read weight layers, never rewritten
  before, after      cost of the uncollapsed (kept) and the collapsed model, as in ``cost``
  max_abs_diff       collapsed (exact steps) vs the linearized reference on the batch; relative_diff: the same divided
                     by max |reference output|, always <= tolerance
  border_diff        what merge=approximate's border-ring merges add (and border_relative_diff); linearization_diff
                     (and _relative_diff): linearized vs uncollapsed, the probe's decision; diff_vs_original (and
                     relative_diff_vs_original): collapsed vs uncollapsed; output_scale: max |output|
  test_acc, val_acc  of the collapsed model in the run's precision (compare final.test_acc); precision
  relative_diff_run_precision, test_acc_fp32, val_acc_fp32, uncollapsed_test_acc_fp32, uncollapsed_val_acc_fp32
                     (reduced-precision runs only): collapsed vs uncollapsed under the run's autocast, and both models'
                     accuracy in float32, where the verification above holds
  latency_ms         {uncollapsed, bn_folded, collapsed}: {batch_<n>: median ms}, measured side by side in one process
                     (bn_folded: only BatchNorm folded, the baseline for what collapse itself buys); latency_iqr_ms:
                     the same keys, p75 - p25 of the timed blocks; latency_repeats (timed blocks per median, at
                     least), latency_threads, latency_device, latency_precision
  file               the collapsed model, a torch.export program: ``torch.export.load(path).module()``
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

from .errors import NepentheError, storage_error

ROUNDS_FILE, SUMMARY_FILE, CONFIG_FILE = "rounds.jsonl", "summary.json", "config.yaml"
COLLAPSED_FILE, COLLAPSE_REPORT_FILE = "collapsed.pt2", "collapse.json"
STATUS_FILE, ERROR_FILE = "status.json", "error.txt"  # a sweep job that failed: what, when, and the traceback
# Everything a run writes besides config.yaml: ``resume=false`` clears these so nothing of an older run stays
RUN_OUTPUT_FILES = (ROUNDS_FILE, SUMMARY_FILE, COLLAPSED_FILE, COLLAPSE_REPORT_FILE, STATUS_FILE, ERROR_FILE)
RUN_OUTPUT_DIRS = ("checkpoints", "wandb")


def clear_run_outputs(run_dir: str | Path) -> None:
    """``resume=false``: every output of a previous run in ``run_dir`` goes (config.yaml is rewritten next)."""
    run_dir = Path(run_dir)
    for name in RUN_OUTPUT_FILES:
        (run_dir / name).unlink(missing_ok=True)
    for name in RUN_OUTPUT_DIRS:
        shutil.rmtree(run_dir / name, ignore_errors=True)


def write_failure(run_dir: str | Path, error: str, kind: str, details: str = "") -> None:
    """Record that the run in ``run_dir`` failed: ``status.json`` (status, error, type, when) and, when given, the
    traceback in ``error.txt``. Best effort: a full disk must not hide the original error."""
    import datetime

    status = {"status": "failed", "error": error, "type": kind,
              "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    try:
        atomic_write_text(Path(run_dir) / STATUS_FILE, json.dumps(status, indent=2) + "\n")
        if details:
            atomic_write_text(Path(run_dir) / ERROR_FILE, details)
    except NepentheError:
        pass


def read_status(run_dir: str | Path) -> dict | None:
    """``status.json`` of a failed run, or None (none, or unreadable)."""
    path = Path(run_dir) / STATUS_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def clear_failure(run_dir: str | Path) -> None:
    for name in (STATUS_FILE, ERROR_FILE):
        (Path(run_dir) / name).unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, and rename over the target: readers see the old or the
    new file, never half of one. Any OSError (disk full, I/O error) becomes one line naming the path and errno and
    leaves the old file and no temporary file behind."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide records from collaborators
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise storage_error("write", path, exc) from exc
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def append_line(path: str | Path, line: str) -> None:
    """Append one whole line or nothing: short writes are continued, and on an error the file is cut back to where
    it ended before, so it never ends in half a JSON object."""
    data = line.encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as exc:
        raise storage_error("append to", path, exc) from exc
    try:
        start = os.fstat(fd).st_size
        written = 0
        try:
            while written < len(data):
                written += os.write(fd, data[written:])
            os.fsync(fd)
        except OSError as exc:
            if written:
                os.ftruncate(fd, start)
            raise storage_error("append to", path, exc) from exc
    finally:
        os.close(fd)


def read_rounds(run_dir: str | Path) -> list[dict]:
    """The round records of a run. A cut-off last line (a write interrupted by a full disk or a kill) is skipped
    with a warning; a broken line before the end is an error naming the file and the line."""
    path = Path(run_dir) / ROUNDS_FILE
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if number == len(lines):
                warnings.warn(f"{path}: line {number} is cut off (an interrupted write); skipped it. Re-running "
                              f"the run's command rewrites the file from its checkpoints", stacklevel=2)
                continue
            raise NepentheError(f"{path}: line {number} is not valid JSON ({exc.msg}); the file was edited or "
                                f"damaged: re-run the run's command to rewrite it from its checkpoints") from exc
    return records


def read_summary(run_dir: str | Path) -> dict | None:
    path = Path(run_dir) / SUMMARY_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise NepentheError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}); delete it and re-run the "
                            f"run's command to write it again from the checkpoints") from exc


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
        self.warning: str | None = None  # why the W&B mirror runs offline or not at all
        self._wandb_run = None

    def write_config(self, yaml_text: str) -> None:
        atomic_write_text(self.run_dir / CONFIG_FILE, yaml_text)

    def restore_rounds(self, records: list[dict]) -> None:
        """After a resume, make rounds.jsonl hold exactly the rounds the checkpoint knows (no dangling line)."""
        atomic_write_text(self.run_dir / ROUNDS_FILE, "".join(json.dumps(r) + "\n" for r in records))

    def round(self, record: dict) -> None:
        append_line(self.run_dir / ROUNDS_FILE, json.dumps(record) + "\n")
        self._mirror(lambda run: run.log(flatten(record), step=record["round"]))

    def summary(self, summary: dict) -> None:
        atomic_write_text(self.run_dir / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
        self._mirror(lambda run: (run.summary.update(flatten(summary)), run.finish()))
        self._wandb_run = None

    def start(self) -> None:
        """Start the W&B mirror now, before any training, so that trouble shows at once. Online mode that cannot
        start (no API key, no network, ``init_timeout`` seconds passed) warns once and goes on offline; if even
        that fails, the mirror is off. The local records never depend on it."""
        if self.wandb_settings is None or self._wandb_run is not None:
            return
        mode = self.wandb_settings.get("mode", "offline")
        try:
            self._wandb_run = self._init_wandb(mode)
            return
        except Exception as exc:  # wandb raises its own UsageError/CommError types, and more
            first = f"W&B {mode} could not start ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        if mode == "online":
            try:
                self._wandb_run = self._init_wandb("offline")
                self.warning = f"{first}; mirroring offline into {self.run_dir / 'wandb'} (sync later with `wandb sync`)"
            except Exception as exc:
                self.warning = f"{first}, nor offline ({type(exc).__name__}); W&B mirror off, local records kept"
        else:
            self.warning = f"{first}; W&B mirror off, local records kept"
        self.wandb_settings = None
        warnings.warn(self.warning, stacklevel=2)

    def _init_wandb(self, mode: str):
        import wandb  # optional dependency, only imported when the logger is on

        s = self.wandb_settings
        return wandb.init(
            project=s.get("project"), entity=s.get("entity"), group=s.get("group"), tags=s.get("tags") or None,
            mode=mode, dir=str(self.run_dir), config=self.config, name=self.run_dir.name, id=s.get("id"),
            resume="allow", settings=wandb.Settings(init_timeout=s.get("init_timeout", 10)),
        )

    def _mirror(self, action) -> None:
        """Send to W&B; a failure there warns once and turns the mirror off, never stops the run."""
        self.start()
        if self._wandb_run is None:
            return
        try:
            action(self._wandb_run)
        except Exception as exc:
            self._wandb_run, self.wandb_settings = None, None
            self.warning = f"W&B mirror failed ({type(exc).__name__}: {exc}); turned off, local records kept"
            warnings.warn(self.warning, stacklevel=2)
