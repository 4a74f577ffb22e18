"""Named starting configs: the article's recipe (fixed), ours, a published peer, and a test one.

``seed`` follows the tutorial our users come from, with its three errors corrected:

1. its pixel loss compared the student with the *input*; here ``pixel_mse`` compares it with the
   teacher's output (otherwise the student is pulled toward the identity);
2. its ``F.kl_div(student.log(), teacher)`` on raw images is ill-defined (kl_div wants
   log-probabilities, and log of 0 is -inf); here ``kl`` is channel-wise distillation
   (Shu et al. 2021) on feature maps;
3. its ``torch.quantization.quantize_dynamic`` leaves Conv2d untouched; every run here exports
   fp32 ONNX and makes int8 by ONNX Runtime static quantization (QDQ, calibrated).

Also, of necessity: the article's "30 epochs, StepLR(5, 0.9)" is counted in optimizer steps for
its ~1,000-image data set (700 training images at batch 16 = 44 steps an epoch: 1,320 steps, the
rate times 0.9 every 220); its style term used VGG16, which we may not download, so
``feature_extractor`` is the fixed random stack unless the user points to VGG16 weights
(``--set feature_extractor=vgg16:/path/vgg16.pth``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from distill_core.config import ConfigError, DistillConfig
from distill_core.students import describe_student


@dataclass(frozen=True)
class Preset:
    """A named config and the reasons for its values."""

    name: str
    description: str
    config: dict[str, Any]
    notes: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)


# The article's ~1,000 images, split 7:2:1, at batch 16: 44 steps an epoch (the last one short).
_SEED_EPOCH_STEPS = -(-700 // 16)

PRESETS: dict[str, Preset] = {
    "seed": Preset(
        "seed",
        "the article's recipe, corrected: tiny_style [16,32,64]x3, 0.4 pixel + 0.4 style + 0.2 KL",
        {
            "student_family": "tiny_style",
            "student": {"channels": [16, 32, 64], "blocks": 3, "norm": "instance"},
            "losses": {"pixel_mse": 0.4, "style": 0.4, "kl": 0.2},
            "kl_temperature": 4.0,
            "feature_extractor": "random",
            "optimizer": "adam",
            "lr": 1e-4,
            "lr_step_size": 5 * _SEED_EPOCH_STEPS,  # StepLR(step_size=5 epochs)
            "lr_gamma": 0.9,
            "steps": 30 * _SEED_EPOCH_STEPS,  # 30 epochs
            "batch_size": 16,
            "image_size": 256,
            "eval_size": 256,
        },
        notes=__doc__ or "",
    ),
    "default": Preset(
        "default",
        "ours: mobile_residual (~59 K params, ~0.25 GMACs at 256x256), L1 to the teacher",
        {
            "student_family": "mobile_residual",
            "student": {
                "width": 32,
                "blocks": 5,
                "expand": 4,
                "dilations": [1, 2, 4],
                "refine": 8,
            },
            "losses": {"pixel_l1": 1.0},
            "optimizer": "adam",
            "lr": 5e-3,
            "lr_step_size": 500,
            "lr_gamma": 0.5,
            "steps": 2000,
            "batch_size": 8,
            "image_size": 96,
            "eval_size": 256,
        },
        notes=(
            "A residual over the input, computed at 1/4 resolution by depthwise blocks and "
            "pixel-shuffled back up: starts at the identity baseline and learns only the "
            "operator's change; every op has an int8 kernel. L1 to the teacher output; the rate "
            "halves every 500 steps. Trained on 96x96 crops (the net is fully convolutional), "
            "evaluated and timed at 256x256. Distilling OpenCV stylization: 22.2 dB after 2,000 "
            "steps (identity 13.9 dB); refine=0 gives 21.7 dB at two thirds of the latency."
        ),
    ),
    "can24": Preset(
        "can24",
        "Chen, Xu, Koltun 2017: CAN24 (~37 K params, full resolution), MSE to the teacher",
        {
            "student_family": "can24",
            "student": {"width": 24, "depth": 9, "identity_init": True},
            "losses": {"pixel_mse": 1.0},
            "optimizer": "adam",
            "lr": 1e-3,
            "lr_step_size": 500,
            "lr_gamma": 0.5,
            "steps": 2000,
            "batch_size": 8,
            "image_size": 96,
            "eval_size": 256,
        },
        notes=(
            "The paper's loss (MSE to the operator's output), architecture and identity "
            "initialisation. The paper trains 180 epochs on full-size images; here the same "
            "step budget and crops as `default`, so the two compare at equal steps."
        ),
    ),
    "tiny": Preset(
        "tiny",
        "for tests: a ~1.7 K-parameter mobile_residual, 4 steps on 32x32 crops",
        {
            "student_family": "mobile_residual",
            "student": {"width": 8, "blocks": 1, "expand": 2, "dilations": [1], "refine": 2},
            "losses": {"pixel_l1": 1.0},
            "lr": 1e-3,
            "steps": 4,
            "batch_size": 2,
            "image_size": 32,
            "eval_size": 32,
            "checkpoint_every": 2,
            "eval_every": 2,
            "num_samples": 2,
            "max_eval_images": 4,
            "calibration_images": 4,
            "latency_threads": [1],
            "latency_runs": 5,
            "latency_warmup": 10,
        },
        notes="Exercises every stage (train, checkpoint, eval, export, int8, fp16) in seconds.",
    ),
}


def get_preset(name: str) -> DistillConfig:
    """A fresh, validated config for preset `name`."""
    if name not in PRESETS:
        raise ConfigError(f"preset {name!r} is unknown; choose from {', '.join(PRESETS)}")
    return DistillConfig.from_dict({**PRESETS[name].config, "preset": name})


def list_presets() -> list[dict[str, Any]]:
    """One row per preset: name, family, params, MACs at 256x256, steps, description."""
    rows = []
    for name, preset in PRESETS.items():
        config = get_preset(name)
        size = describe_student(config.student_family, config.student)
        rows.append(
            {
                "name": name,
                "family": config.student_family,
                "params": size["params"],
                "macs_at_256": size["macs_at_256"],
                "macs": size["macs_at_256"],
                "steps": config.steps,
                "description": preset.description,
            }
        )
    return rows
