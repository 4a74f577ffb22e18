"""int8 and fp16 variants of an exported fp32 student, made with ONNX Runtime's own tools.

int8 is ONNX Runtime *static* quantization in QDQ form (per-channel int8 weights, calibrated
activations). `quantize_dynamic` is deliberately absent: on convolutions torch's version changes
nothing and ORT's makes ConvInteger, which the CPU provider cannot run (onnxruntime #6430, #12558,
#15888). See docs/export-and-quantization.md.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_static,
)

from distill_core.export import read_metadata, save_single_file, set_metadata

ACTIVATION_TYPES = {"uint8": QuantType.QUInt8, "uint16": QuantType.QUInt16}
# MinMax keeps the full observed range: an image model's extreme activations are its highlights
# and edges, which Percentile calibration would clip into visible flat patches. See the docs page.
CALIBRATION_METHOD = CalibrationMethod.MinMax
QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}


class QuantizeError(RuntimeError):
    """A variant could not be produced or is not what it claims to be."""


class ImageCalibrationReader(CalibrationDataReader):
    """Feeds calibration images to ORT's calibrator one image at a time."""

    def __init__(self, input_name: str, images: np.ndarray) -> None:
        self.input_name = input_name
        self.images = np.asarray(images, dtype=np.float32)
        self._iter: Iterator[dict[str, np.ndarray]] | None = None
        self.rewind()

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = ({self.input_name: image[None]} for image in self.images)


