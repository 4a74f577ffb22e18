"""Distillation losses, chosen by registered name and weighted by the config.

Every pixel term compares the student with the *teacher's output*, never with the input (a loss
against the input pulls the student toward the identity). The ``kl`` term is channel-wise
distillation (Shu et al. 2021, "Channel-wise Knowledge Distillation for Dense Prediction"): each
feature channel becomes a distribution over positions by a softmax with temperature, and the
student's distribution is pulled to the teacher's by KL divergence. Formulas and reasons are in
docs/students-and-losses.md.

Nothing here downloads weights: feature extractors are a fixed random conv stack, a VGG16 whose
weights file the user points to, or the teacher's own layers.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from distill_core.config import ConfigError, DistillConfig
from distill_core.students import student_features

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RANDOM_EXTRACTOR_SEED = 20170
VGG16_LAYERS = (3, 8, 15, 22)  # relu1_2, relu2_2, relu3_3, relu4_3 (Johnson et al. 2016)


# -- functional forms ---------------------------------------------------------------------------
def channel_wise_kl(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Shu et al. 2021: per (image, channel), softmax over H*W of map/T; KL(teacher || student)
    times T^2, summed over positions and averaged over the N*C distributions ("batchmean")."""
    n, c = teacher.shape[:2]
    s = student.float().reshape(n * c, -1) / temperature
    t = teacher.float().reshape(n * c, -1) / temperature
    # log_softmax on both sides: finite for any finite map (zeros included), no log(0).
    kl = F.kl_div(
        F.log_softmax(s, dim=1), F.log_softmax(t, dim=1), log_target=True, reduction="sum"
    )
    return kl * temperature**2 / (n * c)


def gram(features: torch.Tensor) -> torch.Tensor:
    """Gram matrix per image, normalised by C*H*W (Johnson et al. 2016)."""
    n, c, h, w = features.shape
    f = features.float().reshape(n, c, h * w)
    return f @ f.transpose(1, 2) / (c * h * w)


def _gaussian_1d(size: int, sigma: float, like: torch.Tensor) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float32, device=like.device) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM (Wang et al. 2004) with a Gaussian window, data range 1; differentiable.

    The window shrinks to the image on crops smaller than 11 pixels."""
    x, y = x.float(), y.float()
    n, channels = x.shape[:2]
    size = min(window, x.shape[-2], x.shape[-1])
    size -= 1 - size % 2  # odd, so the window has a centre
    g = _gaussian_1d(size, sigma, x)
    # The five blurred maps in one batch, each through two 1-D passes (the Gaussian separates).
    stack = torch.cat([x, y, x * x, y * y, x * y], dim=1).reshape(
        n * 5 * channels, 1, *x.shape[-2:]
    )
    blurred = F.conv2d(F.conv2d(stack, g.view(1, 1, 1, size)), g.view(1, 1, size, 1))
    mx, my, exx, eyy, exy = blurred.reshape(n, 5, channels, *blurred.shape[-2:]).unbind(1)
    sxx, syy, sxy = exx - mx * mx, eyy - my * my, exy - mx * my
    c1, c2 = 0.01**2, 0.03**2
    num = (2 * mx * my + c1) * (2 * sxy + c2)
    den = (mx * mx + my * my + c1) * (sxx + syy + c2)
    return (num / den).mean()


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation: mean |horizontal difference| + mean |vertical difference|."""
    x = x.float()
    return (x[..., :, 1:] - x[..., :, :-1]).abs().mean() + (
        x[..., 1:, :] - x[..., :-1, :]
    ).abs().mean()


