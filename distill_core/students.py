"""Student networks, chosen by registered family name from plain-data parameters.

Families (parameters and measured sizes in docs/students-and-losses.md):

- ``tiny_style``: Johnson, Alahi, Fei-Fei 2016 "Perceptual Losses for Real-Time Style Transfer"
  transform net, shrunk; the article's ``channels=[16,32,64], blocks=3`` is expressible exactly.
- ``johnson``: the full transform net ([32,64,128], 5 residual blocks, ~1.68 M parameters); big
  enough to serve as the heavy demo teacher.
- ``can24``: Chen, Xu, Koltun 2017 "Fast Image Processing with Fully-Convolutional Networks":
  a context aggregation network of 3x3 convs dilated 1..64, adaptive BatchNorm, LeakyReLU(0.2).
- ``mobile_residual``: ours, for CPUs and int8: a strided stem to 1/4 resolution, inverted-residual
  depthwise blocks (MobileNetV2) there, pixel-shuffle back up, and a residual over the input.

Every model takes and returns float32 NCHW RGB in [0, 1], works at any H and W that are multiples
of 8, exports to ONNX with dynamic height and width, and has ``features(x) -> (out, [maps])`` for
feature and channel-wise KL distillation (``feature_maps(x)`` returns the maps alone).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from distill_core.config import ConfigError

NORMS = ("instance", "batch", "none")
OUTPUTS = ("sigmoid", "clamp", "residual")
MAX_CHANNELS = 512
MAX_BLOCKS = 32


# -- output heads -------------------------------------------------------------------------------
def clamp01(y: torch.Tensor, training: bool) -> torch.Tensor:
    """Clamp to [0, 1]; while training, pass gradients straight through the clamp.

    A plain clamp has zero gradient wherever the prediction overshoots, so a pixel predicted at 1.2
    for a target of 0.9 would never be pulled back; the straight-through form keeps the forward
    value identical and lets the loss see it. In eval mode (and so in ONNX) it is one Clip op.
    """
    if training:
        return y + (y.clamp(0.0, 1.0) - y).detach()
    return y.clamp(0.0, 1.0)


def _norm2d(kind: str, channels: int) -> nn.Module:
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    return nn.Identity()


# -- tiny_style / johnson -----------------------------------------------------------------------
class ConvLayer(nn.Module):
    """Reflection-padded conv, as in Johnson et al. (avoids border artefacts of zero padding)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            cin, cout, kernel, stride=stride, padding=kernel // 2, padding_mode="reflect"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class ResidualBlock(nn.Module):
    """conv-norm-relu-conv-norm plus the identity (He et al. 2016, as used by Johnson)."""

    def __init__(self, channels: int, norm: str) -> None:
        super().__init__()
        self.conv1 = ConvLayer(channels, channels, 3)
        self.norm1 = _norm2d(norm, channels)
        self.conv2 = ConvLayer(channels, channels, 3)
        self.norm2 = _norm2d(norm, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm1(self.conv1(x)))
        return x + self.norm2(self.conv2(y))


