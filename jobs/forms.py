"""The launch, dataset and teacher forms. Run configs are validated by distill_core itself, and
its ConfigError messages are shown next to the field they name."""

from __future__ import annotations

import re
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import Any

from django import forms
from django.conf import settings

from jobs import services
from jobs.models import Dataset, Teacher

# Readable names for distill_core's built-in OpenCV operators (teachers.OPENCV_OPS).
OPERATOR_LABELS = {
    "stylization": "Stylization (cartoon-like, edge-preserving)",
    "pencil": "Pencil sketch (grey)",
    "pencil_color": "Pencil sketch (colour)",
    "detail_enhance": "Detail enhance",
    "edge_preserving": "Edge-preserving smoothing",
    "oilpainting": "Oil painting (xphoto)",
}
TEACHER_SUFFIXES = {
    ".onnx": "onnx",
    ".pt": "torchscript",
    ".pth": "torchscript",
    ".ts": "torchscript",
}
NUMBER_KEYS = ("steps", "lr", "image_size", "batch_size", "seed")


@lru_cache(maxsize=1)
def preset_table() -> tuple[dict[str, Any], ...]:
    """Every preset with its description and full config (cached: building them imports torch)."""
    from distill_core.presets import get_preset, list_presets

    return tuple({**p, "config": get_preset(p["name"]).to_dict()} for p in list_presets())


@lru_cache(maxsize=1)
def loss_names() -> tuple[str, ...]:
    """The registered loss terms, one weight field each."""
    from distill_core.losses import LOSSES

    return tuple(LOSSES)


@lru_cache(maxsize=1)
def student_families() -> tuple[str, ...]:
    from distill_core.students import STUDENTS

    return tuple(STUDENTS)


class DatasetChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj: Dataset) -> str:
        counts = obj.counts or {}
        total = sum(v for v in counts.values() if isinstance(v, int))
        kind = "paired" if obj.paired else "images"
        return f"{obj.name} ({total} {kind})"