# -- feature extractors -------------------------------------------------------------------------
class _Normalize(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class LayerTaps(nn.Module):
    """Runs a Sequential and returns the outputs of the layers at `taps`."""

    def __init__(self, body: nn.Sequential, taps: tuple[int, ...]) -> None:
        super().__init__()
        self.norm = _Normalize()
        self.body = body[: max(taps) + 1]
        self.taps = taps
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        y = self.norm(x)
        for i, layer in enumerate(self.body):
            y = layer(y)
            if i in self.taps:
                out.append(y)
        return out

    def train(self, mode: bool = True) -> LayerTaps:
        # Frozen: stays in eval mode whatever the training loop asks.
        return super().train(False)


def random_extractor(seed: int = RANDOM_EXTRACTOR_SEED) -> LayerTaps:
    """A fixed random conv stack (16, 32, 64 channels at 1, 1/2, 1/4 resolution).

    The offline fallback when no VGG16 weights are given: random conv features still measure
    local texture statistics (Ustyuzhaninov et al. 2017 synthesise textures from random-weight
    nets), but they are weaker than trained ones. Seeded, so every run sees the same extractor."""
    g = torch.Generator().manual_seed(seed)
    body = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.ReLU(),  # 3
        nn.AvgPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),  # 6
        nn.AvgPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),  # 9
    )
    for m in body:
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu", generator=g)
            nn.init.zeros_(m.bias)
    return LayerTaps(body, (3, 6, 9))


def vgg16_extractor(path: str | Path) -> LayerTaps:
    """VGG16 conv layers (relu1_2..relu4_3) with weights from a local file, loaded weights-only."""
    from torchvision.models import vgg

    path = Path(path).expanduser()
    hint = (
        "save them on a machine with internet access with torch.save(torchvision.models.vgg16("
        "weights='IMAGENET1K_V1').state_dict(), 'vgg16.pth') and copy the file here"
    )
    if not path.is_file():
        raise ConfigError(f"feature_extractor=vgg16:{path}: no such file; {hint}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(
            f"feature_extractor=vgg16:{path}: not a weights file torch can load safely "
            f"({type(exc).__name__}); {hint}"
        ) from exc
    if not isinstance(state, dict):
        raise ConfigError(f"feature_extractor=vgg16:{path}: expected a state_dict; {hint}")
    # Accept the whole model's state_dict ("features.0.weight", ...) or the features part alone.
    if any(str(k).startswith("features.") for k in state):
        state = {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}
    # The conv part of torchvision's vgg16 (weights=None), without building its 100 M-parameter
    # classifier only to throw it away.
    features = vgg.make_layers(vgg.cfgs["D"])
    try:
        features.load_state_dict(state)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(
            f"feature_extractor=vgg16:{path}: these are not VGG16 weights "
            f"({str(exc).splitlines()[0][:120]}); {hint}"
        ) from exc
    return LayerTaps(features, VGG16_LAYERS)


class TeacherTaps(nn.Module):
    """The teacher's own intermediate maps, through its exported ``feature_maps`` method."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        # A private copy: the teacher object keeps its own on the CPU, this one follows the loss.
        self.module = copy.deepcopy(module)
        self.module.eval()
        # Frozen; used under no_grad. (Copies of TorchScript parameters may not be leaves.)
        for p in self.module.parameters():
            if p.is_leaf:
                p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.module.feature_maps(x))

    def train(self, mode: bool = True) -> TeacherTaps:
        return super().train(False)


def teacher_feature_module(teacher: Any) -> nn.Module | None:
    """The teacher's torch module if it exposes ``feature_maps(x) -> list[Tensor]``, else None."""
    module = getattr(teacher, "torch_module", None)
    if module is not None and hasattr(module, "feature_maps"):
        return module
    return None


def _teacher_features_error(teacher: Any, what: str) -> ConfigError:
    spec = getattr(teacher, "spec", "this teacher")
    if getattr(teacher, "torch_module", None) is None:
        why = "it is not a torch model (only torchscript:<path> teachers have layers to read)"
    else:
        why = (
            "its TorchScript module has no feature_maps(x) -> List[Tensor] method; add one with "
            "@torch.jit.export (the johnson family in students.py has it)"
        )
    return ConfigError(
        f"{what} needs the teacher's intermediate features, but teacher {spec} cannot give them: "
        f"{why}. Use feature_extractor=random or vgg16:<path>, or drop the term"
    )