class UpsampleConv(nn.Module):
    """Nearest 2x upsample then conv: no checkerboard artefacts of transposed convs."""

    def __init__(self, cin: int, cout: int, kernel: int = 3) -> None:
        super().__init__()
        self.conv = ConvLayer(cin, cout, kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class TransformerNet(nn.Module):
    """Johnson et al. 2016 transform net: 9x9 conv in, two stride-2 convs, residual blocks at 1/4
    resolution, two upsample convs, 9x9 conv out. ``output`` picks the head: ``sigmoid``,
    ``clamp`` (straight-through while training) or ``residual`` (clamp(input + net))."""

    def __init__(
        self,
        channels: list[int] | tuple[int, ...] = (16, 32, 64),
        blocks: int = 3,
        norm: str = "instance",
        output: str = "sigmoid",
    ) -> None:
        super().__init__()
        c1, c2, c3 = (int(c) for c in channels)
        self.output = output
        self.conv1 = ConvLayer(3, c1, 9)
        self.norm1 = _norm2d(norm, c1)
        self.conv2 = ConvLayer(c1, c2, 3, stride=2)
        self.norm2 = _norm2d(norm, c2)
        self.conv3 = ConvLayer(c2, c3, 3, stride=2)
        self.norm3 = _norm2d(norm, c3)
        self.res = nn.Sequential(*[ResidualBlock(c3, norm) for _ in range(blocks)])
        self.up1 = UpsampleConv(c3, c2)
        self.norm4 = _norm2d(norm, c2)
        self.up2 = UpsampleConv(c2, c1)
        self.norm5 = _norm2d(norm, c1)
        self.conv_out = ConvLayer(c1, 3, 9)

    @torch.jit.export
    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Output and three intermediate maps (1/4 res entry, 1/4 res after blocks, 1/2 res)."""
        y = F.relu(self.norm1(self.conv1(x)))
        y = F.relu(self.norm2(self.conv2(y)))
        y = F.relu(self.norm3(self.conv3(y)))
        f1 = y
        y = self.res(y)
        f2 = y
        y = F.relu(self.norm4(self.up1(y)))
        f3 = y
        y = F.relu(self.norm5(self.up2(y)))
        y = self.conv_out(y)
        if self.output == "sigmoid":
            out = torch.sigmoid(y)
        elif self.output == "residual":
            out = clamp01(x + y, self.training)
        else:
            out = clamp01(y, self.training)
        return out, [f1, f2, f3]

    @torch.jit.export
    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Intermediate maps only (the hook the losses use on a TorchScript teacher)."""
        return self.features(x)[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)[0]


# -- can24 --------------------------------------------------------------------------------------
class AdaptiveBatchNorm(nn.Module):
    """Chen et al. 2017's adaptive normalisation: lambda * x + mu * BN(x), scalars learned.

    Initialised to lambda=1, mu=0 so the layer starts as the identity."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)
        self.lam = nn.Parameter(torch.ones(1))
        self.mu = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lam * x + self.mu * self.bn(x)


def _identity_init(conv: nn.Conv2d) -> None:
    """Dirac init (the paper's "identity initialization"): channel i passes to channel i."""
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    k = conv.kernel_size[0] // 2
    with torch.no_grad():
        for i in range(min(conv.in_channels, conv.out_channels)):
            conv.weight[i, i, k, k] = 1.0


class CAN(nn.Module):
    """Context aggregation network (Chen, Xu, Koltun 2017): full resolution throughout, 3x3 convs
    with dilations 1, 2, 4, ..., 2^(depth-3), one more 3x3 at dilation 1, then a 1x1 to RGB.
    Identity-initialised as in the paper, so training starts from output = input."""

    def __init__(self, width: int = 24, depth: int = 9, identity_init: bool = True) -> None:
        super().__init__()
        dilations = [2**i for i in range(depth - 2)] + [1]
        layers: list[nn.Module] = []
        cin = 3
        for d in dilations:
            # Zero padding, not reflect: dilation 64 pads more than a small crop is wide.
            conv = nn.Conv2d(cin, width, 3, padding=d, dilation=d)
            if identity_init:
                _identity_init(conv)
            layers.append(nn.Sequential(conv, AdaptiveBatchNorm(width), nn.LeakyReLU(0.2)))
            cin = width
        self.layers = nn.ModuleList(layers)
        self.last = nn.Conv2d(width, 3, 1)
        if identity_init:
            _identity_init(self.last)
        # Taps spread over the receptive-field growth: early, middle, last context layer.
        n = len(layers)
        self.taps = sorted({max(0, n // 3 - 1), max(0, 2 * n // 3 - 1), n - 1})

    @torch.jit.export
    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Output and three full-resolution maps."""
        feats: list[torch.Tensor] = []
        y = x
        for i, layer in enumerate(self.layers):
            y = layer(y)
            if i in self.taps:
                feats.append(y)
        return clamp01(self.last(y), self.training), feats

    @torch.jit.export
    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Intermediate maps only."""
        return self.features(x)[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)[0]


# -- mobile_residual ----------------------------------------------------------------------------
def _bn(channels: int, norm: str) -> nn.Module:
    # BatchNorm after a conv folds into the conv's weights at ONNX export (eval mode), so it
    # costs nothing at inference and leaves int8 a plain Conv to quantize.
    return nn.BatchNorm2d(channels) if norm == "batch" else nn.Identity()


class ConvBNReLU(nn.Sequential):
    """conv, optional BatchNorm, ReLU6 (bounded activations keep int8 ranges tight)."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int,
        stride: int = 1,
        groups: int = 1,
        dilation: int = 1,
        norm: str = "batch",
    ) -> None:
        pad = dilation * (kernel // 2)
        super().__init__(
            nn.Conv2d(
                cin,
                cout,
                kernel,
                stride=stride,
                padding=pad,
                dilation=dilation,
                groups=groups,
                bias=norm != "batch",
            ),
            _bn(cout, norm),
            nn.ReLU6(),
        )


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise (optionally dilated), 1x1 linear project,
    plus the identity."""

    def __init__(self, channels: int, expand: int, dilation: int, norm: str) -> None:
        super().__init__()
        hidden = channels * expand
        self.expand = ConvBNReLU(channels, hidden, 1, norm=norm)
        self.depthwise = ConvBNReLU(hidden, hidden, 3, groups=hidden, dilation=dilation, norm=norm)
        self.project = nn.Conv2d(hidden, channels, 1, bias=norm != "batch")
        self.project_bn = _bn(channels, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.project_bn(self.project(self.depthwise(self.expand(x))))


class MobileResidual(nn.Module):
    """Our CPU/int8 student: two stride-2 3x3 convs to 1/4 resolution, inverted-residual blocks
    (some dilated, for context) there, a 1x1 conv and a depth-to-space by 4 back to full
    resolution, then (refine > 0) a 3x3 conv of those maps plus a 3x3 conv of the input; the
    result is added to the input and clamped.

    Predicting a residual means a fresh net starts near output = input (the identity baseline) and
    learns only the operator's change; the full-resolution detail comes from the skip, so the
    wide work happens on 1/16 of the pixels. Every op (Conv, Relu/Clip, Add, DepthToSpace) has an
    int8 kernel in ONNX Runtime's static QDQ path; no InstanceNorm, no Resize, no Concat.
    """

    def __init__(
        self,
        width: int = 32,
        blocks: int = 5,
        expand: int = 4,
        dilations: list[int] | tuple[int, ...] = (1, 2, 4),
        norm: str = "batch",
        refine: int = 8,
    ) -> None:
        super().__init__()
        stem_width = max(8, width // 2)
        self.stem = nn.Sequential(
            ConvBNReLU(3, stem_width, 3, stride=2, norm=norm),
            ConvBNReLU(stem_width, width, 3, stride=2, norm=norm),
        )
        self.blocks = nn.ModuleList(
            [
                InvertedResidual(width, expand, int(dilations[i % len(dilations)]), norm)
                for i in range(blocks)
            ]
        )
        self.use_refine = refine > 0
        if self.use_refine:
            # Pixel-shuffle `refine` maps to full resolution and mix them with the input by a
            # 3x3 conv: the 1/4-resolution path cannot see every pixel's detail on its own.
            # Two convs summed, not one over a concat: int8 gives a Concat one shared scale, and
            # the maps' range (~±10) would leave the input only a dozen levels.
            self.head = nn.Conv2d(width, refine * 16, 1)
            self.refine_input = nn.Conv2d(3, 3, 3, padding=1)
            self.refine_maps = nn.Conv2d(refine, 3, 3, padding=1, bias=False)
            last = [self.refine_input, self.refine_maps]
        else:
            self.head = nn.Conv2d(width, 3 * 16, 1)
            self.refine_input = nn.Identity()
            self.refine_maps = nn.Identity()
            last = [self.head]
        # Start at exactly the identity: the last convs output zeros until they learn.
        for conv in last:
            nn.init.zeros_(conv.weight)
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)
        self.mid = blocks // 2 - 1 if blocks >= 2 else -1

    @torch.jit.export
    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Output and three 1/4-resolution maps (after the stem, mid-way, after the blocks)."""
        y = self.stem(x)
        feats: list[torch.Tensor] = [y]
        for i, block in enumerate(self.blocks):
            y = block(y)
            if i == self.mid:
                feats.append(y)
        if len(feats) < 2:
            feats.append(y)
        feats.append(y)
        residual = F.pixel_shuffle(self.head(y), 4)
        if self.use_refine:
            residual = self.refine_input(x) + self.refine_maps(residual)
        return clamp01(x + residual, self.training), feats

    @torch.jit.export
    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Intermediate maps only."""
        return self.features(x)[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)[0]


# -- registry -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class StudentFamily:
    """A registered family: its defaults, a validator of user parameters, and a builder."""

    name: str
    description: str
    defaults: dict[str, Any]
    check: Callable[[str, dict[str, Any]], None]  # raises ConfigError; gets merged params
    make: Callable[..., nn.Module]

    def validate(self, params: dict[str, Any]) -> dict[str, Any]:
        """Return defaults merged with params, or raise ConfigError naming the wrong key."""
        if not isinstance(params, dict):
            raise ConfigError(f"student={params!r}: expected an object of {self.name} parameters")
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            raise ConfigError(
                f"student.{unknown[0]}: not a {self.name} parameter; "
                f"known: {', '.join(sorted(self.defaults))}"
            )
        merged = {**self.defaults, **params}
        self.check(self.name, merged)
        return merged

    def build(self, params: dict[str, Any] | None = None) -> nn.Module:
        """Validate and build; the result is in train mode with deterministic-by-seed weights."""
        return self.make(**self.validate(params or {}))


def _show(value: Any) -> str:
    """A value as the user would type it in JSON: [16,32], "layer", true."""
    try:
        return json.dumps(value, separators=(",", ":"))
    except TypeError:
        return repr(value)


def _int_in(family: str, key: str, value: Any, lo: int, hi: int, example: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(
            f"student.{key}={_show(value)}: {family} needs a whole number from {lo} to {hi}, "
            f"e.g. {example}"
        )


def _choice(family: str, key: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"student.{key}={_show(value)}: {family} accepts {', '.join(choices)}")


def _check_transformer(family: str, p: dict[str, Any]) -> None:
    example = "[16,32,64]" if family == "tiny_style" else "[32,64,128]"
    ch = p["channels"]
    if not isinstance(ch, list | tuple) or len(ch) != 3:
        raise ConfigError(
            f"student.channels={_show(ch)}: {family} needs three channel counts, e.g. {example}"
        )
    for c in ch:
        if isinstance(c, bool) or not isinstance(c, int) or not 1 <= c <= MAX_CHANNELS:
            raise ConfigError(
                f"student.channels={_show(ch)}: each channel count must be a whole number "
                f"from 1 to {MAX_CHANNELS}, e.g. {example}"
            )
    _int_in(family, "blocks", p["blocks"], 0, MAX_BLOCKS, 3 if family == "tiny_style" else 5)
    _choice(family, "norm", p["norm"], NORMS)
    _choice(family, "output", p["output"], OUTPUTS)


def _check_can(family: str, p: dict[str, Any]) -> None:
    _int_in(family, "width", p["width"], 1, 256, 24)
    _int_in(family, "depth", p["depth"], 3, 12, 9)
    if not isinstance(p["identity_init"], bool):
        raise ConfigError(f"student.identity_init={p['identity_init']!r}: expected true or false")


def _check_mobile(family: str, p: dict[str, Any]) -> None:
    _int_in(family, "width", p["width"], 4, 256, 32)
    _int_in(family, "blocks", p["blocks"], 0, MAX_BLOCKS, 5)
    _int_in(family, "expand", p["expand"], 1, 8, 4)
    d = p["dilations"]
    if (
        not isinstance(d, list | tuple)
        or not d
        or not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 16 for v in d)
    ):
        raise ConfigError(
            f"student.dilations={_show(d)}: {family} needs a list of dilations from 1 to 16, "
            "cycled over the blocks, e.g. [1,2,4]"
        )
    _choice(family, "norm", p["norm"], ("batch", "none"))
    _int_in(family, "refine", p["refine"], 0, 32, 8)


def _make_transformer(**p: Any) -> nn.Module:
    return TransformerNet(list(p["channels"]), p["blocks"], p["norm"], p["output"])


def _make_mobile(**p: Any) -> nn.Module:
    return MobileResidual(
        p["width"], p["blocks"], p["expand"], list(p["dilations"]), p["norm"], p["refine"]
    )


STUDENTS: dict[str, StudentFamily] = {
    "tiny_style": StudentFamily(
        "tiny_style",
        "Johnson-style transform net, small: the article's student ([16,32,64] x 3 blocks)",
        {"channels": [16, 32, 64], "blocks": 3, "norm": "instance", "output": "sigmoid"},
        _check_transformer,
        _make_transformer,
    ),
    "johnson": StudentFamily(
        "johnson",
        "Johnson et al. 2016 transform net, full size ([32,64,128] x 5 blocks, ~1.68 M params)",
        {"channels": [32, 64, 128], "blocks": 5, "norm": "instance", "output": "sigmoid"},
        _check_transformer,
        _make_transformer,
    ),
    "can24": StudentFamily(
        "can24",
        "Chen, Xu, Koltun 2017 context aggregation net: 24 channels, dilations 1..64",
        {"width": 24, "depth": 9, "identity_init": True},
        _check_can,
        lambda **p: CAN(p["width"], p["depth"], p["identity_init"]),
    ),
    "mobile_residual": StudentFamily(
        "mobile_residual",
        "ours: stride-4 stem, inverted-residual depthwise blocks at 1/4 res, "
        "pixel-shuffle up, residual over the input; int8-friendly",
        {
            "width": 32,
            "blocks": 5,
            "expand": 4,
            "dilations": [1, 2, 4],
            "norm": "batch",
            "refine": 8,
        },
        _check_mobile,
        _make_mobile,
    ),
}


def _family(family: str) -> StudentFamily:
    if family not in STUDENTS:
        raise ConfigError(
            f"student_family={family!r}: unknown student family; choose from "
            f"{', '.join(sorted(STUDENTS))}"
        )
    return STUDENTS[family]


def validate_student(family: str, params: dict[str, Any]) -> None:
    """Raise ConfigError if `family` is unknown or `params` are not valid for it."""
    _family(family).validate(params)


def build_student(family: str, params: dict[str, Any] | None = None) -> nn.Module:
    """Build a student of a registered family from plain parameters (defaults fill the rest)."""
    return _family(family).build(params)


def count_params(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_macs(model: nn.Module, size: int = 256) -> int:
    """Multiply-accumulates of conv and linear layers for one 1x3xSIZExSIZE input.

    MACs, not FLOPs (FLOPs ~= 2 x MACs); norms, activations, adds and resizes are not counted:
    they are memory-bound and small next to the convs."""
    total = 0

    def hook(module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            total += output.numel() * (module.in_channels // module.groups) * kh * kw
        elif isinstance(module, nn.Linear):
            total += output.numel() * module.in_features

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
    ]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            device = next(iter(model.parameters()), torch.zeros(0)).device
            model(torch.zeros(1, 3, size, size, device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return int(total)


def student_features(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(output, intermediate maps) for any student; a model without ``features`` gives []."""
    if hasattr(model, "features"):
        return model.features(x)
    return model(x), []


@functools.lru_cache(maxsize=256)
def _describe(family: str, params_json: str) -> tuple[int, int]:
    model = build_student(family, json.loads(params_json))
    return count_params(model), count_macs(model, 256)


def describe_student(family: str, params: dict[str, Any] | None = None) -> dict[str, int]:
    """{"params": trainable parameters, "macs_at_256": conv/linear MACs for one 256x256 image}."""
    validate_student(family, params or {})
    n, macs = _describe(family, json.dumps(params or {}, sort_keys=True))
    return {"params": n, "macs_at_256": macs}