class RunForm(forms.Form):
    """Dataset, teacher, preset, and the settings people change most; the rest as JSON."""

    name = forms.CharField(max_length=200, required=False, help_text="Optional; shown in lists.")
    dataset = DatasetChoiceField(
        queryset=Dataset.objects.filter(status=Dataset.Status.READY).order_by("name"),
        help_text="Only datasets that finished ingesting are listed.",
    )
    teacher = forms.ModelChoiceField(queryset=Teacher.objects.order_by("name"))
    preset = forms.ChoiceField(help_text="Fills every setting below; edit what you need.")
    student_family = forms.ChoiceField(label="Student family")
    student = forms.JSONField(
        required=False,
        label="Student parameters (JSON)",
        widget=forms.Textarea(attrs={"rows": 2, "spellcheck": "false"}),
        help_text='e.g. {"channels": [16, 32, 64], "blocks": 3}',
    )
    steps = forms.IntegerField(required=False, help_text="Optimizer steps.")
    lr = forms.FloatField(required=False, label="Learning rate")
    image_size = forms.IntegerField(
        required=False, label="Training crop (px)", help_text="Multiple of 8."
    )
    batch_size = forms.IntegerField(required=False, label="Batch size")
    seed = forms.IntegerField(required=False)
    extra = forms.JSONField(
        required=False,
        label="Other settings (JSON)",
        widget=forms.Textarea(attrs={"rows": 2, "spellcheck": "false"}),
        help_text='Any other config key, e.g. {"quantize_fp16": false, "eval_size": 128}.',
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["preset"].choices = [
            (p["name"], f"{p['name']} — {p.get('description', '')}".strip(" —"))
            for p in preset_table()
        ]
        self.fields["student_family"].choices = [(f, f) for f in student_families()]
        for name in loss_names():
            self.fields[f"loss_{name}"] = forms.FloatField(
                required=False, label=name, widget=forms.NumberInput(attrs={"step": "any"})
            )
        self.config = None  # the validated DistillConfig once is_valid()

    @classmethod
    def initial_for(cls, preset: str | None = None, clone: dict[str, Any] | None = None) -> dict:
        """Initial values: a run's config when cloning, else the preset's (default first)."""
        presets = {p["name"]: p["config"] for p in preset_table()}
        if clone:
            values = dict(clone)
            config = {**presets.get(values.get("preset"), {}), **values}
        else:
            if preset not in presets:
                preset = "default" if "default" in presets else next(iter(presets), "")
            config = dict(presets.get(preset, {}))
            values = {"preset": preset}
        initial = {
            **values,
            "student_family": config.get("student_family"),
            "student": config.get("student", {}),
            "extra": values.get("extra") or {},
        }
        for key in NUMBER_KEYS:
            initial[key] = config.get(key)
        for name, weight in (config.get("losses") or {}).items():
            initial[f"loss_{name}"] = weight
        initial.pop("losses", None)
        return initial

    def loss_fields(self) -> list[forms.BoundField]:
        return [self[f"loss_{name}"] for name in loss_names()]

    def clean(self) -> dict[str, Any]:
        from distill_core.config import ConfigError, DistillConfig

        cleaned = super().clean()
        preset = cleaned.get("preset")
        # Values that did not even parse (bad JSON, "abc" as a number) are reported already.
        feeds_config = {"preset", "student_family", "student", "extra", *NUMBER_KEYS}
        feeds_config.update(f"loss_{n}" for n in loss_names())
        if not preset or feeds_config & set(self.errors):
            return cleaned
        base = next(p["config"] for p in preset_table() if p["name"] == preset)
        data = dict(base)

        extra = cleaned.get("extra") or {}
        if not isinstance(extra, dict):
            self.add_error("extra", 'Expected a JSON object, e.g. {"quantize_fp16": false}.')
            return cleaned
        own_field = sorted(set(extra) & set(services.FORM_KEYS))
        if own_field:
            self.add_error("extra", f"{', '.join(own_field)}: set this in its own field above.")
            return cleaned
        data.update(extra)
        data["preset"] = preset

        family = cleaned.get("student_family") or base["student_family"]
        student = cleaned.get("student")
        if student is None:
            student = base["student"] if family == base["student_family"] else {}
        data["student_family"] = family
        data["student"] = student

        # Weights left blank count as 0 (term off); a POST that sends no weights keeps the preset's.
        sent = [n for n in loss_names() if f"loss_{n}" in self.data]
        if sent:
            data["losses"] = {
                n: cleaned[f"loss_{n}"] for n in loss_names() if cleaned.get(f"loss_{n}")
            }
        for key in NUMBER_KEYS:
            if cleaned.get(key) is not None:
                data[key] = cleaned[key]

        try:
            self.config = DistillConfig.from_dict(data)
        except ConfigError as exc:
            self.add_error(self._field_for(str(exc)), str(exc))
            return cleaned
        cleaned["config"] = self.config

        teacher, dataset = cleaned.get("teacher"), cleaned.get("dataset")
        if teacher and dataset and teacher.spec == "pairs" and not dataset.paired:
            self.add_error(
                "teacher",
                f"The 'pairs' teacher takes its outputs from the dataset, but {dataset.name} has "
                "no input/ and target/ folders. Choose another teacher or a paired dataset.",
            )
        return cleaned

    def _field_for(self, message: str) -> str | None:
        """The form field a ConfigError message is about ("lr=2: ..." -> lr), or None."""
        if message.startswith("unknown config key"):
            return "extra"
        match = re.match(r"([A-Za-z_]\w*)(?:\.(\w+))?", message)
        if not match:
            return None
        key, sub = match.groups()
        if key == "losses":
            return f"loss_{sub}" if sub and f"loss_{sub}" in self.fields else None
        if key in self.fields and key not in ("extra", "name"):
            return key
        if key in config_keys():
            return "extra"
        return None


@lru_cache(maxsize=1)
def config_keys() -> frozenset[str]:
    """Every DistillConfig key."""
    import dataclasses

    from distill_core.config import DistillConfig

    return frozenset(f.name for f in dataclasses.fields(DistillConfig))


class DatasetForm(forms.Form):
    """A dataset from an uploaded zip or a folder already on the server."""

    name = forms.CharField(max_length=200)
    archive = forms.FileField(
        required=False,
        label="Zip file",
        widget=forms.ClearableFileInput(attrs={"accept": ".zip"}),
        help_text="Images in any folders; input/ + target/ make a paired dataset.",
    )
    folder = forms.CharField(
        required=False,
        max_length=1000,
        label="…or a folder on the server",
        help_text="An absolute path the workers can read.",
    )

    def clean_name(self) -> str:
        name = self.cleaned_data["name"].strip()
        if Dataset.objects.filter(name=name).exists():
            raise forms.ValidationError(f"A dataset called {name!r} exists already; pick another.")
        return name

    def clean_archive(self):
        archive = self.cleaned_data.get("archive")
        if not archive:
            return archive
        limit = settings.DISTILLERY_MAX_UPLOAD_MB
        if archive.size > limit * 1024 * 1024:
            raise forms.ValidationError(
                f"{archive.name} is {archive.size / 2**20:.0f} MB; the limit is {limit} MB "
                "(DISTILLERY_MAX_UPLOAD_MB). Register a folder on the server instead."
            )
        if not zipfile.is_zipfile(archive):
            raise forms.ValidationError(f"{archive.name} is not a zip file.")
        archive.seek(0)
        return archive

    def clean_folder(self) -> str:
        raw = self.cleaned_data.get("folder", "").strip()
        if not raw:
            return ""
        path = Path(raw).expanduser()
        if not path.is_absolute():
            raise forms.ValidationError(f"{raw}: give an absolute path, e.g. /data/photos.")
        path = path.resolve()
        if not path.exists():
            raise forms.ValidationError(f"{path} does not exist on the server.")
        if not (path.is_dir() or path.suffix.lower() == ".zip"):
            raise forms.ValidationError(f"{path} is neither a folder nor a .zip file.")
        roots = settings.DISTILLERY_DATASET_ROOTS
        if not any(path == root or root in path.parents for root in roots):
            raise forms.ValidationError(
                f"{path} is outside the folders this server may read "
                f"({', '.join(str(r) for r in roots)}). Move the images under one of them, or "
                "ask the administrator to add the folder to DISTILLERY_DATASET_ROOTS."
            )
        return str(path)

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if not self.errors and bool(cleaned.get("archive")) == bool(cleaned.get("folder")):
            raise forms.ValidationError("Upload a zip file or give a folder on the server (one).")
        return cleaned

    def save(self, user) -> Dataset:
        """Store the upload (if any), create the Dataset and queue its ingestion."""
        archive = self.cleaned_data.get("archive")
        path = (
            services.store_upload(archive, "uploads", suffix=".zip")
            if archive
            else Path(self.cleaned_data["folder"])
        )
        dataset = Dataset.objects.create(
            name=self.cleaned_data["name"],
            path=str(path),
            created_by=user if user.is_authenticated else None,
        )
        services.enqueue_ingest(dataset)
        return dataset


class TeacherForm(forms.Form):
    """A built-in OpenCV operator, an uploaded ONNX / TorchScript model, or dataset pairs.

    Uploaded models are loaded and run once on a probe image before they are accepted.
    """

    SOURCES = (
        ("opencv", "Built-in OpenCV operator"),
        ("file", "Upload an ONNX or TorchScript model"),
        ("pairs", "Pairs: the dataset holds the teacher's outputs (input/ + target/)"),
    )
    name = forms.CharField(max_length=200)
    source = forms.ChoiceField(choices=SOURCES, widget=forms.RadioSelect, initial="opencv")
    operator = forms.ChoiceField(required=False)
    file = forms.FileField(
        required=False,
        label="Model file",
        widget=forms.ClearableFileInput(attrs={"accept": ".onnx,.pt,.pth,.ts"}),
        help_text="ONNX (.onnx) or TorchScript (.pt): float32 NCHW RGB in [0, 1] in and out.",
    )
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}))

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        from distill_core.teachers import OPENCV_OPS

        self.fields["operator"].choices = [(op, OPERATOR_LABELS.get(op, op)) for op in OPENCV_OPS]

    def clean_name(self) -> str:
        name = self.cleaned_data["name"].strip()
        if Teacher.objects.filter(name=name).exists():
            raise forms.ValidationError(f"A teacher called {name!r} exists already; pick another.")
        return name

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if self.errors:
            return cleaned
        source = cleaned["source"]
        if source == "opencv":
            if not cleaned.get("operator"):
                self.add_error("operator", "Choose an operator.")
                return cleaned
            cleaned["spec"] = f"opencv:{cleaned['operator']}"
            self._probe(cleaned, "operator")
        elif source == "pairs":
            cleaned["spec"] = "pairs"
        else:
            upload = cleaned.get("file")
            if not upload:
                self.add_error("file", "Choose a .onnx or TorchScript .pt file to upload.")
                return cleaned
            kind = TEACHER_SUFFIXES.get(Path(upload.name).suffix.lower())
            if kind is None:
                self.add_error(
                    "file",
                    f"{upload.name}: expected .onnx (ONNX) or .pt (TorchScript, saved with "
                    "torch.jit.save).",
                )
                return cleaned
            stored = services.store_upload(
                upload, "teachers", suffix=Path(upload.name).suffix.lower()
            )
            cleaned["spec"] = f"{kind}:{stored}"
            if not self._probe(cleaned, "file"):
                stored.unlink(missing_ok=True)
        return cleaned

    def _probe(self, cleaned: dict[str, Any], field: str) -> bool:
        from distill_core.teachers import TeacherError

        try:
            cleaned["loaded"] = services.probe_teacher(cleaned["spec"])
        except TeacherError as exc:
            self.add_error(field, str(exc))
            return False
        return True

    def save(self) -> Teacher:
        return services.create_teacher(
            self.cleaned_data["name"],
            self.cleaned_data.get("loaded"),
            spec=self.cleaned_data["spec"],
            description=self.cleaned_data.get("description", ""),
        )