def build_extractor(spec: str, teacher: Any) -> nn.Module:
    """Feature extractor from config.feature_extractor: random | vgg16:<path> | teacher."""
    if spec == "random":
        return random_extractor()
    if spec.startswith("vgg16:"):
        return vgg16_extractor(spec[len("vgg16:") :])
    if spec == "teacher":
        module = teacher_feature_module(teacher)
        if module is None:
            raise _teacher_features_error(teacher, "feature_extractor=teacher")
        return TeacherTaps(module)
    raise ConfigError(f"feature_extractor={spec!r}: choose teacher, random or vgg16:<path>")


# -- per-step context ---------------------------------------------------------------------------
class Step:
    """One call's tensors; features are computed once and shared by the terms that use them."""

    def __init__(
        self,
        owner: LossSet,
        student_out: torch.Tensor,
        teacher_out: torch.Tensor,
        inputs: torch.Tensor,
        student_feats: list[torch.Tensor] | None,
    ) -> None:
        self.owner = owner
        self.student_out = student_out
        self.teacher_out = teacher_out.to(student_out.dtype)
        self.inputs = inputs
        self._student_feats = student_feats

    @functools.cached_property
    def extracted_student(self) -> list[torch.Tensor]:
        return self.owner.extractor(self.student_out)

    @functools.cached_property
    def extracted_teacher(self) -> list[torch.Tensor]:
        with torch.no_grad():
            return [f.detach() for f in self.owner.extractor(self.teacher_out)]

    @functools.cached_property
    def teacher_feats(self) -> list[torch.Tensor]:
        with torch.no_grad():
            return [f.detach() for f in self.owner.teacher_taps(self.inputs)]

    @functools.cached_property
    def student_feats(self) -> list[torch.Tensor]:
        if self._student_feats:
            return list(self._student_feats)
        # Not handed in: one more forward pass (pass student_feats from features() to avoid it).
        return student_features(self.owner.student, self.inputs)[1]


# -- terms --------------------------------------------------------------------------------------
class LossTerm(nn.Module):
    """One named term; forward(step) returns an unweighted scalar."""

    needs_student_features = False

    def forward(self, step: Step) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class PixelL1(LossTerm):
    """mean |student - teacher output|."""

    def forward(self, step: Step) -> torch.Tensor:
        return F.l1_loss(step.student_out.float(), step.teacher_out.float())


class PixelMSE(LossTerm):
    """mean (student - teacher output)^2."""

    def forward(self, step: Step) -> torch.Tensor:
        return F.mse_loss(step.student_out.float(), step.teacher_out.float())


class SSIMLoss(LossTerm):
    """1 - SSIM(student, teacher output)."""

    def forward(self, step: Step) -> torch.Tensor:
        return 1.0 - ssim(step.student_out, step.teacher_out)


class TVLoss(LossTerm):
    """Total variation of the student output (a smoothness prior, not a distillation term)."""

    def forward(self, step: Step) -> torch.Tensor:
        return total_variation(step.student_out)


class StyleLoss(LossTerm):
    """Sum over extractor layers of MSE(Gram(student output), Gram(teacher output))."""

    def forward(self, step: Step) -> torch.Tensor:
        terms = [
            F.mse_loss(gram(s), gram(t))
            for s, t in zip(step.extracted_student, step.extracted_teacher, strict=True)
        ]
        return torch.stack(terms).sum()


def _pairs(n_student: int, n_teacher: int) -> list[tuple[int, int]]:
    """Pair evenly spaced student maps with evenly spaced teacher maps, shallow to deep."""
    n = min(n_student, n_teacher)
    if n == 0:
        return []
    if n == 1:
        return [(n_student - 1, n_teacher - 1)]
    return [
        (round(i * (n_student - 1) / (n - 1)), round(i * (n_teacher - 1) / (n - 1)))
        for i in range(n)
    ]


