"""hydra-submitit-launcher, made to survive a job that never reports back (conf/hydra/launcher/slurm.yaml, local.yaml).

The launcher classes Hydra instantiates live in ``hydra_plugins/nepenthe_launchers`` (Hydra accepts a launcher only
from the ``hydra_plugins`` namespace); what they do is here.

The plugin's launcher waits for the jobs in order and raises at the first one without a result (``scancel``, an
out-of-memory kill, a node failure, a time limit without requeue): the sweep command ends with a traceback, no
summary, no record of the killed run, and stops waiting for the others. These launchers wait for every job; a job
that ends without a result is recorded as failed in its own run directory (``status.json`` written by the submitting
side, with the cluster's state of the job and its id), and the sweep ends with ``SweepReport``'s summary and exit
code 1, as for a job that failed on its own. Re-running the same sweep resumes the unfinished runs and skips the
finished ones.
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

from hydra.core.utils import JobReturn, JobStatus

from nepenthe.tracking import read_status, write_failure

from .rundir import job_run_dir

log = logging.getLogger(__name__)

# What a job asks the cluster for, by the run's hardware.device (a cluster job asks for a GPU unless the run says cpu)
RESOURCES = {"cpu": {"gpus": 0, "cpus": 2, "mem_gb": 8}, "cuda": {"gpus": 1, "cpus": 8, "mem_gb": 32}}


def slurm_resource(device: str, what: str) -> int:
    """``gpus``, ``cpus`` or ``mem_gb`` for a run's ``hardware.device`` (the resolver conf/hydra/launcher/slurm.yaml
    uses; ``auto`` asks for what ``cuda`` does)."""
    return RESOURCES.get(str(device), RESOURCES["cuda"])[what]


def cluster_state(job) -> str:
    """The cluster's word for how the job ended (CANCELLED, OUT_OF_MEMORY, TIMEOUT, NODE_FAIL, ...)."""
    try:
        state = str(job.state)
    except Exception:  # the scheduler could not be asked
        return "UNKNOWN"
    return re.split(r"[\s:]", state.strip(), maxsplit=1)[0] or "UNKNOWN"


class CollectsEveryJob:
    """The plugin's submission (one executor, one array of jobs), then a wait on every job that survives a job
    without a result."""

    def launch(self, job_overrides, initial_job_idx):
        import submitit
        from hydra.core.singleton import Singleton
        from hydra.core.utils import filter_overrides
        from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
        from omegaconf import OmegaConf

        executor_kind = self._EXECUTOR
        params = dict(self.params)
        init = {"folder": params.pop("submitit_folder")}
        if "max_num_timeout" in params:  # an executor argument, not a job parameter
            init[f"{executor_kind}_max_num_timeout"] = params.pop("max_num_timeout")
        executor = submitit.AutoExecutor(cluster=executor_kind, **init)
        shared = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in shared else f"{executor_kind}_{k}": v for k, v in params.items()})
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info(f"Submitit '{executor_kind}' sweep output dir : {sweep_dir}")
        arguments = []
        for index, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info(f"\t#{index} : {' '.join(filter_overrides(overrides))}")
            arguments.append((list(overrides), "hydra.sweep.dir", index, f"job_id_for_{index}",
                              Singleton.get_state()))
        jobs = executor.map_array(self, *zip(*arguments))
        return [self._result(job, overrides, initial_job_idx + i) for i, (job, overrides)
                in enumerate(zip(jobs, job_overrides))]

    def _result(self, job, overrides, index: int) -> JobReturn:
        try:
            return job.results()[0]
        except Exception as exc:  # UncompletedJobError: killed; FailedJobError: raised outside the run (unpickling)
            from submitit.core.utils import FailedJobError

            run_dir = job_run_dir(str(self.config.hydra.sweep.dir), overrides)
            state = cluster_state(job)
            if isinstance(exc, FailedJobError):
                last = [line for line in str(exc).splitlines() if line.strip()]
                message = (f"job {job.job_id} failed before its run could start: {last[-1] if last else exc} "
                           f"(the job's log: {job.paths.stderr})")
            else:
                message = (f"job {job.job_id} ended {state} without a result (killed by the cluster: scancel, out "
                           f"of memory, node failure or a time limit without requeue); run the sweep again to "
                           f"resume it")
            recorded = read_status(run_dir)
            if recorded is None or recorded.written_by != "job":  # the job's own record of its error stays
                run_dir.mkdir(parents=True, exist_ok=True)
                write_failure(run_dir, message, state, f"{type(exc).__name__}: {exc}\n", written_by="submitter",
                              job_id=str(job.job_id))
            print(f"error: job {index} ({run_dir}): {message}", file=sys.stderr, flush=True)
            result = JobReturn()
            result.overrides, result.status, result._return_value = list(overrides), JobStatus.COMPLETED, None
            return result
