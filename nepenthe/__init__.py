"""nepenthe: entropy-guided depth reduction of neural networks (NEPENTHE / EGP / EASIER) with exact collapse.

The public API, on any ``nn.Module`` (docs/own_model.md walks through it)::

    import nepenthe
    units = nepenthe.model_units(model)                      # rectifier + the conv/linear layers feeding it
    stats = nepenthe.measure_entropy(model, nepenthe.activation_modules(model, units), loader)
    plan = nepenthe.create_method("nepenthe", 0.5).plan(model, units, stats)
    nepenthe.apply_plan(model, plan)                         # one round by hand, or the whole loop:
    result = nepenthe.prune(model, train=..., evaluate=..., probe_batches=loader)
    small, report = nepenthe.collapse_model(result.model, result.stats, images)

``nepenthe.run_experiment(RunConfig(...), run_dir)`` runs a configured experiment (what ``train.py`` does).
The library never imports Hydra; W&B is imported lazily inside ``tracking``.
"""

__version__ = "0.1.0"

# the function is exported as collapse_model: the name ``nepenthe.collapse`` stays the subpackage, so that
# ``import nepenthe.collapse.pipeline as p`` and ``python -m nepenthe_cli.collapse`` keep working
from .api import PruneSetup, prune  # noqa: E402
from .collapse import CollapseError, load_collapsed, save_collapsed  # noqa: E402
from .collapse import collapse as collapse_model  # noqa: E402
from .collapse.measure import latency_ms, latency_stats  # noqa: E402
from .config import RunConfig, StopConfig, load_run_config  # noqa: E402
from .data import create_data, list_data  # noqa: E402
from .discovery import distinct_activations, model_units  # noqa: E402
from .entropy import EntropyProbe, LayerStats, ProbeSettings, measure_entropy, probe_units  # noqa: E402
from .errors import ConfigError, DataError, NepentheError  # noqa: E402
from .experiment import restore_run  # noqa: E402
from .loop import LoopResult, Reporter, RoundLoop, run_rounds  # noqa: E402
from .metrics import cost_report  # noqa: E402
from .models import create_model, list_models, register_model  # noqa: E402
from .pruning.methods import PruningPlan, apply_plan  # noqa: E402
from .pruning.registry import METHODS, create_method  # noqa: E402
from .records import CollapseReport, CollapseResult, FailureStatus, RoundRecord, Summary  # noqa: E402
from .report import ConsoleReporter  # noqa: E402
from .runner import run_experiment  # noqa: E402
from .units import Unit, activation_modules, replace_by_identity  # noqa: E402
from .wasserstein import max_sliced_wasserstein  # noqa: E402

__all__ = [
    "CollapseError", "CollapseReport", "CollapseResult", "ConfigError", "ConsoleReporter", "DataError",
    "EntropyProbe", "FailureStatus", "LayerStats", "LoopResult", "METHODS", "NepentheError", "ProbeSettings",
    "PruneSetup", "PruningPlan", "Reporter", "RoundLoop", "RoundRecord", "RunConfig", "StopConfig", "Summary", "Unit",
    "activation_modules", "apply_plan", "collapse_model", "cost_report", "create_data", "create_method",
    "create_model", "distinct_activations", "latency_ms", "latency_stats", "list_data", "list_models",
    "load_collapsed", "load_run_config", "max_sliced_wasserstein", "measure_entropy", "model_units", "probe_units",
    "prune", "register_model", "replace_by_identity", "restore_run", "run_experiment", "run_rounds", "save_collapsed",
]