class Adapted(LossTerm):
    """Base for terms comparing student maps with teacher maps through 1x1 adapters."""

    needs_student_features = True

    def __init__(self, student_channels: list[int], teacher_channels: list[int]) -> None:
        super().__init__()
        self.pairs = _pairs(len(student_channels), len(teacher_channels))
        # A 1x1 conv where channel counts differ (Shu et al. 2021, FitNets); trained with the
        # student and saved in its checkpoint, never exported.
        self.adapters = nn.ModuleList(
            [
                nn.Conv2d(student_channels[i], teacher_channels[j], 1)
                if student_channels[i] != teacher_channels[j]
                else nn.Identity()
                for i, j in self.pairs
            ]
        )

    def matched(self, step: Step) -> list[tuple[torch.Tensor, torch.Tensor]]:
        s_maps, t_maps = step.student_feats, step.teacher_feats
        out = []
        for (i, j), adapter in zip(self.pairs, self.adapters, strict=True):
            s, t = adapter(s_maps[i]), t_maps[j]
            if s.shape[-2:] != t.shape[-2:]:
                s = F.interpolate(s, size=t.shape[-2:], mode="bilinear", align_corners=False)
            out.append((s, t))
        return out


class FeatureLoss(Adapted):
    """Mean over layer pairs of MSE(adapter(student map), teacher map) (FitNets-style)."""

    def forward(self, step: Step) -> torch.Tensor:
        terms = [F.mse_loss(s.float(), t.float()) for s, t in self.matched(step)]
        return torch.stack(terms).mean()


class AdaptedKL(Adapted):
    """Channel-wise KL between adapted student maps and the teacher's own maps."""

    def __init__(self, student_channels: list[int], teacher_channels: list[int], t: float) -> None:
        super().__init__(student_channels, teacher_channels)
        self.temperature = t

    def forward(self, step: Step) -> torch.Tensor:
        terms = [channel_wise_kl(s, t, self.temperature) for s, t in self.matched(step)]
        return torch.stack(terms).mean()


class OutputKL(LossTerm):
    """Channel-wise KL between extractor maps of the student output and of the teacher output."""

    def __init__(self, t: float) -> None:
        super().__init__()
        self.temperature = t

    def forward(self, step: Step) -> torch.Tensor:
        terms = [
            channel_wise_kl(s, t, self.temperature)
            for s, t in zip(step.extracted_student, step.extracted_teacher, strict=True)
        ]
        return torch.stack(terms).mean()


# -- registry -----------------------------------------------------------------------------------
class LossContext:
    """What a loss factory may use: config, teacher, student, and shared feature sources."""

    def __init__(self, config: DistillConfig, teacher: Any, student: nn.Module) -> None:
        self.config = config
        self.teacher = teacher
        self.student = student
        self.extractor: nn.Module | None = None
        self.teacher_taps: nn.Module | None = None

    def need_extractor(self) -> None:
        if self.extractor is None:
            self.extractor = build_extractor(self.config.feature_extractor, self.teacher)

    def need_teacher_taps(self, term: str) -> None:
        if self.teacher_taps is None:
            module = teacher_feature_module(self.teacher)
            if module is None:
                raise _teacher_features_error(self.teacher, f"losses.{term}")
            self.teacher_taps = TeacherTaps(module)

    def channels(self) -> tuple[list[int], list[int]]:
        """Channel counts of the student's and the teacher's maps, from one small probe."""
        probe = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        device = next(iter(self.student.parameters()), probe).device
        was_training = self.student.training
        self.student.eval()
        try:
            with torch.no_grad():
                s_maps = student_features(self.student, probe.to(device))[1]
                t_maps = self.teacher_taps(probe)
        finally:
            self.student.train(was_training)
        if not s_maps:
            raise ConfigError(
                f"student_family={self.config.student_family}: this student exposes no "
                "intermediate features, so feature/kl distillation against the teacher's layers "
                "cannot be used"
            )
        return [m.shape[1] for m in s_maps], [m.shape[1] for m in t_maps]


def _pixel_l1(ctx: LossContext) -> LossTerm:
    return PixelL1()


def _pixel_mse(ctx: LossContext) -> LossTerm:
    return PixelMSE()


