"""Knowledge distillation from the dense network while a pruned or collapsed one fine-tunes (docs/DESIGN.md step 13).

:class:`DistillationLoss` is a :class:`~nepenthe.engine.LossTerm`: attached to the student for one fit, a forward
hook keeps the student's input and output of the last batch; calling the term runs the frozen teacher on the same
input and returns ``weight · T² · KL(softmax(teacher / T) ‖ softmax(student / T))`` (Hinton et al. 2015: the T²
keeps the gradient's size independent of T), added to the cross-entropy by the training loop, which records each
part. Practitioners heal shallowed networks this way (Gromov et al. 2024; Kim et al., Shortened LLaMA, 2024).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from .errors import ConfigError


def distillation_kl(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """``T² · KL(softmax(teacher / T) ‖ softmax(student / T))``, the batch mean, in float32."""
    t = float(temperature)
    log_student = torch.log_softmax(student.float() / t, dim=1)
    log_teacher = torch.log_softmax(teacher.float() / t, dim=1)
    return nn.functional.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True) * t * t


def frozen(teacher: nn.Module) -> nn.Module:
    """A copy of ``teacher`` in eval mode whose parameters take no gradient (the caller's model is left as it is)."""
    teacher = copy.deepcopy(teacher).eval()
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    return teacher


class DistillationLoss:
    """``weight · T² · KL`` between a frozen ``teacher`` and the model it is attached to, on the batch that model
    last saw. The teacher runs in eval mode without gradients, in the precision it is called in (the training loop
    calls loss terms outside its autocast: float32)."""

    def __init__(self, teacher: nn.Module, weight: float, temperature: float):
        if weight <= 0 or temperature <= 0:
            raise ConfigError(f"distillation needs weight > 0 and temperature > 0; got weight={weight!r}, "
                              f"temperature={temperature!r}")
        self.teacher, self.weight, self.temperature = frozen(teacher), float(weight), float(temperature)
        self._handle: RemovableHandle | None = None
        self._input: Tensor | None = None
        self._output: Tensor | None = None

    def attach(self, model: nn.Module) -> None:
        def keep(module, args, output):
            self._input, self._output = args[0], output

        self.detach()
        self._handle = model.register_forward_hook(keep)

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
        self._handle, self._input, self._output = None, None, None

    def __call__(self) -> Tensor:
        if self._input is None or self._output is None:
            raise ConfigError("the distillation term has seen no batch: attach it to the model and run a forward "
                              "pass before calling it")
        with torch.no_grad():
            target = self.teacher(self._input)
        value = self.weight * distillation_kl(self._output, target, self.temperature)
        self._input, self._output = None, None  # the batch's tensors are not kept past its step
        return value
