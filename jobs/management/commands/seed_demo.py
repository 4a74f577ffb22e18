"""`manage.py seed_demo`: everything a new user needs to see Distillery work, built once.

The demo dataset (photos bundled with scikit-image/scikit-learn, cropped and flipped), the
built-in neural demo teacher and the OpenCV operators, the presets as StudentConfig rows, and the
login `demo`. Running it again changes nothing that is already there.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from jobs.models import Dataset, Run, StudentConfig, Teacher

DEMO_DATASET = "demo"
DEMO_RUN = "demo run"
NEURAL_TEACHER = "demo neural teacher"
# Built-in operators offered as teachers; the first is the fallback when the neural one is missing.
OPENCV_TEACHERS = {
    "stylization": "OpenCV stylization: edge-preserving smoothing with darkened edges (cartoon).",
    "pencil_color": "OpenCV colour pencil sketch.",
    "detail_enhance": "OpenCV detail enhancement.",
    "edge_preserving": "OpenCV edge-preserving filter.",
    "oilpainting": "OpenCV xphoto oil painting.",
}


class Command(BaseCommand):
    help = "Build the demo dataset, register demo teachers and presets, create the login `demo`."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--count", type=int, default=1000, help="demo images (default 1000)")
        parser.add_argument("--size", type=int, default=256, help="image side in px (default 256)")
        parser.add_argument(
            "--password-file",
            type=Path,
            help="keep a generated password here, so a later run can print it again",
        )
        parser.add_argument(
            "--launch-run",
            type=int,
            metavar="STEPS",
            help="also queue one demo run (preset `default`, STEPS steps) unless one exists",
        )

    def handle(self, *args, count: int, size: int, password_file, launch_run, **options) -> None:
        dataset = self.dataset(count, size)
        teachers = self.teachers()
        self.presets()
        password = self.user(password_file)
        if launch_run:
            self.launch(dataset, teachers[0], launch_run)
        self.stdout.write(self.style.SUCCESS("demo ready: log in as `demo`"))
        if password:
            self.stdout.write(f"  user: demo\n  password: {password}")

    # -- pieces -----------------------------------------------------------------------------
    def dataset(self, count: int, size: int) -> Dataset:
        from distill_core.demo_data import build_demo_data
        from jobs.tasks import ingest_dataset

        folder = Path(settings.MEDIA_ROOT) / "datasets" / DEMO_DATASET
        self.stdout.write(f"demo dataset: {count} images of {size} px in {folder}")
        self.stdout.flush()
        build_demo_data(folder, count=count, size=size)  # reuses the images already there
        dataset, _ = Dataset.objects.get_or_create(
            name=DEMO_DATASET, defaults={"path": str(folder)}
        )
        if dataset.status != Dataset.Status.READY or dataset.path != str(folder):
            Dataset.objects.filter(pk=dataset.pk).update(path=str(folder))
            self.stdout.write("checking the demo images (ingest)")
            self.stdout.flush()
            ingest_dataset(dataset.pk)  # the task body, here and now: the demo needs it ready
            dataset.refresh_from_db()
            if dataset.status != Dataset.Status.READY:
                raise CommandError(f"the demo dataset could not be ingested: {dataset.error}")
        return dataset

    def teachers(self) -> list[Teacher]:
        """Register the teachers; returns them, the one the demo run uses first."""
        found: list[Teacher] = []
        onnx_path = (Path(settings.BASE_DIR) / "demo" / "teacher" / "demo_teacher.onnx").resolve()
        if onnx_path.is_file():
            teacher = self._register(
                NEURAL_TEACHER,
                f"onnx:{onnx_path}",
                "Built-in neural demo teacher: a Johnson-style transformer net (ONNX).",
            )
            if teacher:
                found.append(teacher)
        else:
            self.stderr.write(
                f"warning: the neural demo teacher {onnx_path} is missing; the demo uses "
                "opencv:stylization instead"
            )
        for op, description in OPENCV_TEACHERS.items():
            teacher = self._register(f"OpenCV {op}", f"opencv:{op}", description)
            if teacher:
                found.append(teacher)
        if not found:
            raise CommandError("no teacher could be registered; see the warnings above")
        return found

    def _register(self, name: str, spec: str, description: str) -> Teacher | None:
        from jobs.services import create_teacher, probe_teacher

        existing = Teacher.objects.filter(name=name).first()
        if existing and (existing.spec == spec or existing.runs.exists()):
            return existing  # a teacher that runs were trained against is never swapped
        if existing:
            existing.delete()  # the file moved (another checkout): register it afresh
        try:
            loaded = probe_teacher(spec)
        except ValueError as exc:  # TeacherError: e.g. opencv-contrib's xphoto missing
            self.stderr.write(f"warning: teacher {name} ({spec}) not registered: {exc}")
            return None
        return create_teacher(name, loaded, spec=spec, description=description, builtin=True)

    def presets(self) -> None:
        from distill_core.presets import get_preset, list_presets

        for info in list_presets():
            StudentConfig.objects.update_or_create(
                name=info["name"],
                defaults={
                    "config": get_preset(info["name"]).to_dict(),
                    "builtin": True,
                    "params": info.get("params"),
                    "macs_at_256": info.get("macs"),
                },
            )

    def user(self, password_file: Path | None) -> str | None:
        """Create `demo`; returns the password when it should be printed."""
        given = os.environ.get("DISTILLERY_DEMO_PASSWORD") or os.environ.get("DEMO_PASSWORD")
        kept = None
        if password_file and password_file.is_file():
            kept = password_file.read_text().strip() or None
        users = get_user_model()
        user = users.objects.filter(username="demo").first()
        if user is None:
            password = given or kept or secrets.token_urlsafe(12)
            users.objects.create_user("demo", password=password)
            if not given and password_file:
                password_file.parent.mkdir(parents=True, exist_ok=True)
                password_file.write_text(password + "\n")
                password_file.chmod(0o600)
            return password
        if given and not user.check_password(given):
            user.set_password(given)
            user.save(update_fields=["password"])
        return given or kept

    def launch(self, dataset: Dataset, teacher: Teacher, steps: int) -> None:
        from distill_core.presets import get_preset
        from jobs.services import launch_run

        if Run.objects.filter(name=DEMO_RUN).exists():
            return
        config = get_preset("default").with_overrides([f"steps={steps}"])
        user = get_user_model().objects.get(username="demo")
        run = launch_run(
            {"dataset": dataset, "teacher": teacher, "config": config, "name": DEMO_RUN}, user
        )
        self.stdout.write(f"queued {run} ({steps} steps of preset `default`, teacher {teacher})")
