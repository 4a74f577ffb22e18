"""Chart pages and their JSON: curves, sample viewer, comparison, trade-offs."""

from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from django.conf import settings
from django.urls import reverse
from onnx import TensorProto, helper
from PIL import Image

from jobs import charts
from jobs.models import Agent, Artifact, BenchmarkJob, BenchmarkResult, MetricPoint, Run

CONFIG = {
    "preset": "tiny",
    "steps": 40,
    "lr": 0.001,
    "student": {"channels": [8, 16], "blocks": 1},
    "losses": {"pixel_l1": 1.0, "ssim": 0.2},
}


@pytest.fixture
def make_run(dataset, teacher, alice):
    """A run with a literal config (dotted keys in the diff come from its nesting)."""

    def make(config: dict | None = None, **fields) -> Run:
        fields.setdefault("name", "run")
        fields.setdefault("status", Run.Status.SUCCEEDED)
        return Run.objects.create(
            dataset=fields.pop("dataset", dataset),
            teacher=fields.pop("teacher", teacher),
            config=config or CONFIG,
            created_by=alice,
            **fields,
        )

    return make


def add_points(run: Run, name: str, values, start: int = 0) -> None:
    MetricPoint.objects.bulk_create(
        [MetricPoint(run=run, name=name, step=start + i, value=v) for i, v in enumerate(values)]
    )


def image(seed: int, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def write_samples(run: Run, count: int = 3, student_offset: int = 8) -> None:
    """The PNGs training writes: NNN_input, NNN_teacher and NNN_student (teacher + an offset)."""
    folder = run.out_dir() / "samples"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        teacher = image(100 + i)
        student = np.clip(teacher.astype(int) + student_offset, 0, 255).astype(np.uint8)
        for name, arr in (("input", image(i)), ("teacher", teacher), ("student", student)):
            Image.fromarray(arr).save(folder / f"{i:03d}_{name}.png")


def halving_model(path: Path) -> Path:
    """A real ONNX image model (output = input × 0.5) with dynamic N, H, W."""
    shape = ["N", 3, "H", "W"]
    graph = helper.make_graph(
        [helper.make_node("Mul", ["input", "half"], ["output"])],
        "halve",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, shape)],
        [helper.make_tensor("half", TensorProto.FLOAT, [], [0.5])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path


def png(response) -> np.ndarray:
    body = b"".join(response.streaming_content) if response.streaming else response.content
    return np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))


# ---------------------------------------------------------------- plotly comes from static


def test_static_plotly_is_the_plotly_packages_own_file():
    import plotly

    packaged = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    ours = Path(settings.BASE_DIR) / "static" / "plotly.min.js"
    assert (
        hashlib.sha256(ours.read_bytes()).digest() == hashlib.sha256(packaged.read_bytes()).digest()
    )


@pytest.mark.parametrize("page", ["run_detail", "compare", "tradeoffs"])
def test_chart_pages_load_plotly_from_static_and_nothing_from_a_cdn(client_alice, make_run, page):
    run = make_run()
    url = reverse(page, args=[run.pk]) if page == "run_detail" else reverse(page)
    if page == "compare":
        url += f"?runs={run.pk}"
    html = client_alice.get(url).content.decode()
    assert '<script src="/static/plotly.min.js"></script>' in html
    assert not re.search(r"""<(script|link)[^>]+(src|href)=["']?(https?:)?//""", html)


# ---------------------------------------------------------------- run curves


def test_series_json_needs_login(client, make_run):
    response = client.get(reverse("run_series_json", args=[make_run().pk]))
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_series_json_sends_styles_on_a_full_fetch_and_only_new_points_after_since(
    client_alice, make_run
):
    run = make_run(status=Run.Status.RUNNING)
    add_points(run, "total", [1.0, 0.8, 0.6])
    add_points(run, "pixel_l1", [0.9, 0.7, 0.5])
    add_points(run, "lr", [1e-3] * 3)
    add_points(run, "val_psnr", [22.5], start=2)
    url = reverse("run_series_json", args=[run.pk])
    full = client_alice.get(url).json()
    assert full["active"] is True and full["last_step"] == 2
    assert set(full["series"]) == {"total", "pixel_l1", "lr", "val_psnr"}
    assert full["series"]["total"] == {
        "step": [0, 1, 2],
        "value": [1.0, 0.8, 0.6],
        "total_points": 3,
    }
    assert full["styles"]["lr"]["yaxis"] == "y2" and full["styles"]["val_psnr"]["yaxis"] == "y3"
    assert full["layout"]["yaxis"]["title"]["text"] == "loss"

    add_points(run, "total", [0.5], start=3)
    newer = client_alice.get(url + "?since=2").json()
    assert newer["series"] == {"total": {"step": [3], "value": [0.5], "total_points": 1}}
    assert newer["last_step"] == 3 and "styles" not in newer


def test_series_json_explains_a_bad_since(client_alice, make_run):
    response = client_alice.get(reverse("run_series_json", args=[make_run().pk]) + "?since=abc")
    assert response.status_code == 400
    assert response.json() == {"error": "since='abc' is not a whole number"}


# ---------------------------------------------------------------- sample viewer


@pytest.fixture
def sampled_run(make_run, media_root):
    run = make_run(
        report={
            "metrics": {
                "per_image": [
                    {"relpath": f"cats/cat{i}.png", "psnr": 30.0 + i, "ssim": 0.9} for i in range(3)
                ]
            }
        }
    )
    write_samples(run)
    path = halving_model(run.out_dir() / "student_int8.onnx")
    Artifact.objects.create(
        run=run,
        kind=Artifact.Kind.ONNX_INT8,
        path=str(path.relative_to(media_root)),
        size_bytes=path.stat().st_size,
        sha256="0" * 64,
    )
    return run


def test_the_samples_json_lists_each_image_with_panels_and_scores(client_alice, sampled_run):
    body = client_alice.get(reverse("run_samples_json", args=[sampled_run.pk])).json()
    assert [img["name"] for img in body["images"]] == [f"cats/cat{i}.png" for i in range(3)]
    assert body["variants"]["fp32"] == {"available": True, "reason": None}
    assert body["variants"]["int8"]["available"] is True
    assert body["variants"]["fp16"]["available"] is False
    assert "no fp16 model" in body["variants"]["fp16"]["reason"]
    first = body["images"][0]
    assert set(first["students"]) == {"fp32", "int8"}
    assert first["metrics"]["fp32"] == {"psnr": 30.0, "ssim": 0.9}
    # The int8 output was made by running its ONNX file: the input halved, scored vs teacher.
    int8 = png(client_alice.get(first["students"]["int8"]))
    expected = np.round(image(0) / 255.0 * 0.5 * 255.0)
    assert np.abs(int8.astype(int) - expected).max() <= 1
    assert 0 < first["metrics"]["int8"]["psnr"] < 20


def test_a_broken_variant_model_is_reported_and_the_others_still_show(
    client_alice, sampled_run, media_root
):
    broken = sampled_run.out_dir() / "student_fp16.onnx"
    broken.write_bytes(b"not an onnx file")
    Artifact.objects.create(
        run=sampled_run, kind=Artifact.Kind.ONNX_FP16, path=str(broken.relative_to(media_root)),
        size_bytes=16, sha256="0" * 64,
    )  # fmt: skip
    body = client_alice.get(reverse("run_samples_json", args=[sampled_run.pk])).json()
    assert body["variants"]["fp16"]["available"] is False
    assert body["variants"]["fp16"]["reason"].startswith("running the fp16 model on the samples")
    assert body["variants"]["int8"]["available"] is True
    assert set(body["images"][0]["students"]) == {"fp32", "int8"}


def test_the_samples_page_embeds_the_listing_and_the_swipe_slider(client_alice, sampled_run):
    html = client_alice.get(reverse("run_samples", args=[sampled_run.pk])).content.decode()
    assert 'id="samples-data"' in html and 'id="swipe-range"' in html
    assert "cats/cat0.png" in html
    assert "student fp16: this run has no fp16 model" in html


def test_a_run_without_samples_says_when_they_will_appear(client_alice, make_run):
    run = make_run(status=Run.Status.RUNNING)
    html = client_alice.get(reverse("run_samples", args=[run.pk])).content.decode()
    assert "No sample images yet" in html and "at the end of the run" in html


def test_panels_are_served_as_png_and_the_difference_map_is_made_on_request(
    client_alice, sampled_run
):
    url = reverse("run_sample_image", args=[sampled_run.pk, 1, "input"])
    assert (png(client_alice.get(url)) == image(1)).all()
    diff = png(client_alice.get(reverse("run_sample_image", args=[sampled_run.pk, 1, "diff_fp32"])))
    assert diff.shape == (32, 32, 3)
    # Student = teacher + 8 (clipped): 8/255 × gain 4 ≈ 0.125 of the scale, a dark purple.
    assert 0 < diff.mean() < 128


def test_the_difference_map_of_identical_images_is_black():
    a = image(3)
    assert (charts_diff(a, a) == [0, 0, 4]).all()
    far = charts_diff(np.zeros_like(a), np.full_like(a, 255))
    assert (far == [252, 255, 164]).all(), "a full-scale difference is the brightest colour"


def charts_diff(a, b):
    from jobs.samples import diff_heatmap

    return diff_heatmap(a, b)


def test_an_unknown_panel_or_a_missing_image_is_a_404(client_alice, sampled_run):
    assert (
        client_alice.get(
            reverse("run_sample_image", args=[sampled_run.pk, 0, "secret"])
        ).status_code
        == 404
    )
    assert (
        client_alice.get(reverse("run_sample_image", args=[sampled_run.pk, 7, "input"])).status_code
        == 404
    )


# ---------------------------------------------------------------- comparison


def test_compare_shows_only_the_config_key_that_differs(client_alice, make_run):
    a = make_run(name="a")
    b = make_run(name="b", config={**CONFIG, "losses": {"pixel_l1": 1.0, "ssim": 0.5}})
    html = client_alice.get(reverse("compare") + f"?runs={a.pk},{b.pk}").content.decode()
    keys = re.findall(r'<tr data-key="([^"]+)"', html)
    assert keys == ["losses.ssim"]
    row = html[html.index('data-key="losses.ssim"') :].split("</tr>")[0]
    assert row.count('class="differs"') == 2 and "0.2" in row and "0.5" in row


def test_compare_accepts_the_runs_lists_repeated_checkboxes(client_alice, make_run):
    a, b = make_run(name="a"), make_run(name="b", config={**CONFIG, "steps": 80})
    html = client_alice.get(reverse("compare") + f"?runs={a.pk}&runs={b.pk}").content.decode()
    assert re.findall(r'<tr data-key="([^"]+)"', html) == ["steps"]


def test_compare_metric_table_has_best_with_its_step_and_final(client_alice, make_run):
    a, b = make_run(name="a"), make_run(name="b")
    add_points(a, "val_psnr", [20.0, 27.5, 26.0])
    add_points(b, "val_psnr", [21.0, 24.0, 24.5])
    add_points(a, "total", [0.9, 0.3, 0.4])
    add_points(b, "total", [0.8, 0.5, 0.2])
    response = client_alice.get(reverse("compare") + f"?runs={a.pk},{b.pk}")
    table = {row["run"].pk: row["cells"] for row in response.context["metric_table"]}
    assert response.context["metric_names"] == ["val_psnr", "total"]
    psnr_a, total_a = table[a.pk]
    assert (psnr_a["best_text"], psnr_a["best_step"], psnr_a["final_text"]) == (
        "27.50 dB",
        1,
        "26.00 dB",
    )
    assert psnr_a.get("winner") and not table[b.pk][0].get("winner")
    # Losses show their final value; the lowest final wins.
    assert total_a["final_text"] == "0.4" and not total_a["has_best"]
    assert table[b.pk][1].get("winner") and table[b.pk][1]["final"] == 0.2
    html = response.content.decode()
    assert html.count('<td class="num winner"') == 2


