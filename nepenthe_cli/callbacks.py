"""Hydra callbacks named in ``conf/config.yaml`` under ``hydra.callbacks``."""

from __future__ import annotations

import atexit
import sys
import time
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from nepenthe.rundir import STATUS_FILE
from nepenthe.tracking import read_status

from .rundir import HYDRA_SUBDIR, Preexisting, remove_unused_sweep_dir


class RecordPreexistingDirs(Callback):
    """Before Hydra creates the run (or sweep) directory, record what existed there, so that a refused job removes
    only folders this command created (:func:`nepenthe_cli.rundir.remove_unused_run_dir`)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        # hydra.run.dir reads ${hydra:job.override_dirname}; run_job sets it next
        HydraConfig.instance().set_config(config)
        Preexisting.snapshot(str(OmegaConf.select(config, "hydra.run.dir"))).export()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = str(OmegaConf.select(config, "hydra.sweep.dir"))
        snapshot = Preexisting.snapshot(sweep_dir)
        snapshot.export()
        # a sweep Hydra refuses before any job starts (a bad override value) leaves only multirun.yaml: remove it
        # at exit, with the folders this command created; a sweep whose jobs ran never matches (they add folders)
        atexit.register(remove_unused_sweep_dir, sweep_dir, snapshot)


class SweepReport(Callback):
    """At the end of a sweep, list the jobs that failed (each recorded its error in its run directory's
    ``status.json`` and let the others run; a job the cluster killed was recorded by the launcher) and exit non-zero
    when any did."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.started = time.time() - 1.0  # file times have coarse resolution on some file systems

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        HydraConfig.instance().set_config(config)
        sweep_dir = Path(str(OmegaConf.select(config, "hydra.sweep.dir")))
        # this sweep's jobs, not an earlier sweep's: those that started (Hydra wrote their overrides) and those the
        # cluster killed before they could (the launcher recorded them in status.json)
        marks = [*sweep_dir.glob(f"*/{HYDRA_SUBDIR}/overrides.yaml"), *sweep_dir.glob(f"*/{STATUS_FILE}")]
        jobs = sorted({p.parent.parent if p.name == "overrides.yaml" else p.parent for p in marks
                       if p.stat().st_mtime >= self.started})
        failed = [(job, status) for job in sorted(jobs)
                  if (status := read_status(job)) is not None and status.status == "failed"]
        if not failed:
            return
        print(f"sweep finished: {len(failed)} of {len(jobs)} jobs failed (status.json and error.txt in each):",
              file=sys.stderr)
        for job, status in failed:
            print(f"  {job}: {status.error}", file=sys.stderr)
        sys.exit(1)
