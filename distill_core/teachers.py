"""Teachers by spec string: `opencv:<op>[+<op>…]`, `onnx:<path>`, `torchscript:<path>`, `pairs`.

Every teacher maps float32 NCHW RGB in [0, 1] to an image of the same shape, clamped to [0, 1],
and says what it is: size on disk, parameter count where known, and a fingerprint that changes
whenever its output could (file content, or operator parameters and OpenCV version). Files are
checked when loaded, with a small probe run, so a wrong model fails there with a clear message
rather than in the middle of a run. Nothing is unpickled: ONNX files are protobuf, TorchScript
archives are read by TorchScript's own loader.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from distill_core.checksums import sha256_file

PROBE_SIZE = 32


class TeacherError(ValueError):
    """The teacher spec or file cannot be used; the message says why and what to do."""


# OpenCV's non-photorealistic operators, with the fixed parameters that make each one a teacher.
# They work on uint8 BGR images; changing a value here changes every opencv fingerprint.
OPENCV_OPS: dict[str, dict[str, Any]] = {
    "stylization": {"sigma_s": 60, "sigma_r": 0.45},
    "pencil": {"sigma_s": 60, "sigma_r": 0.07, "shade_factor": 0.02},
    "pencil_color": {"sigma_s": 60, "sigma_r": 0.07, "shade_factor": 0.02},
    "detail_enhance": {"sigma_s": 10, "sigma_r": 0.15},
    "edge_preserving": {"flags": 1, "sigma_s": 60, "sigma_r": 0.4},  # 1 = RECURS_FILTER
    "oilpainting": {"size": 7, "dyn_ratio": 1},  # histogram over the grey level
}


def _apply_op(op: str, bgr: np.ndarray) -> np.ndarray:
    p = OPENCV_OPS[op]
    if op == "stylization":
        return cv2.stylization(bgr, sigma_s=p["sigma_s"], sigma_r=p["sigma_r"])
    if op in ("pencil", "pencil_color"):
        gray, color = cv2.pencilSketch(
            bgr, sigma_s=p["sigma_s"], sigma_r=p["sigma_r"], shade_factor=p["shade_factor"]
        )
        return cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR) if op == "pencil" else color
    if op == "detail_enhance":
        return cv2.detailEnhance(bgr, sigma_s=p["sigma_s"], sigma_r=p["sigma_r"])
    if op == "edge_preserving":
        return cv2.edgePreservingFilter(
            bgr, flags=p["flags"], sigma_s=p["sigma_s"], sigma_r=p["sigma_r"]
        )
    if op == "oilpainting":
        return cv2.xphoto.oilPainting(bgr, p["size"], p["dyn_ratio"], cv2.COLOR_BGR2GRAY)
    raise KeyError(op)


class Teacher:
    """An image-to-image model or operator that students learn to imitate."""

    kind: str = ""

    def __init__(
        self,
        spec: str,
        *,
        fingerprint: str,
        size_bytes: int | None = None,
        params: int | None = None,
        path: Path | None = None,
        torch_module: torch.nn.Module | None = None,
    ) -> None:
        self.spec = spec
        self.fingerprint = fingerprint
        self.size_bytes = size_bytes
        self.params = params
        self.path = path
        self.torch_module = torch_module

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """NCHW float in [0, 1] -> same shape, no gradient, on the input's device."""
        _check_batch(tuple(x.shape))
        out = self.run_numpy(x.detach().to("cpu", torch.float32).numpy())
        return torch.from_numpy(out).to(x.device)

    def run_numpy(self, x: np.ndarray) -> np.ndarray:
        """NCHW float32 in [0, 1] -> same shape float32 in [0, 1]."""
        _check_batch(x.shape)
        out = np.asarray(self._run(np.ascontiguousarray(x, dtype=np.float32)), np.float32)
        if out.shape != x.shape:
            raise TeacherError(
                f"teacher {self.spec} returned shape {out.shape} for input {x.shape}; a teacher "
                "must return an image of the same size as its input"
            )
        return np.clip(out, 0.0, 1.0)

    def _run(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def info(self) -> dict[str, Any]:
        """Plain data describing the teacher (for reports and `teacher-info`)."""
        return {
            "spec": self.spec,
            "kind": self.kind,
            "size_bytes": self.size_bytes,
            "params": self.params,
            "fingerprint": self.fingerprint,
            "path": str(self.path) if self.path else None,
        }

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.spec} {self.fingerprint[:12]}>"


def _check_batch(shape: tuple[int, ...]) -> None:
    if len(shape) != 4 or shape[1] != 3:
        raise TeacherError(
            f"teacher input must be an NCHW batch of RGB images (N, 3, H, W), got shape {shape}"
        )