def test_compare_data_json_has_one_trace_per_run_aligned_by_step(client_alice, make_run):
    a, b = make_run(name="a"), make_run(name="b")
    add_points(a, "total", [1.0, 0.5])
    add_points(b, "total", [0.9, 0.4, 0.2], start=5)
    url = reverse("compare_data_json") + f"?runs={b.pk},{a.pk}&metric=total"
    body = client_alice.get(url).json()
    traces = body["figure"]["data"]
    assert [t["name"] for t in traces] == [f"#{b.pk} b", f"#{a.pk} a"]
    assert traces[0]["x"] == [5, 6, 7] and traces[1]["y"] == [1.0, 0.5]
    assert body["figure"]["layout"]["xaxis"]["title"]["text"] == "step"


def test_compare_shows_the_same_test_inputs_for_each_runs_student(client_alice, make_run):
    a, b = make_run(name="a"), make_run(name="b")
    write_samples(a, count=3)
    write_samples(b, count=2)
    response = client_alice.get(reverse("compare") + f"?runs={a.pk},{b.pk}")
    assert response.context["sample_indices"] == [0, 1]
    urls = response.context["sample_urls"][1]
    assert urls["students"][b.pk] == reverse("run_sample_image", args=[b.pk, 1, "student_fp32"])


def test_compare_with_a_bad_run_number_says_which(client_alice, db):
    response = client_alice.get(reverse("compare") + "?runs=1,x")
    assert response.status_code == 400 and b"'x' is not a run number" in response.content


# ---------------------------------------------------------------- trade-offs

# (size KB, latency ms, PSNR dB, on the front?)
CONSTRUCTED = {
    "A": (100, 10.0, 30.0, True),
    "A-twin": (100, 10.0, 30.0, True),  # a tie dominates nothing: both stay
    "B": (200, 20.0, 29.0, False),  # A beats it on all three
    "C": (50, 15.0, 25.0, True),  # smallest
    "D": (300, 5.0, 28.0, True),  # fastest
    "E": (400, 30.0, 35.0, True),  # best quality
    "F": (100, 10.0, 29.9, False),  # A equals it twice and is strictly better once
    "G": (10, 1.0, None, False),  # no PSNR: drawn grey, never on the front
}


@pytest.fixture
def constructed(make_run, media_root):
    artifacts = {}
    for name, (kb, ms, psnr, _) in CONSTRUCTED.items():
        run = make_run(name=name)
        artifacts[name] = Artifact.objects.create(
            run=run,
            kind=Artifact.Kind.ONNX_INT8,
            path=f"runs/{run.pk}/m.onnx",
            size_bytes=kb * 1024,
            sha256="0" * 64,
            psnr_vs_teacher=psnr,
            latency_ms_p50=ms,
        )
    Run.objects.filter(name="A").update(summary={"teacher_latency_ms_p50": 42.0})
    return artifacts


def test_pareto_front_follows_the_documented_rule():
    points = [{"size": kb, "latency": ms, "psnr": p} for kb, ms, p, _ in CONSTRUCTED.values()]
    front = charts.pareto_front(points)
    names = list(CONSTRUCTED)
    assert {names[i] for i in front} == {n for n, v in CONSTRUCTED.items() if v[3]}
    assert [names[i] for i in front] == ["C", "A", "A-twin", "D", "E"], "drawn by size"


