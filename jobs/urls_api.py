"""The agent API under /api/ (included by jobs/urls.py)."""

from django.urls import path

from jobs import api

urlpatterns = [
    path("openapi.json", api.openapi, name="api_openapi"),
    path("agents/register", api.register, name="api_register"),
    path("agents/heartbeat", api.heartbeat, name="api_heartbeat"),
    path("jobs/claim", api.claim, name="api_claim"),
    path("jobs/<int:job_id>/result", api.job_result, name="api_job_result"),
    path("jobs/<int:job_id>/failure", api.job_failure, name="api_job_failure"),
    path("jobs/<int:job_id>/release", api.job_release, name="api_job_release"),
    path("jobs/<int:job_id>/test-inputs", api.job_test_inputs, name="api_job_test_inputs"),
    path(
        "artifacts/<int:artifact_id>/download", api.artifact_download, name="api_artifact_download"
    ),
]
