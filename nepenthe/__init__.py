"""nepenthe: entropy-guided depth reduction (NEPENTHE / EGP / EASIER family).

The library never imports Hydra; W&B is imported lazily inside ``tracking``.
"""

__version__ = "0.1.0"
