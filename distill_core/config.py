"""The run configuration: one validated dataclass, plain JSON in and out.

Configs arrive from the web form, the CLI and JSON files, so nothing here imports or calls code
named in a config: students and losses are looked up by registered name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    """A config value is wrong; the message names the key and what would be accepted."""


@dataclass
class DistillConfig:
    """Everything that decides what a run computes. Saved in every checkpoint and report."""

    preset: str = "custom"
    # Student family by registered name (see students.py) and its keyword parameters.
    student_family: str = "tiny_style"
    student: dict[str, Any] = field(default_factory=dict)
    # Loss terms by registered name (see losses.py) -> weight. Zero-weight terms are not computed.
    losses: dict[str, float] = field(default_factory=lambda: {"pixel_l1": 1.0})
    kl_temperature: float = 4.0
    # Where style/feature terms get features: "teacher" (a torch teacher's layers),
    # "vgg16:<path to weights .pth>" (loaded with weights_only=True), or "random" (a fixed,
    # seeded random conv stack: works offline, weaker than VGG; documented in docs/core.md).
    feature_extractor: str = "random"
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    # StepLR in optimizer steps (the article's "every 5 epochs" is converted by the preset).
    lr_step_size: int = 0  # 0 = constant learning rate
    lr_gamma: float = 0.9
    steps: int = 400
    batch_size: int = 8
    image_size: int = 96  # training crop; the nets are fully convolutional
    eval_size: int = 256  # evaluation, export and latency size
    seed: int = 0
    checkpoint_every: int = 100
    eval_every: int = 100
    num_samples: int = 8  # sample PNGs (input | teacher | student) written at the end
    max_eval_images: int = 64  # cap on val/test images evaluated (test split)
    amp: str = (
        "auto"  # auto (bf16 on CUDA when supported, else fp16; off on CPU) | off | bf16 | fp16
    )
    device: str = "auto"  # auto | cpu | cuda
    quantize_int8: bool = True
    quantize_fp16: bool = True
    calibration_images: int = 32
    int8_exclude_first_last: bool = False
    latency_threads: list[int] = field(default_factory=lambda: [1, 4])
    latency_runs: int = 50
    latency_warmup: int = 10

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DistillConfig:
        """Build and validate from plain data; unknown keys are an error, not ignored."""
        if not isinstance(data, dict):
            raise ConfigError(f"config must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"unknown config key(s): {', '.join(unknown)}; "
                f"known keys: {', '.join(sorted(known))}"
            )
        cfg = cls(**{k: _copy(v) for k, v in data.items()})
        cfg.validate()
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable data."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def config_hash(self) -> str:
        """Stable 16-hex-digit hash of the config (key order does not matter)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def with_overrides(self, overrides: list[str]) -> DistillConfig:
        """Apply `key=value` strings (values parsed as JSON, else taken as text); dotted keys
        reach into dicts: `losses.style=0.5`, `student.channels=[16,32,64]`."""
        data = self.to_dict()
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set steps=200")
            key, raw = item.split("=", 1)
            key = key.strip()
            value = _parse_value(raw)
            parts = key.split(".")
            if parts[0] not in data:
                raise ConfigError(
                    f"--set {key}: unknown key {parts[0]!r}; known keys: {', '.join(sorted(data))}"
                )
            target = data
            for p in parts[:-1]:
                if not isinstance(target.get(p), dict):
                    raise ConfigError(f"--set {key}: {p!r} is not a group of settings")
                target = target[p]
            target[parts[-1]] = value
        return DistillConfig.from_dict(data)

    # -- validation ---------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ConfigError naming the first wrong value."""
        _check_type("preset", self.preset, str)
        _check_type("student_family", self.student_family, str)
        _check_type("student", self.student, dict)
        _check_type("losses", self.losses, dict)
        _check_type("feature_extractor", self.feature_extractor, str)
        _check_type("optimizer", self.optimizer, str)
        for name in ("kl_temperature", "lr", "weight_decay", "lr_gamma"):
            _check_number(name, getattr(self, name))
        ints = [
            "lr_step_size",
            "steps",
            "batch_size",
            "image_size",
            "eval_size",
            "seed",
            "checkpoint_every",
            "eval_every",
            "num_samples",
            "max_eval_images",
            "calibration_images",
            "latency_runs",
            "latency_warmup",
        ]
        for name in ints:
            _check_int(name, getattr(self, name))
        for name in ("quantize_int8", "quantize_fp16", "int8_exclude_first_last"):
            _check_type(name, getattr(self, name), bool)
        _positive("steps", self.steps)
        _positive("batch_size", self.batch_size)
        _positive("checkpoint_every", self.checkpoint_every)
        _positive("eval_every", self.eval_every)
        _positive("latency_runs", self.latency_runs)
        if not 8 <= self.image_size <= 2048 or self.image_size % 8:
            raise ConfigError(
                f"image_size={self.image_size}: must be a multiple of 8 between 8 and 2048"
            )
        if not 8 <= self.eval_size <= 4096 or self.eval_size % 8:
            raise ConfigError(
                f"eval_size={self.eval_size}: must be a multiple of 8 between 8 and 4096"
            )
        if not 0 < self.lr <= 1:
            raise ConfigError(f"lr={self.lr}: must be greater than 0 and at most 1")
        if not 0 < self.lr_gamma <= 1:
            raise ConfigError(f"lr_gamma={self.lr_gamma}: must be in (0, 1]")
        if self.kl_temperature <= 0:
            raise ConfigError(f"kl_temperature={self.kl_temperature}: must be greater than 0")
        if self.lr_step_size < 0 or self.weight_decay < 0:
            raise ConfigError("lr_step_size and weight_decay must not be negative")
        if self.latency_warmup < 10:
            raise ConfigError(
                f"latency_warmup={self.latency_warmup}: at least 10 warm-up runs are needed "
                "for stable CPU timings"
            )
        if self.amp not in ("auto", "off", "bf16", "fp16"):
            raise ConfigError(f"amp={self.amp!r}: choose auto, off, bf16 or fp16")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device={self.device!r}: choose auto, cpu or cuda")
        if self.optimizer not in ("adam", "adamw", "sgd"):
            raise ConfigError(f"optimizer={self.optimizer!r}: choose adam, adamw or sgd")
        if not isinstance(self.latency_threads, list) or not all(
            isinstance(t, int) and not isinstance(t, bool) and t > 0 for t in self.latency_threads
        ):
            raise ConfigError(
                f"latency_threads={self.latency_threads!r}: a list of positive integers"
            )
        if not (
            self.feature_extractor in ("teacher", "random")
            or self.feature_extractor.startswith("vgg16:")
        ):
            raise ConfigError(
                f"feature_extractor={self.feature_extractor!r}: choose teacher, random or "
                "vgg16:<path to VGG16 weights saved with torch.save(state_dict)>"
            )
        for name, weight in self.losses.items():
            _check_number(f"losses.{name}", weight)
            if weight < 0:
                raise ConfigError(f"losses.{name}={weight}: weights must not be negative")
        if not any(w > 0 for w in self.losses.values()):
            raise ConfigError("losses: at least one loss term needs a weight above 0")
        # Registered names are checked against the registries (imported late: they import torch).
        from distill_core import losses as _losses
        from distill_core import students as _students

        _students.validate_student(self.student_family, self.student)
        for name in self.losses:
            if name not in _losses.LOSSES:
                raise ConfigError(
                    f"losses.{name}: unknown loss; choose from {', '.join(sorted(_losses.LOSSES))}"
                )


def _copy(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _parse_value(raw: str) -> Any:
    raw = raw.strip()
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _check_type(name: str, value: Any, kind: type) -> None:
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise ConfigError(f"{name}={value!r}: expected {kind.__name__}")


def _check_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name}={value!r}: expected a whole number")


def _check_number(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise ConfigError(f"{name}={value!r}: expected a number")


def _positive(name: str, value: int) -> None:
    if value <= 0:
        raise ConfigError(f"{name}={value}: must be at least 1")
