"""The launch, dataset and teacher forms, validated by distill_core's own config checks."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from onnx import TensorProto, helper

from jobs import services
from jobs.forms import DatasetForm, RunForm, TeacherForm
from jobs.models import Dataset, Run, Teacher


def post_data(dataset, teacher, **changes) -> dict:
    initial = RunForm.initial_for(preset="tiny")
    data = {k: v for k, v in initial.items() if v is not None}
    data.update(dataset=dataset.pk, teacher=teacher.pk)
    data["student"] = json.dumps(data["student"])
    data["extra"] = json.dumps(data["extra"])
    data.update(changes)
    return data


def test_the_tiny_preset_as_shown_is_valid(dataset, teacher):
    form = RunForm(post_data(dataset, teacher))
    assert form.is_valid(), form.errors
    assert form.cleaned_data["config"].preset == "tiny"


def test_edited_fields_reach_the_config(dataset, teacher):
    data = post_data(dataset, teacher, steps="7", lr="0.01", seed="3", loss_tv="0.25")
    data["extra"] = '{"quantize_fp16": false}'
    form = RunForm(data)
    assert form.is_valid(), form.errors
    config = form.cleaned_data["config"]
    assert (config.steps, config.lr, config.seed) == (7, 0.01, 3)
    assert config.losses["tv"] == 0.25
    assert config.quantize_fp16 is False


def test_a_bad_lr_is_attached_to_the_lr_field(dataset, teacher):
    form = RunForm(post_data(dataset, teacher, lr="-1"))
    assert not form.is_valid()
    assert list(form.errors) == ["lr"]
    assert form.errors["lr"][0].startswith("lr=-1.0: must be greater than 0")


def test_a_bad_image_size_names_the_rule(dataset, teacher):
    form = RunForm(post_data(dataset, teacher, image_size="30"))
    assert "multiple of 8" in form.errors["image_size"][0]


def test_a_negative_loss_weight_is_shown_on_its_own_field(dataset, teacher):
    form = RunForm(post_data(dataset, teacher, loss_tv="-0.5"))
    assert "must not be negative" in form.errors["loss_tv"][0]


def test_turning_every_loss_off_is_refused(dataset, teacher):
    data = post_data(dataset, teacher)
    for key in list(data):
        if key.startswith("loss_"):
            data[key] = ""
    form = RunForm(data)
    assert not form.is_valid()
    assert "at least one loss term" in form.non_field_errors()[0]


def test_an_unknown_setting_in_extra_is_shown_on_extra(dataset, teacher):
    form = RunForm(post_data(dataset, teacher, extra='{"warp_speed": 9}'))
    assert "warp_speed" in form.errors["extra"][0]


def test_extra_may_not_repeat_a_field_of_its_own(dataset, teacher):
    form = RunForm(post_data(dataset, teacher, extra='{"lr": 0.5}'))
    assert "its own field" in form.errors["extra"][0]


def test_a_dataset_still_ingesting_cannot_be_chosen(dataset, teacher):
    dataset.status = Dataset.Status.INGESTING
    dataset.save()
    form = RunForm(post_data(dataset, teacher))
    assert "dataset" in form.errors


def test_the_pairs_teacher_needs_a_paired_dataset(dataset):
    pairs = Teacher.objects.create(name="pairs", spec="pairs")
    form = RunForm(post_data(dataset, pairs))
    assert "input/ and target/" in form.errors["teacher"][0]


def test_a_clone_reproduces_the_config_exactly(dataset, teacher, make_run):
    run = make_run(Run.Status.FAILED)
    run.config = {**run.config, "lr": 0.0042, "eval_size": 64, "quantize_int8": False}
    run.save()
    initial = RunForm.initial_for(clone=services.clone_config(run))
    data = {k: v for k, v in initial.items() if v is not None}
    data.update(dataset=dataset.pk, teacher=teacher.pk)
    data["student"] = json.dumps(data["student"])
    data["extra"] = json.dumps(data["extra"])
    form = RunForm(data)
    assert form.is_valid(), form.errors
    assert form.cleaned_data["config"].to_dict() == run.config


def test_a_folder_outside_the_dataset_roots_is_refused(db):
    form = DatasetForm({"name": "etc", "folder": "/etc"})
    assert "outside the folders" in form.errors["folder"][0]


def test_a_folder_inside_the_roots_is_accepted(db, tmp_path):
    (tmp_path / "imgs").mkdir()
    form = DatasetForm({"name": "imgs", "folder": str(tmp_path / "imgs")})
    assert form.is_valid(), form.errors


def test_a_file_that_is_not_a_zip_is_refused(db):
    upload = SimpleUploadedFile("photos.zip", b"plain text")
    form = DatasetForm({"name": "photos"}, {"archive": upload})
    assert "not a zip file" in form.errors["archive"][0]


def test_a_dataset_needs_a_zip_or_a_folder(db):
    form = DatasetForm({"name": "nothing"})
    assert "Upload a zip file or give a folder" in form.non_field_errors()[0]


def test_dataset_names_are_unique(dataset):
    form = DatasetForm({"name": dataset.name, "folder": dataset.path})
    assert "exists already" in form.errors["name"][0]


def tiny_onnx_teacher() -> bytes:
    """An ONNX image-to-image model: 1 - x (a negative), any height and width."""
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, "h", "w"])
    out = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, "h", "w"])
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    node = helper.make_node("Sub", ["one", "input"], ["output"])
    graph = helper.make_graph([node], "negative", [inp], [out], initializer=[one])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def test_an_onnx_teacher_is_probed_and_recorded(db, media_root):
    upload = SimpleUploadedFile("negative.onnx", tiny_onnx_teacher())
    form = TeacherForm({"name": "negative", "source": "file"}, {"file": upload})
    assert form.is_valid(), form.errors
    teacher = form.save()
    assert teacher.spec.startswith("onnx:") and teacher.spec.endswith(".onnx")
    assert str(media_root / "teachers") in teacher.spec
    assert teacher.size_bytes == len(tiny_onnx_teacher())
    loaded = services.probe_teacher(teacher.spec)
    x = np.full((1, 3, 8, 8), 0.25, np.float32)
    assert np.allclose(loaded.run_numpy(x), 0.75)


def test_a_model_file_with_another_suffix_is_refused(db):
    upload = SimpleUploadedFile("teacher.h5", b"keras")
    form = TeacherForm({"name": "keras", "source": "file"}, {"file": upload})
    assert ".onnx" in form.errors["file"][0]


@pytest.mark.parametrize("source, field", [("opencv", "operator"), ("file", "file")])
def test_each_source_needs_its_input(db, source, field):
    form = TeacherForm({"name": "t", "source": source})
    assert form.errors[field]