# -- opencv ------------------------------------------------------------------------------------
class OpenCVTeacher(Teacher):
    """A chain of OpenCV operators, run image by image in uint8 BGR as OpenCV expects."""

    kind = "opencv"

    def __init__(self, ops: list[str]) -> None:
        self.ops = ops
        spec = "opencv:" + "+".join(ops)
        recipe = {
            "spec": spec,
            "ops": [[op, OPENCV_OPS[op]] for op in ops],
            "opencv": cv2.__version__,
        }
        blob = json.dumps(recipe, sort_keys=True).encode()
        super().__init__(spec, fingerprint=hashlib.sha256(blob).hexdigest())

    def _run(self, x: np.ndarray) -> np.ndarray:
        out = np.empty_like(x)
        for i, image in enumerate(x):
            rgb = np.round(np.clip(image.transpose(1, 2, 0), 0, 1) * 255).astype(np.uint8)
            bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
            for op in self.ops:
                bgr = _apply_op(op, bgr)
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            out[i] = rgb.transpose(2, 0, 1).astype(np.float32) / 255.0
        return out


def _opencv_teacher(arg: str) -> OpenCVTeacher:
    ops = [op.strip().lower() for op in arg.split("+")]
    unknown = [op for op in ops if op not in OPENCV_OPS]
    if not arg.strip() or unknown:
        raise TeacherError(
            f"unknown OpenCV operator {', '.join(unknown) or '(none given)'!s}; choose from "
            f"{', '.join(OPENCV_OPS)}, chained with + (e.g. opencv:stylization+oilpainting)"
        )
    return OpenCVTeacher(ops)


# -- onnx --------------------------------------------------------------------------------------
class OnnxTeacher(Teacher):
    """An ONNX model run by onnxruntime on the CPU."""

    kind = "onnx"

    def __init__(self, spec: str, path: Path, threads: int | None = None) -> None:
        import onnx
        import onnxruntime as ort

        try:
            model = onnx.load(str(path), load_external_data=False)
            onnx.checker.check_model(str(path))
        except Exception as exc:  # protobuf and checker errors alike mean "not a model"
            raise TeacherError(f"{path.name} is not an ONNX model: {_first_line(exc)}") from exc
        graph = model.graph
        init_names = {init.name for init in graph.initializer}
        inputs = [i for i in graph.input if i.name not in init_names]
        if len(inputs) != 1:
            names = ", ".join(i.name for i in inputs) or "none"
            raise TeacherError(
                f"{path.name} has {len(inputs)} inputs ({names}); a teacher takes one image "
                "tensor, float32 NCHW RGB in [0, 1]"
            )
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in _dims(inputs[0])]
        if len(dims) != 4 or dims[1] not in (0, 3):
            raise TeacherError(
                f"{path.name} takes input of shape {_shape_text(inputs[0])}; a teacher takes "
                "float32 NCHW RGB images in [0, 1]: (batch, 3, height, width)"
            )
        elem = inputs[0].type.tensor_type.elem_type
        if elem not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
            raise TeacherError(
                f"{path.name} takes {onnx.TensorProto.DataType.Name(elem)} input; a teacher "
                "takes float32 (or float16) images in [0, 1]"
            )
        self.input_name = inputs[0].name
        self.input_dtype = np.float16 if elem == onnx.TensorProto.FLOAT16 else np.float32
        self.fixed_batch, self.fixed_hw = dims[0], (dims[2], dims[3])
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise TeacherError(f"onnxruntime cannot load {path.name}: {_first_line(exc)}") from exc
        params = sum(int(np.prod(init.dims, dtype=np.int64)) for init in graph.initializer)
        super().__init__(
            spec,
            fingerprint=sha256_file(path),
            size_bytes=path.stat().st_size,
            params=params,
            path=path,
        )
        _probe(self, path, self.fixed_hw)

    def _run(self, x: np.ndarray) -> np.ndarray:
        fixed_h, fixed_w = self.fixed_hw
        if (fixed_h and fixed_h != x.shape[2]) or (fixed_w and fixed_w != x.shape[3]):
            raise TeacherError(
                f"{self.path.name} only takes {fixed_h}x{fixed_w} images, got "
                f"{x.shape[2]}x{x.shape[3]}; export the model with dynamic height and width"
            )
        if self.fixed_batch == 1 and len(x) > 1:
            return np.concatenate([self._run(x[i : i + 1]) for i in range(len(x))])
        feed = {self.input_name: x.astype(self.input_dtype, copy=False)}
        return self.session.run(None, feed)[0].astype(np.float32)


def _dims(value_info: Any) -> list[Any]:
    return list(value_info.type.tensor_type.shape.dim)


def _shape_text(value_info: Any) -> str:
    dims = _dims(value_info)
    parts = [str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]
    return "(" + ", ".join(parts) + ")"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def _probe(teacher: Teacher, path: Path, fixed_hw: tuple[int, int] = (0, 0)) -> None:
    """Run a small grey image through the model so a wrong one fails at load time."""
    height = fixed_hw[0] or PROBE_SIZE
    width = fixed_hw[1] or PROBE_SIZE
    probe = np.full((1, 3, height, width), 0.5, np.float32)
    try:
        out = teacher._run(probe)
    except TeacherError:
        raise
    except Exception as exc:
        raise TeacherError(
            f"{path.name} failed on a 1x3x{height}x{width} test image: {_first_line(exc)}"
        ) from exc
    shape = tuple(np.shape(out))
    if shape != probe.shape:
        raise TeacherError(
            f"{path.name} turned a {probe.shape} image into {shape}; a teacher must return an "
            "RGB image of the same size as its input (float32 NCHW in [0, 1])"
        )


# -- torchscript -------------------------------------------------------------------------------
class TorchScriptTeacher(Teacher):
    """A TorchScript module; `torch_module` is exposed for feature distillation."""

    kind = "torchscript"

    def __init__(self, spec: str, path: Path) -> None:
        try:
            with warnings.catch_warnings():
                # TorchScript is deprecated upstream but remains the pickle-free way to ship a
                # torch model; the warning would only alarm users who did nothing wrong.
                warnings.simplefilter("ignore", FutureWarning)
                module = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:
            raise TeacherError(
                f"{path.name} is not a TorchScript model: {_first_line(exc)}. Save one with "
                "torch.jit.script(model).save(path) or torch.jit.trace(model, example).save(path)"
            ) from exc
        module.eval()
        params = sum(p.numel() for p in module.parameters())
        if params == 0:  # frozen modules keep their weights as state, not parameters
            params = sum(t.numel() for t in module.state_dict().values())
        super().__init__(
            spec,
            fingerprint=sha256_file(path),
            size_bytes=path.stat().st_size,
            params=params,
            path=path,
            torch_module=module,
        )
        _probe(self, path)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        _check_batch(tuple(x.shape))
        module = self.torch_module
        device = next(iter(module.parameters()), x).device
        with torch.no_grad():
            out = module(x.detach().to(device, torch.float32))
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise TeacherError(
                f"teacher {self.spec} returned {got} for input {tuple(x.shape)}; a teacher must "
                "return one image tensor of the same shape"
            )
        return out.float().clamp(0.0, 1.0).to(x.device)

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self(torch.from_numpy(x)).cpu().numpy()


# -- pairs -------------------------------------------------------------------------------------
class PairsTeacher(Teacher):
    """Stands for a teacher that ran elsewhere: its outputs are the dataset's target/ images."""

    kind = "pairs"

    def __init__(self) -> None:
        super().__init__("pairs", fingerprint=hashlib.sha256(b"pairs").hexdigest())

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        raise self._error()

    def run_numpy(self, x: np.ndarray) -> np.ndarray:
        raise self._error()

    def _error(self) -> TeacherError:
        return TeacherError(
            "the pairs teacher cannot be run: its outputs come from the dataset's target/ "
            "folder (a paired dataset with input/ and target/)"
        )


# -- loading -----------------------------------------------------------------------------------
def _file(arg: str, kind: str) -> Path:
    if not arg.strip():
        raise TeacherError(f"{kind}: needs a file path, e.g. {kind}:models/teacher.{kind[:4]}")
    path = Path(arg.strip()).expanduser()
    if not path.is_file():
        raise TeacherError(f"teacher file {path} not found (spec {kind}:{arg})")
    return path


_LOADERS: dict[str, Callable[[str, int | None], Teacher]] = {
    "opencv": lambda arg, threads: _opencv_teacher(arg),
    "onnx": lambda arg, threads: OnnxTeacher(f"onnx:{arg}", _file(arg, "onnx"), threads),
    "torchscript": lambda arg, threads: TorchScriptTeacher(
        f"torchscript:{arg}", _file(arg, "torchscript")
    ),
}


def load_teacher(spec: str, *, threads: int | None = None) -> Teacher:
    """Build a teacher from its spec; raises TeacherError with what to write instead.

    `threads` sets onnxruntime's intra-op threads (others follow torch/OpenCV process settings).
    """
    spec = (spec or "").strip()
    if spec == "pairs":
        return PairsTeacher()
    kind, sep, arg = spec.partition(":")
    loader = _LOADERS.get(kind.strip().lower()) if sep else None
    if loader is None:
        raise TeacherError(
            f"unknown teacher {spec!r}; write opencv:<operator> (one of "
            f"{', '.join(OPENCV_OPS)}), onnx:<path>, torchscript:<path> or pairs"
        )
    return loader(arg, threads)