def test_tradeoffs_marks_the_pareto_front_and_lists_its_runs(client_alice, constructed):
    response = client_alice.get(reverse("tradeoffs") + "?variant=int8")
    host = response.context["data"]["charts"][0]
    assert host["key"] == "host" and host["count"] == len(CONSTRUCTED)
    on_front = {p["artifact"] for p in host["front"]}
    assert on_front == {constructed[n].pk for n, v in CONSTRUCTED.items() if v[3]}
    front_trace = next(t for t in host["figure"]["data"] if t["name"] == "Pareto front")
    assert front_trace["ids"] == [str(p["artifact"]) for p in host["front"]]
    grey = next(t for t in host["figure"]["data"] if t["name"] == "no PSNR measured")
    assert grey["ids"] == [str(constructed["G"].pk)]
    html = response.content.decode()
    assert html.count('<tr data-artifact="') == 5
    # The OpenCV teacher has no file: its latency is a reference line, not a point.
    assert host["teachers"][0]["latency"] == 42.0
    assert host["figure"]["layout"]["shapes"][0]["y0"] == 42.0


def test_tradeoffs_filters_by_variant_and_draws_a_chart_per_device(
    client_alice, constructed, make_run
):
    agent, _ = Agent.issue("pi-4b")
    for name in ("A", "B"):
        art = constructed[name]
        job = BenchmarkJob.objects.create(artifact=art, agent=agent, status="done")
        BenchmarkResult.objects.create(
            job=job,
            agent=agent,
            artifact=art,
            threads=1,
            input_size=256,
            p50_ms=art.latency_ms_p50 * 20,
            p90_ms=1,
            p99_ms=1,
        )
    body = client_alice.get(reverse("tradeoffs_data_json")).json()
    assert [c["key"] for c in body["charts"]] == ["host", f"agent-{agent.pk}"]
    device = body["charts"][1]
    assert device["title"] == "pi-4b" and device["count"] == 2
    assert [p["latency"] for p in device["front"]] == [200.0]
    only_fp16 = client_alice.get(reverse("tradeoffs_data_json") + "?variant=fp16").json()
    assert only_fp16["charts"][0]["count"] == 0


def test_tradeoffs_explains_a_bad_filter(client_alice, db):
    response = client_alice.get(reverse("tradeoffs_data_json") + "?variant=int4")
    assert response.status_code == 400
    assert "choose fp32, int8 or fp16" in response.json()["error"]


# ---------------------------------------------------------------- pure helpers


def test_config_diff_flattens_nesting_and_treats_a_missing_key_as_different():
    rows = charts.config_diff([{"a": {"b": 1, "c": 2}, "d": [1]}, {"a": {"b": 1, "c": 3}}])
    assert rows == [("a.c", [2, 3]), ("d", [[1], None])]


def test_ema_matches_tensorboards_debiased_smoothing():
    assert charts.ema([1.0, 1.0, 1.0], 0.9) == pytest.approx([1.0, 1.0, 1.0])
    assert charts.ema([0.0, 1.0], 0.5) == pytest.approx([0.0, 2 / 3])
    assert charts.ema([3.0, 4.0], 0.0) == [3.0, 4.0]


def test_the_loss_figure_puts_terms_lr_and_validation_on_their_own_axes():
    fig = charts.loss_figure(
        {n: {"step": [0], "value": [1.0]} for n in ("style", "total", "lr", "val_psnr", "val_ssim")}
    )
    axes = {t["name"]: t["yaxis"] for t in fig["data"]}
    assert axes == {"total": "y", "style": "y", "lr": "y2", "val_psnr": "y3", "val_ssim": "y4"}
    assert [t["name"] for t in fig["data"]][0] == "total"


def test_only_validation_metrics_are_higher_is_better():
    assert charts.higher_is_better("val_psnr") and charts.higher_is_better("val_ssim")
    assert charts.higher_is_better("ssim") is False, "the ssim loss term is 1 - SSIM"
    assert charts.higher_is_better("total") is False
    assert charts.higher_is_better("lr") is None


def test_log_axes_are_labelled_in_full_at_one_two_five():
    ticks = charts.log_ticks([4.5, 61.0])
    assert ticks == {"tickvals": [5.0, 10.0, 20.0, 50.0], "ticktext": ["5", "10", "20", "50"]}
    assert charts.log_ticks([0.0, float("nan")]) == {}
