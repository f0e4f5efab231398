"""Entropy-guided depth reduction, one run per override set: the Hydra shim over ``nepenthe.run_experiment``.

    python train.py                                   # NEPENTHE, compact CNN, Fashion-MNIST (conf/config.yaml)
    python train.py experiment=quickstart             # the README's main job
    python train.py -m seed=0,1 pruning=nepenthe,imp  # a sweep; each job gets its own run directory

compose (Hydra) → typed config (nepenthe.config) → run (nepenthe.runner) → exit code. The run directory is derived
from the overrides, so re-running a command resumes from its last completed round.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from nepenthe.config import RunConfig, load_run_config
from nepenthe.errors import NepentheError
from nepenthe.interrupt import StopRequested
from nepenthe.report import ConsoleReporter
from nepenthe.runlock import RunDirBusy
from nepenthe.runner import run_experiment
from nepenthe.rundir import RunDir
from nepenthe.tracking import write_failure
from nepenthe_cli import hydra_config, signals  # noqa: F401  (hydra_config: the schema and resolvers conf/ uses)
from nepenthe_cli.cpu_presets import advice_for
from nepenthe_cli.rundir import Preexisting, remove_unused_run_dir


def to_run_config(cfg: DictConfig) -> RunConfig:
    """Type-check the composed config against the schema and validate names and ranges."""
    return load_run_config(cfg)


def execute(cfg: RunConfig, run_dir: str | Path):
    """Run (or resume) one experiment into ``run_dir``, printing the round table and summary; return the summary.
    Its config.yaml is the validated config: every method option resolved to the value the run uses."""
    return run_experiment(cfg, run_dir, reporter=ConsoleReporter(advice=advice_for(cfg)))


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if isinstance(exc, NepentheError) else f"{type(exc).__name__}: {text}"


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig):
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    in_sweep = hydra_cfg.mode == RunMode.MULTIRUN
    signals.install()  # SIGUSR2/SIGTERM: stop at the next batch, save, then requeue (submitit) or exit
    try:
        return execute(to_run_config(cfg), run_dir)
    except StopRequested as stop:  # never a failure: the run saved its place and resumes there
        signals.leave(stop, str(RunDir(run_dir).checkpoints))
    except KeyboardInterrupt:
        print(f"\ninterrupted; run the same command again to resume from the last completed epoch in "
              f"{RunDir(run_dir).checkpoints}", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:
        if in_sweep:  # one job's failure is recorded in its directory and the sweep goes on (see SweepReport)
            if not isinstance(exc, RunDirBusy):  # that directory belongs to the process writing it
                write_failure(run_dir, one_line(exc), type(exc).__name__, traceback.format_exc())
            print(f"error: job {hydra_cfg.job.num} ({run_dir}): {one_line(exc)}", file=sys.stderr)
            return None
        if not isinstance(exc, NepentheError):
            raise  # a bug, not bad input: keep the traceback
        if not RunDir(run_dir).config.exists():  # refused before writing a record: only what we created goes
            remove_unused_run_dir(run_dir, Preexisting.from_env())
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
