"""Sweeps through hydra-submitit-launcher: the local launcher runs a sweep's jobs as parallel processes (the same code
path as SLURM, minus the scheduler), and the SLURM config composes with every key a cluster needs."""

import pytest
import subprocess
import sys
from pathlib import Path

from analysis.collect import local_runs, to_frame
from nepenthe.tracking import read_rounds, read_summary

from conftest import ROOT, compose_config

TINY = [
    "dataset=synthetic", "dataset.kwargs.train_size=300", "dataset.kwargs.val_size=100", "dataset.kwargs.test_size=100",
    "model.kwargs.width=8", "train.epochs=1", "train.batch_size=32", "finetune.epochs=1", "stop.max_rounds=1",
    "stop.max_drop=100", "progress=false", "hardware=cpu", "hardware.threads=1", "collapse.latency_min_run_time=0.02",
    "collapse.latency_rounds=1", "collapse.verify_batch=32",
]

pytestmark = pytest.mark.e2e  # subprocesses: in make test-all


def test_a_two_job_sweep_through_the_local_submitit_launcher_completes_and_is_collected(tmp_path):
    runs = tmp_path / "runs"
    command = [sys.executable, str(ROOT / "train.py"), "-m", "hydra/launcher=local", *TINY,
               f"output_root={runs}", "name=sweep", "seed=0,1"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Submitit 'local' sweep output dir" in done.stdout + done.stderr
    run_dirs = sorted(p.parent for p in (runs / "sweep").glob("*/summary.json"))
    assert len(run_dirs) == 2 and [("seed=0" in p.name, "seed=1" in p.name) for p in run_dirs] == [(True, False),
                                                                                                 (False, True)]
    for run_dir in run_dirs:
        assert read_summary(run_dir).status == "complete"
        assert [r.round for r in read_rounds(run_dir)] == [0, 1]
        assert (run_dir / "collapsed.pt2").is_file()
    # each job ran in its own process: submitit kept one log folder per job
    logs = sorted((runs / "sweep" / ".submitit").glob("*/*_0_log.out"))
    assert len(logs) == 2 and all("Job completed successfully" in p.read_text() for p in logs)
    frame = to_frame(local_runs([str(runs)]))
    assert sorted(frame.loc[frame["is_kept"], "seed"].tolist()) == [0, 1]
    assert len(frame) == 4  # 2 runs × rounds 0 and 1


def test_the_slurm_launcher_composes_with_cluster_settings_from_the_command_line():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", return_hydra_config=True, overrides=[
            "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=720",
            "hydra.launcher.setup=[module load cuda]", "output_root=/scratch/runs", "name=table1"])
        HydraConfig.instance().set_config(cfg)
        launcher = instantiate(cfg.hydra.launcher)
    assert type(launcher).__name__ == "SlurmLauncher"
    # Hydra itself launches only a plugin it discovered in the hydra_plugins namespace (instantiate alone does not check)
    from hydra.core.plugins import Plugins
    target = cfg.hydra.launcher._target_
    assert Plugins.instance().is_in_toplevel_plugins_module(target), target
    assert Plugins.instance().class_name_to_class[target] is type(launcher)
    p = launcher.params
    assert (p["partition"], p["timeout_min"], p["gpus_per_node"], p["setup"]) == ("gpu", 720, 1, ["module load cuda"])
    # a timed-out job gets SIGUSR2 and is requeued (submitit's checkpoint) up to max_num_timeout times
    assert p["max_num_timeout"] == 50 and p["signal_delay_s"] == 120
    assert p["submitit_folder"] == "/scratch/runs/table1/.submitit/%j"
    assert callable(getattr(launcher, "checkpoint"))


def test_make_reproduce_passes_the_launcher_to_the_sweep():
    import pytest

    from analysis.reproduce import sweep_command

    command = sweep_command("table1", "runs", [], [], "slurm")
    assert command[2:5] == ["-m", "experiment=table1", "hydra/launcher=slurm"]
    assert "hydra/launcher" not in " ".join(sweep_command("table1", "runs", [], [], "basic"))
    with pytest.raises(SystemExit, match=r"LAUNCHER='pbs' is not valid; choose one of basic, local, slurm"):
        sweep_command("table1", "runs", [], [], "pbs")
