"""Every page's URL and name. Templates link by these names (see docs/web.md)."""

from django.urls import include, path

from jobs import views, views_agents, views_charts

urlpatterns = [
    # runs (jobs.views)
    path("", views.runs, name="runs"),
    path("runs/new/", views.run_new, name="run_new"),
    path("runs/<int:pk>/", views.run_detail, name="run_detail"),
    path("runs/<int:pk>/cancel/", views.run_cancel, name="run_cancel"),
    path("runs/<int:pk>/retry/", views.run_retry, name="run_retry"),
    path("runs/<int:pk>/status.json", views.run_status_json, name="run_status_json"),
    path("artifacts/<int:pk>/download/", views.artifact_download, name="artifact_download"),
    # datasets and teachers (jobs.views)
    path("datasets/", views.datasets, name="datasets"),
    path("datasets/new/", views.dataset_new, name="dataset_new"),
    path("datasets/<int:pk>/", views.dataset_detail, name="dataset_detail"),
    path("datasets/<int:pk>/status.json", views.dataset_status_json, name="dataset_status_json"),
    path(
        "datasets/<int:pk>/thumbs/<int:index>/", views.dataset_thumbnail, name="dataset_thumbnail"
    ),
    path("teachers/", views.teachers, name="teachers"),
    path("teachers/new/", views.teacher_new, name="teacher_new"),
    path("healthz/", views.healthz, name="healthz"),
    # charts (jobs.views_charts, H-charts)
    path("runs/<int:pk>/series.json", views_charts.run_series_json, name="run_series_json"),
    path("runs/<int:pk>/samples/", views_charts.run_samples, name="run_samples"),
    path("compare/", views_charts.compare, name="compare"),
    path("tradeoffs/", views_charts.tradeoffs, name="tradeoffs"),
    path("", include("jobs.urls_charts")),
    # devices (jobs.views_agents and the agent API, H-agent)
    path("agents/", views_agents.agents, name="agents"),
    path(
        "agents/tokens/new/",
        views_agents.enrollment_token_create,
        name="enrollment_token_create",
    ),
    path(
        "agents/tokens/<int:pk>/revoke/",
        views_agents.enrollment_token_revoke,
        name="enrollment_token_revoke",
    ),
    path("agents/<int:pk>/", views_agents.agent_update, name="agent_update"),
    path("runs/<int:pk>/benchmark/", views_agents.run_benchmark, name="run_benchmark"),
    path("api/", include("jobs.urls_api")),
]
