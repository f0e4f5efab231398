"""What Hydra needs before it composes ``conf/``: the typed schema and the resolvers the YAML files call.

The schema is :class:`nepenthe.config.RunConfig` itself, stored in Hydra's ConfigStore as ``nepenthe_schema`` and
named first in ``conf/config.yaml``'s defaults list: every default is written once, in the dataclasses, and the YAML
files hold only what differs. Importing this module (``train.py``, ``analysis.reproduce``, the tests) registers both.
"""

from __future__ import annotations

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from nepenthe.config import RunConfig

from .launchers import slurm_resource
from .rundir import run_id

SCHEMA = "nepenthe_schema"


def visible_gpus() -> int:
    """CUDA devices this process sees: what a local-launcher job should be allowed to see (conf/hydra/launcher)."""
    import torch

    return torch.cuda.device_count()


def register() -> None:
    ConfigStore.instance().store(name=SCHEMA, node=RunConfig)
    OmegaConf.register_new_resolver("nepenthe_run_id", run_id, replace=True)
    OmegaConf.register_new_resolver("nepenthe_slurm", slurm_resource, replace=True)
    OmegaConf.register_new_resolver("nepenthe_visible_gpus", visible_gpus, replace=True)


register()
