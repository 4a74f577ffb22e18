"""URLs of the chart pages' JSON and images, included from jobs/urls.py.

The four page URLs the contract names (run_series_json, run_samples, compare, tradeoffs) live in
jobs/urls.py; these are the ones only the chart pages themselves call.
"""

from django.urls import path

from jobs import views_charts

urlpatterns = [
    path("runs/<int:pk>/samples.json", views_charts.run_samples_json, name="run_samples_json"),
    path(
        "runs/<int:pk>/samples/<int:index>/<str:part>.png",
        views_charts.run_sample_image,
        name="run_sample_image",
    ),
    path("compare/data.json", views_charts.compare_data_json, name="compare_data_json"),
    path("tradeoffs/data.json", views_charts.tradeoffs_data_json, name="tradeoffs_data_json"),
]