def quantize_int8(
    fp32_path: Path,
    out_path: Path,
    calibration: np.ndarray,
    *,
    exclude_first_last: bool = False,
    activation_type: str = "uint8",
) -> Path:
    """Static QDQ int8 (per-channel weights) of an fp32 ONNX image model, calibrated on images."""
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    if activation_type not in ACTIVATION_TYPES:
        raise QuantizeError(
            f"activation_type must be one of {sorted(ACTIVATION_TYPES)}, got {activation_type!r}"
        )
    calibration = np.asarray(calibration, dtype=np.float32)
    if calibration.ndim != 4 or calibration.shape[1] != 3 or len(calibration) == 0:
        raise QuantizeError(
            "calibration must be a non-empty NCHW float32 array of RGB images in [0,1], got "
            f"shape {calibration.shape}; pass a few validation images"
        )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="distill-quant-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # Shape inference + graph optimisation first, as ORT's quantization guide asks: it
        # fuses what can be fused so fewer QDQ pairs are needed. Symbolic shape inference is
        # skipped: it exists for transformers and gives up on the exporter's dynamic-H/W
        # pixel-shuffle reshapes ("Incomplete symbolic shape inference"); ONNX's own inference
        # still runs.
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        model = onnx.load(str(prepared))
        _name_unnamed_nodes(model)
        onnx.save_model(model, str(prepared))
        excluded = _first_and_last_conv(model) if exclude_first_last else []
        quantize_static(
            str(prepared),
            str(out_path),
            ImageCalibrationReader(model.graph.input[0].name, calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            # 7-bit weights: ORT's x86 u8s8 kernels (AVX2 without VNNI) can overflow their int16
            # intermediate sums on the first conv (inputs span 0..255); measured on the trained
            # default student: 22.19 -> 19.88 dB without it, 22.13 dB with it.
            # (16-bit activations take the int32 path, where 8-bit weights cost nothing.)
            reduce_range=activation_type == "uint8",
            weight_type=QuantType.QInt8,
            activation_type=ACTIVATION_TYPES[activation_type],
            calibrate_method=CALIBRATION_METHOD,
            nodes_to_exclude=excluded,
        )
    quantized = onnx.load(str(out_path))
    _verify_qdq(quantized, out_path)
    _compact_names(quantized)
    details = (
        f"static QDQ, per-channel int8 weights (reduce_range), {activation_type} activations, "
        f"{CALIBRATION_METHOD.name} calibration on {len(calibration)} images"
    )
    if excluded:
        details += f", first/last conv kept fp32 ({', '.join(excluded)})"
    _copy_metadata(fp32_path, quantized, {"precision": "int8", "quantization": details})
    save_single_file(quantized, out_path)
    return out_path


def convert_fp16(fp32_path: Path, out_path: Path) -> Path:
    """fp16 weights and compute, with float32 input/output so the image contract holds."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    fp32_path, out_path = Path(fp32_path), Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    model = onnx.load(str(fp32_path))
    half = convert_float_to_float16(model, keep_io_types=True)
    # The converter appends its input Cast nodes at the end of the node list; ORT copes, but
    # the ONNX spec (and onnx.checker) wants nodes in topological order.
    _sort_topologically(half.graph)
    _copy_metadata(fp32_path, half, {"precision": "fp16"})
    onnx.checker.check_model(half)
    save_single_file(half, out_path)
    return out_path


def _sort_topologically(graph: onnx.GraphProto) -> None:
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        ready = [n for n in pending if all(name in available for name in n.input)]
        if not ready:
            raise QuantizeError("the fp16 graph has a cycle or a dangling input; report this model")
        for node in ready:
            ordered.append(node)
            available.update(node.output)
        ready_ids = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in ready_ids]
    copies = [onnx.NodeProto.FromString(n.SerializeToString()) for n in ordered]
    del graph.node[:]
    graph.node.extend(copies)


def _name_unnamed_nodes(model: onnx.ModelProto) -> None:
    # nodes_to_exclude matches by name; the exporter may leave some nodes anonymous.
    taken = {node.name for node in model.graph.node if node.name}
    for index, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{index}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)


def _compact_names(model: onnx.ModelProto) -> None:
    # QDQ multiplies the exporter's long tensor names ("/blocks/blocks.1/body/body.5/
    # Clip_output_0_zero_point", four per quantized tensor) and pre-processing adds shape
    # annotations: on a 56 K-parameter student that is a fifth of the int8 file. Short names
    # and no annotations leave the computation bit-identical (ORT re-infers shapes on load).
    graph = model.graph
    if any(attr.g.node or attr.graphs for node in graph.node for attr in node.attribute):
        return  # subgraphs (If/Loop) refer to outer names; students have none
    public = {v.name for v in graph.input} | {v.name for v in graph.output} | {""}
    short: dict[str, str] = {}

    def rename(name: str) -> str:
        if name in public:
            return name
        return short.setdefault(name, f"t{len(short)}")

    for init in graph.initializer:
        init.name = rename(init.name)
    for index, node in enumerate(graph.node):
        node.input[:] = [rename(name) for name in node.input]
        node.output[:] = [rename(name) for name in node.output]
        node.name = f"{node.op_type}_{index}"
    del graph.value_info[:]


def _first_and_last_conv(model: onnx.ModelProto) -> list[str]:
    # Graph nodes are stored in topological order, so the first and last Conv in the list are
    # the ones touching the image at full precision: the input stem and the output head.
    convs = [node.name for node in model.graph.node if node.op_type == "Conv"]
    if not convs:
        return []
    return sorted({convs[0], convs[-1]})


def _verify_qdq(model: onnx.ModelProto, path: Path) -> None:
    ops = {node.op_type for node in model.graph.node}
    int8_weights = [
        init.name for init in model.graph.initializer if init.data_type == onnx.TensorProto.INT8
    ]
    if not ops >= QDQ_OPS or not int8_weights:
        raise QuantizeError(
            f"{path.name} holds no QuantizeLinear/DequantizeLinear pair with int8 weights "
            f"(ops: {', '.join(sorted(ops))}); the model has nothing ORT could quantize"
        )


def _copy_metadata(fp32_path: Path, model: onnx.ModelProto, extra: dict[str, str]) -> None:
    set_metadata(model, {**read_metadata(fp32_path), **extra})


def op_counts(path: Path) -> dict[str, int]:
    """How many nodes of each op type an ONNX file holds (for reports and tests)."""
    counts: dict[str, int] = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts
