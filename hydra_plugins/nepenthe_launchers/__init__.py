"""nepenthe's Hydra launchers (conf/hydra/launcher/slurm.yaml, local.yaml): hydra-submitit-launcher's, waiting for
every job and recording a job the cluster killed as failed (nepenthe_cli/launchers.py). Hydra instantiates a
launcher only from the ``hydra_plugins`` namespace package, hence this module."""

from hydra_plugins.hydra_submitit_launcher.submitit_launcher import (LocalLauncher as PluginLocalLauncher,
                                                                     SlurmLauncher as PluginSlurmLauncher)

from nepenthe_cli.launchers import CollectsEveryJob


class SlurmLauncher(CollectsEveryJob, PluginSlurmLauncher):
    """One Slurm array task per job (conf/hydra/launcher/slurm.yaml)."""


class LocalLauncher(CollectsEveryJob, PluginLocalLauncher):
    """The jobs as parallel processes on this machine (conf/hydra/launcher/local.yaml)."""