def _ssim(ctx: LossContext) -> LossTerm:
    return SSIMLoss()


def _tv(ctx: LossContext) -> LossTerm:
    return TVLoss()


def _style(ctx: LossContext) -> LossTerm:
    ctx.need_extractor()
    return StyleLoss()


def _feature(ctx: LossContext) -> LossTerm:
    ctx.need_teacher_taps("feature")
    return FeatureLoss(*ctx.channels())


def _kl(ctx: LossContext) -> LossTerm:
    # Shu et al. distil dense features of teacher and student; a teacher that shows its layers
    # gets exactly that. Others (OpenCV, ONNX, pairs) have no layers to read, so both outputs go
    # through the fixed extractor and the channel-wise KL compares those maps instead.
    if teacher_feature_module(ctx.teacher) is not None:
        ctx.need_teacher_taps("kl")
        return AdaptedKL(*ctx.channels(), ctx.config.kl_temperature)
    ctx.need_extractor()
    return OutputKL(ctx.config.kl_temperature)


LOSSES: dict[str, Callable[[LossContext], LossTerm]] = {
    "pixel_l1": _pixel_l1,
    "pixel_mse": _pixel_mse,
    "ssim": _ssim,
    "style": _style,
    "feature": _feature,
    "kl": _kl,
    "tv": _tv,
}


class LossSet(nn.Module):
    """The weighted sum of a config's loss terms.

    ``loss_set(student_out, teacher_out, inputs, student_feats=None) -> (total, terms)``: `terms`
    holds each term's *unweighted* value (the series to log), `total` the weighted sum.
    ``parameters()`` and ``state_dict()`` hold only the trainable adapters; the frozen extractor
    and the teacher copy follow ``.to(device)`` but are never saved or trained.
    """

    def __init__(self, weights: dict[str, float], terms: dict[str, LossTerm], ctx: LossContext):
        super().__init__()
        self.weights = dict(weights)
        self.terms = nn.ModuleDict(terms)
        # Kept in a list so nn.Module does not register them: not parameters, not in state_dict.
        self._frozen: list[nn.Module | None] = [ctx.extractor, ctx.teacher_taps]
        self._student = [ctx.student]
        self.needs_student_features = any(t.needs_student_features for t in terms.values())

    @property
    def extractor(self) -> nn.Module:
        return self._frozen[0]

    @property
    def teacher_taps(self) -> nn.Module:
        return self._frozen[1]

    @property
    def student(self) -> nn.Module:
        return self._student[0]

    def _apply(self, fn: Any, recurse: bool = True) -> LossSet:  # noqa: D401 - nn.Module hook
        super()._apply(fn, recurse)
        for module in self._frozen:
            if module is not None:
                module._apply(fn)
        return self

    def run_student(
        self, model: nn.Module, x: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """Student output, plus its feature maps when a term needs them (one forward pass)."""
        if self.needs_student_features:
            return student_features(model, x)
        return model(x), None

    def forward(
        self,
        student_out: torch.Tensor,
        teacher_out: torch.Tensor,
        inputs: torch.Tensor,
        student_feats: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        step = Step(self, student_out, teacher_out, inputs, student_feats)
        values = {name: term(step) for name, term in self.terms.items()}
        total = sum(self.weights[name] * v for name, v in values.items())
        return total, values


def build_losses(config: DistillConfig, teacher: Any, student: nn.Module) -> LossSet:
    """Build the config's non-zero loss terms; raises ConfigError when one cannot be used."""
    ctx = LossContext(config, teacher, student)
    weights = {name: float(w) for name, w in config.losses.items() if w > 0}
    terms = {}
    for name in weights:
        if name not in LOSSES:
            raise ConfigError(
                f"losses.{name}: unknown loss; choose from {', '.join(sorted(LOSSES))}"
            )
        terms[name] = LOSSES[name](ctx)
    if not terms:
        raise ConfigError("losses: at least one loss term needs a weight above 0")
    return LossSet(weights, terms, ctx)
