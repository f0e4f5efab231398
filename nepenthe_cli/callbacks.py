"""Hydra callbacks named in ``conf/config.yaml`` under ``hydra.callbacks``."""

from __future__ import annotations

from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from nepenthe.rundir import Preexisting


class RecordPreexistingDirs(Callback):
    """Before Hydra creates the run (or sweep) directory, record what existed there, so that a refused job removes
    only folders this command created (:func:`nepenthe.rundir.remove_unused_run_dir`)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        HydraConfig.instance().set_config(config)  # hydra.run.dir reads ${hydra:job.override_dirname}; run_job sets it next
        Preexisting.snapshot(str(OmegaConf.select(config, "hydra.run.dir"))).export()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        Preexisting.snapshot(str(OmegaConf.select(config, "hydra.sweep.dir"))).export()
