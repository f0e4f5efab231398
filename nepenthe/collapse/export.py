"""Ship a collapsed model: a torch.export program (reloadable with plain PyTorch, no nepenthe code) and ONNX (run in
ONNX Runtime, verified there against the torch model). Both keep the batch size free.

    model = torch.export.load("collapsed.pt2").module()
    session = onnxruntime.InferenceSession("collapsed.onnx", providers=["CPUExecutionProvider"])

ONNX needs the optional extra ``pip install -e .[deploy]`` (onnx, onnxruntime, onnxscript), imported only here.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.export import Dim

from ..atomic import write_via_temp
from ..errors import NepentheError
from .graph import CollapseError

DEPLOY_EXTRA = "pip install -e .[deploy] (onnx, onnxruntime, onnxscript)"
MAX_BATCH = 1 << 16


class OnnxUnavailable(NepentheError):
    """ONNX export or ONNX Runtime is not installed."""


def _batch_free() -> Dim:
    return Dim("batch", min=1, max=MAX_BATCH)


def _two_or_more(example_input: Tensor) -> Tensor:
    """An example batch of at least two samples: traced at batch 1, a model whose code reads the batch size from a
    shape (torchvision's Swin reshapes its windows that way) is specialised to batch 1 without a word (torch.export's
    0/1 specialisation), and the exported graph then refuses any other batch."""
    return example_input if example_input.shape[0] >= 2 else example_input.expand(2, *example_input.shape[1:])


def save_collapsed(model: nn.Module, example_input: Tensor, path: str | Path) -> Path:
    """Export ``model`` for ``example_input``'s sample shape with a free batch size; written atomically."""
    try:
        program = torch.export.export(model.eval(), (_two_or_more(example_input),),
                                      dynamic_shapes=({0: _batch_free()},))
    except Exception as exc:
        raise CollapseError(f"torch.export could not export the collapsed model ({type(exc).__name__}: {exc})") from exc
    inputs = [node for node in program.graph.nodes if node.op == "placeholder"
              and node.name in program.graph_signature.user_inputs]
    if not isinstance(inputs[0].meta["val"].shape[0], torch.SymInt):
        raise CollapseError(f"torch.export fixed the batch size of {type(model).__name__} at "
                            f"{inputs[0].meta['val'].shape[0]}: the exported program would refuse any other batch")
    return write_via_temp(path, lambda tmp: torch.export.save(program, tmp))


def load_collapsed(path: str | Path) -> nn.Module:
    """The saved collapsed model as a callable module (what ``torch.export.load(path).module()`` returns)."""
    return torch.export.load(str(path)).module()


def _onnx_modules():
    try:
        import onnx
        import onnxruntime
        import onnxscript  # noqa: F401  (the dynamo exporter needs it)
    except ImportError as exc:
        raise OnnxUnavailable(f"ONNX export needs the deploy extra, which is not installed ({exc.name} is missing): "
                              f"{DEPLOY_EXTRA}") from None
    return onnx, onnxruntime


@contextlib.contextmanager
def _quiet_exporter():
    """The dynamo exporter prints its progress and warns about train mode; neither concerns a verified export."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "onnx_ir")]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for log, level in zip(loggers, levels):
            log.setLevel(level)


def export_onnx(model: nn.Module, example_input: Tensor, path: str | Path) -> Path:
    """``torch.onnx.export`` (the dynamo exporter) with a free batch size, checked by ``onnx.checker``, written
    atomically. A model the exporter cannot handle is one :class:`CollapseError` naming why."""
    onnx, _ = _onnx_modules()
    model = model.eval()
    x = _two_or_more(example_input.float()).contiguous()

    def write(tmp):
        with _quiet_exporter():
            torch.onnx.export(model, (x,), tmp, dynamo=True, dynamic_shapes=({0: _batch_free()},),
                              external_data=False)
        graph = onnx.load(tmp)
        onnx.checker.check_model(graph)
        batch = graph.graph.input[0].type.tensor_type.shape.dim[0]
        if not batch.dim_param:
            raise CollapseError(f"the ONNX graph has its batch size fixed at {batch.dim_value}: ONNX Runtime would "
                                f"refuse any other batch")

    try:
        return write_via_temp(path, write)
    except OnnxUnavailable:
        raise
    except Exception as exc:
        raise CollapseError(f"torch.onnx could not export {type(model).__name__}: {_root_cause(exc)}") from exc


def _root_cause(exc: BaseException) -> str:
    """The innermost error of the exporter's chain, on one line (its outer messages are generic advice)."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).split())
    return f"{type(exc).__name__}: {text[:300]}"


class OnnxRuntimeModel:
    """An ONNX file in ONNX Runtime (CPU execution provider, ``threads`` intra-op threads), called like a module
    with a float tensor; returns a tensor."""

    def __init__(self, path: str | Path, threads: int | None = None):
        _, ort = _onnx_modules()
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: Tensor) -> Tensor:
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(np.asarray(self.session.run(None, {self.input_name: array})[0]))


@torch.no_grad()
def onnx_relative_diff(onnx_model: OnnxRuntimeModel, model: nn.Module, batch: Tensor) -> float:
    """max |ONNX Runtime − torch| / max |torch| on ``batch`` (float32)."""
    expected = model(batch.float()).detach().to("cpu", torch.float64)
    got = onnx_model(batch).to(torch.float64)
    if got.shape != expected.shape:
        raise CollapseError(f"ONNX Runtime returns shape {tuple(got.shape)} where the torch model returns "
                            f"{tuple(expected.shape)}")
    scale = float(expected.abs().max()) or 1.0
    return float((got - expected).abs().max()) / scale
