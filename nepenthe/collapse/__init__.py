"""Exact collapse of a pruned network into a truly shallower one (docs/DESIGN.md step 9).

    from nepenthe.collapse import collapse
    small, report = collapse(model, stats, batch, merge="cost")

``python -m nepenthe_cli.collapse RUN_DIR`` collapses a saved run's kept checkpoint (the command line
lives with the other entry points, in nepenthe_cli/).
"""

from ..choices import MERGES
from ..records import CollapseReport
from .export import load_collapsed, save_collapsed
from .graph import CollapseError
from .pipeline import approximate_network, collapse, fold_batchnorm_only

__all__ = ["CollapseError", "CollapseReport", "MERGES", "approximate_network", "collapse", "fold_batchnorm_only",
           "load_collapsed", "save_collapsed"]
