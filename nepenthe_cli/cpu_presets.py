"""Which experiment preset runs a model at CPU scale, read from the presets themselves (conf/experiment/*.yaml: those
whose defaults say ``override /hardware: cpu`` and name the model), so that a run that would take hours on a CPU
names the command that fits: the estimate's advice (nepenthe/estimate.py, printed by the console reporter)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import yaml

from nepenthe.config import RunConfig
from nepenthe.estimate import duration
from nepenthe.records import RunEstimate

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
CPU_HOURS_LIMIT_S = 2 * 3600  # past this on a CPU, a run names the model's CPU-scale preset


def cpu_scale_presets(conf_dir: Path = CONF_DIR) -> dict[str, list[str]]:
    """``{model name: [preset, ...]}`` for the presets that run on the CPU; studies first, then by name."""
    found: dict[str, list[str]] = {}
    for path in sorted((conf_dir / "experiment").glob("*.yaml")):
        defaults = (yaml.safe_load(path.read_text()) or {}).get("defaults") or []
        overrides = {k: v for entry in defaults if isinstance(entry, dict) for k, v in entry.items()}
        model = overrides.get("override /model")
        if model and overrides.get("override /hardware") == "cpu":
            found.setdefault(model, []).append(path.stem)
    return {m: sorted(p, key=lambda name: (not name.startswith("study_"), name)) for m, p in found.items()}


def advice_for(cfg: RunConfig, conf_dir: Path = CONF_DIR) -> Callable[[RunEstimate], str | None]:
    """The estimate's advice for this run: on a CPU past :data:`CPU_HOURS_LIMIT_S`, the model's CPU-scale preset (or
    what to shrink when it has none)."""

    def advise(estimate: RunEstimate) -> str | None:
        if estimate.device != "cpu" or estimate.total_s <= CPU_HOURS_LIMIT_S:
            return None
        model = cfg.model.name
        presets = [p for p in cpu_scale_presets(conf_dir).get(model, []) if p != cfg.name]
        first = (f"this run would take about {duration(estimate.total_s)} on this CPU (past "
                 f"{duration(CPU_HOURS_LIMIT_S)}): ")
        if presets:
            return (first + f"experiment={presets[0]} is the CPU-scale preset of model={model} (width, data and "
                    f"epochs scaled to fit 2 cores; its file says what was scaled), or run on a GPU (hardware=cuda)")
        return (first + f"no CPU-scale preset of model={model} exists; shrink model.kwargs, "
                f"dataset.kwargs.train_subset or the epochs, or run on a GPU (hardware=cuda)")

    return advise
