"""`ecg export`: a trained model as TorchScript (and ONNX when the onnx package is installed),
with its preprocessing description beside it, for use outside Python's ecg package."""

from __future__ import annotations

import importlib.util
import json
import logging
import warnings
from pathlib import Path

import torch

from ecg.errors import EcgError
from ecg.model import PackagedClassifier
from ecg.predict import LoadedModel

log = logging.getLogger("ecg")

_EXPORTER_OWN_WARNINGS = (
    r"_check_is_size will be removed",
    r"The tensor attributes self\.classifier\.lstm\._flat_weights",
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
    unknown = [f for f in formats if f not in ("torchscript", "onnx")]
    if unknown:
        raise EcgError(f"--format {','.join(unknown)}: expected torchscript and/or onnx")
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
    written = []
    if "torchscript" in formats:
        with torch.no_grad(), warnings.catch_warnings():
            # The LSTM's hidden-size check becomes a constant in the trace; the batch size does
            # not (the export test feeds another batch size and compares outputs).
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            traced = torch.jit.trace(module, example)
        path = out / "model.torchscript.pt"
        traced.save(str(path))
        written.append(path)
    if "onnx" in formats:
        path = out / "model.onnx"
        with warnings.catch_warnings():
            # torch 2.13's exporter warns about its own internals: helpers it deprecated and
            # still calls, and the LSTM's flat weights it reassigns while tracing. They say
            # nothing about the file (the export test compares its outputs with the model's at
            # another batch size), so only these are hidden; any other warning still shows.
            for message in _EXPORTER_OWN_WARNINGS:
                warnings.filterwarnings("ignore", message=message)
            torch.onnx.export(
                module,
                (example,),
                str(path),
                input_names=["packed"],
                output_names=["probabilities"],
                dynamic_shapes=({0: torch.export.Dim("beats")},),
                external_data=False,  # one file: the weights are small, and a lone .onnx is whole
                verbose=False,
            )
        written.append(path)
    spec_path = out / "spec.json"
    spec_path.write_text(
        json.dumps(
            {
                **model.spec,
                "input": "float32 (beats, window_samples, n_leads + n_rr): the filtered window "
                "in mV (preprocessing in 'signal'), with the beat's RR features (names in "
                "'rr_features') repeated along time",
                "output": "class probabilities in the order of 'classes'",
            },
            indent=1,
        )
    )
    written.append(spec_path)
    return written
