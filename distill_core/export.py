"""ONNX export of a trained student, with the input contract written into the file.

Every exported model takes and returns float32 NCHW RGB in [0, 1] with dynamic batch, height and
width; the run id and config hash travel in `metadata_props`, so a device agent needs nothing but
the file. A parity check against torch guards against silent export errors.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

IMAGE_SPEC = "float32 NCHW RGB in [0,1]"
PARITY_TOLERANCE = 1e-4
INPUT_NAME = "input"
OUTPUT_NAME = "output"


class ExportError(RuntimeError):
    """The model could not be exported faithfully; the message says what differed."""


def export_onnx(
    model: nn.Module,
    path: Path,
    *,
    run_id: str,
    config_hash: str,
    opset: int = 17,
    example_size: int = 64,
) -> Path:
    """Export `model` to a single-file ONNX at `path` (fp32, dynamic N/H/W, metadata set)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A CPU float32 copy in eval mode: BatchNorm folds into convs, and the caller's model
    # (maybe on CUDA, maybe still training) is left as it was.
    cpu_model = copy.deepcopy(model).to("cpu", torch.float32).eval()
    example = torch.rand(
        1, 3, example_size, example_size, generator=torch.Generator().manual_seed(0)
    )
    try:
        _export_torchscript(cpu_model, example, path, opset)
    except (TypeError, RuntimeError, NotImplementedError, ImportError) as legacy_error:
        # The TorchScript exporter is deprecated in torch 2.9+; when it is gone or refuses the
        # model, torch.export (dynamo) is the supported route.
        try:
            _export_dynamo(cpu_model, example, path, opset)
        except Exception as exc:
            raise ExportError(
                f"could not export the model to ONNX: {exc} (TorchScript exporter said: "
                f"{legacy_error}); the student must be traceable with dynamic height/width"
            ) from exc
    onnx_model = onnx.load(str(path))
    set_metadata(
        onnx_model,
        {
            "run_id": run_id,
            "config_hash": config_hash,
            "input_spec": IMAGE_SPEC,
            "output_spec": IMAGE_SPEC,
            "producer": "distillery",
            "precision": "fp32",
        },
    )
    try:
        onnx.checker.check_model(onnx_model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(
            f"the exported ONNX file is not valid ({exc}); the student uses an op the exporter "
            "translated wrongly — report the student family and parameters"
        ) from exc
    save_single_file(onnx_model, path)
    return path


def _dynamic_axes() -> dict[str, dict[int, str]]:
    axes = {0: "batch", 2: "height", 3: "width"}
    return {INPUT_NAME: axes, OUTPUT_NAME: axes}


def _export_torchscript(model: nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    with warnings.catch_warnings():
        # The deprecation notice is known; it would repeat in every run log.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # Benign for our students: reflection-pad slices are simply not pre-folded, and
        # InstanceNorm without running stats always normalises by the input's own statistics.
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
        warnings.filterwarnings("ignore", message="ONNX export mode is set to TrainingMode.EVAL")
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes=_dynamic_axes(),
            opset_version=opset,
            do_constant_folding=True,
        )


def _export_dynamo(model: nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    from torch.export import Dim

    # Students downsample and pixel-shuffle back up, so H and W are declared multiples of 8
    # (the contract in students.py); a free Dim would fail the exporter's shape guards.
    height = 8 * Dim("height_div8", min=1, max=1024)
    width = 8 * Dim("width_div8", min=1, max=1024)
    torch.onnx.export(
        model,
        (example,),
        str(path),
        dynamo=True,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes=({0: Dim("batch", min=1, max=1024), 2: height, 3: width},),
        # This exporter writes opset 18 natively; asking for less adds a lossy down-conversion.
        opset_version=max(opset, 18),
        verbose=False,
        external_data=False,
        optimize=True,
    )
    # dynamo names the symbolic dims after the Dim objects; use the same names as the legacy path.
    onnx_model = onnx.load(str(path))
    for value in (*onnx_model.graph.input, *onnx_model.graph.output):
        dims = value.type.tensor_type.shape.dim
        for index, name in ((0, "batch"), (2, "height"), (3, "width")):
            if len(dims) > index and not dims[index].HasField("dim_value"):
                dims[index].dim_param = name
    save_single_file(onnx_model, path)


def set_metadata(onnx_model: onnx.ModelProto, values: dict[str, str]) -> None:
    """Set (replace) `metadata_props` keys on an in-memory model."""
    current = {p.key: p.value for p in onnx_model.metadata_props}
    current.update({k: str(v) for k, v in values.items()})
    del onnx_model.metadata_props[:]
    for key, value in current.items():
        onnx_model.metadata_props.add(key=key, value=value)


def read_metadata(path: Path) -> dict[str, str]:
    """The `metadata_props` of an ONNX file as a dict."""
    onnx_model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in onnx_model.metadata_props}


def save_single_file(onnx_model: onnx.ModelProto, path: Path) -> None:
    """Save with all weights inside the file: students are far below protobuf's 2 GB limit."""
    path = Path(path)
    onnx.save_model(onnx_model, str(path), save_as_external_data=False)
    # An earlier exporter run may have left a side-car data file; it no longer belongs to `path`.
    stale = path.with_name(path.name + ".data")
    if stale.exists():
        stale.unlink()


def run_onnx(path: Path, images: np.ndarray, threads: int = 1) -> np.ndarray:
    """Run an ONNX image model on CPU over NCHW float32 `images`, one image at a time."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be NCHW with 3 channels, got shape {images.shape}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    # One image per call bounds memory at eval size (64 images at 512² would be ~200 MB in flight).
    outputs = [session.run(None, {input_name: image[None]})[0] for image in images]
    return np.concatenate(outputs, axis=0).astype(np.float32, copy=False)


def run_torch(model: nn.Module, images: np.ndarray) -> np.ndarray:
    """Run `model` on CPU float32 over NCHW `images` without touching the caller's model."""
    cpu_model = copy.deepcopy(model).to("cpu", torch.float32).eval()
    with torch.no_grad():
        outputs = [cpu_model(torch.from_numpy(np.ascontiguousarray(img[None]))) for img in images]
    return torch.cat(outputs).numpy()


def check_parity(model: nn.Module, onnx_path: Path, images: np.ndarray) -> float:
    """Max abs difference between torch and ONNX Runtime outputs; ExportError above 1e-4."""
    images = np.asarray(images, dtype=np.float32)
    expected = run_torch(model, images)
    actual = run_onnx(onnx_path, images)
    if expected.shape != actual.shape:
        raise ExportError(
            f"the ONNX model returns shape {actual.shape} where torch returns {expected.shape}; "
            "re-export the model"
        )
    diff = float(np.max(np.abs(expected - actual))) if expected.size else 0.0
    if not np.isfinite(diff) or diff > PARITY_TOLERANCE:
        raise ExportError(
            f"the ONNX export differs from the torch model by up to {diff:.3g} "
            f"(allowed {PARITY_TOLERANCE:g}) on {len(images)} test image(s); the exported file "
            "would not reproduce the trained student — check for ops that trace differently"
        )
    return diff
