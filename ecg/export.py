"""`ecg export`: a trained model as a ``torch.export`` program (and TorchScript or ONNX when
asked), with its preprocessing description beside it, for use outside Python's ecg package.
Each file is written whole or not at all (``ecg.atomic``)."""

from __future__ import annotations

import importlib.util
import json
import logging
import warnings
from pathlib import Path

import torch

from ecg.atomic import atomic_path, write_text_atomic
from ecg.errors import EcgError
from ecg.model import PackagedClassifier
from ecg.predict import LoadedModel

log = logging.getLogger("ecg")

FILE_OF = {"exported": "model.pt2", "torchscript": "model.torchscript.pt", "onnx": "model.onnx"}

# torch 2.13's exporters warn about their own internals: helpers they deprecated and still call,
# and the LSTM's flat weights they reassign while tracing. These say nothing about the file (the
# export tests compare its outputs with the model's at another batch size), so only these are
# hidden; any other warning still shows.
_EXPORTER_OWN_WARNINGS = (
    r"_check_is_size will be removed",
    r"The tensor attributes self\.classifier\..*lstm\._flat_weights",  # each member's, in turn
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
)


def packaged(model: LoadedModel) -> PackagedClassifier:
    spec = model.spec
    return PackagedClassifier(
        model.classifier, model.normalizer, spec["n_leads"], spec["n_rr"]
    ).eval()


def example_input(model: LoadedModel, batch: int = 2) -> torch.Tensor:
    spec = model.spec
    return torch.randn(batch, spec["window_samples"], spec["n_leads"] + spec["n_rr"])


def export(model: LoadedModel, out: Path, formats: list[str]) -> list[Path]:
    unknown = [f for f in formats if f not in FILE_OF]
    if unknown or not formats:
        named = ",".join(unknown) or "(none)"
        raise EcgError(f"--format {named}: expected one or more of {', '.join(FILE_OF)}")
    if "onnx" in formats:
        # torch's ONNX exporter needs onnxscript as well as onnx (measured with torch 2.13: with
        # onnx alone it fails with ModuleNotFoundError deep inside torch.onnx).
        missing = [p for p in ("onnx", "onnxscript") if importlib.util.find_spec(p) is None]
        if missing:
            raise EcgError(
                f"--format onnx needs the {' and '.join(missing)} package(s): "
                "pip install onnx onnxscript (or pip install -e '.[onnx]')"
            )
    out.mkdir(parents=True, exist_ok=True)
    module = packaged(model)
    example = example_input(model)
    beats = torch.export.Dim("beats")  # any batch size, one included
    written = []
    for fmt in (f for f in FILE_OF if f in formats):
        path = out / FILE_OF[fmt]
        with atomic_path(path) as tmp, torch.no_grad(), warnings.catch_warnings():
            for message in _EXPORTER_OWN_WARNINGS:
                warnings.filterwarnings("ignore", message=message)
            if fmt == "exported":
                program = torch.export.export(module, (example,), dynamic_shapes=({0: beats},))
                with tmp.open("wb") as f:  # a file object: a path must end in .pt2, tmp's does not
                    torch.export.save(program, f)
            elif fmt == "torchscript":
                _trace(module, example).save(str(tmp))
            else:
                torch.onnx.export(
                    module,
                    (example,),
                    str(tmp),
                    input_names=["packed"],
                    output_names=["probabilities"],
                    dynamic_shapes=({0: beats},),
                    external_data=False,  # one file: the weights are small, a lone .onnx is whole
                    verbose=False,
                )
        written.append(path)
    spec_path = out / "spec.json"
    write_text_atomic(
        spec_path,
        json.dumps(
            {
                **model.spec,
                "input": "float32 (beats, window_samples, n_leads + n_rr): the filtered window "
                "in mV (preprocessing in 'signal'), with the beat's RR features (names in "
                "'rr_features') repeated along time",
                "output": "class probabilities in the order of 'classes'",
            },
            indent=1,
        ),
    )
    written.append(spec_path)
    return written


def _trace(module: torch.nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    """TorchScript, kept for users who load it from C++ (LibTorch). torch 2.13 deprecates
    ``torch.jit``: the two warnings it gives while tracing become one that names the replacement
    (``torch.jit.load`` still warns wherever the file is loaded)."""
    log.warning(
        "TorchScript is deprecated in torch 2.13 (torch.jit.trace and torch.jit.load warn); "
        "--format exported writes its replacement, a torch.export program (model.pt2)"
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*torch\.jit")
        # The LSTM's hidden-size check becomes a constant in the trace; the batch size does not
        # (the export test feeds another batch size and compares outputs).
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        return torch.jit.trace(module, example)
