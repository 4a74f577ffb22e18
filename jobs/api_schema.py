"""The agent API's contract: JSON schemas for request bodies and the OpenAPI 3.1 document.

The same schemas validate incoming bodies (jobs/api.py) and appear in /api/openapi.json, so the
published contract and what the server accepts cannot drift apart.
"""

from __future__ import annotations

from typing import Any

SHA256 = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
MS = {"type": "number", "minimum": 0}
FACTS = {
    "type": "object",
    "description": "Device facts: board, cpu, cores, ram_mb, os, arch, python, onnxruntime, ...",
    "maxProperties": 64,
}

REGISTER = {
    "type": "object",
    "required": ["enroll_token"],
    "properties": {
        "enroll_token": {"type": "string", "minLength": 1, "maxLength": 200},
        "name": {"type": "string", "maxLength": 200},
        "facts": FACTS,
    },
    "additionalProperties": False,
}

HEARTBEAT = {
    "type": "object",
    "properties": {
        "facts": FACTS,
        "job_id": {"type": "integer", "minimum": 1, "description": "extend this job's lease"},
    },
    "additionalProperties": False,
}

EMPTY = {"type": "object", "additionalProperties": False}

RESULT_ROW = {
    "type": "object",
    "required": ["threads", "input_size", "p50_ms", "p90_ms", "p99_ms"],
    "properties": {
        "threads": {"type": "integer", "minimum": 1, "maximum": 256},
        "input_size": {"type": "integer", "minimum": 1, "maximum": 16384},
        "p50_ms": MS,
        "p90_ms": MS,
        "p99_ms": MS,
        "mean_ms": {"type": ["number", "null"], "minimum": 0},
        "min_ms": {"type": ["number", "null"], "minimum": 0},
        "max_ms": {"type": ["number", "null"], "minimum": 0},
        "load_ms": {"type": ["number", "null"], "minimum": 0},
        "peak_rss_mb": {"type": ["number", "null"], "description": "whole process, MiB"},
        "rss_growth_mb": {"type": ["number", "null"], "description": "what the model added"},
        "runs": {"type": ["integer", "null"], "minimum": 0},
        "warmup": {"type": ["integer", "null"], "minimum": 0},
    },
    "additionalProperties": False,
}

RESULT = {
    "type": "object",
    "required": ["results"],
    "properties": {
        "results": {"type": "array", "items": RESULT_ROW, "minItems": 1, "maxItems": 64},
        "psnr_vs_teacher": {
            "type": ["number", "null"],
            "description": "mean PSNR (dB) of the device outputs vs the teacher, test inputs",
        },
        "environment": {"type": "object", "maxProperties": 64},
    },
    "additionalProperties": False,
}

FAILURE = {
    "type": "object",
    "required": ["reason"],
    "properties": {
        "reason": {
            "enum": [
                "checksum_mismatch",
                "runtime_error",
                "download_error",
                "unsupported",
                "other",
            ]
        },
        "detail": {"type": "string", "maxLength": 5000},
    },
    "additionalProperties": False,
}

CLAIMED_JOB = {
    "type": "object",
    "required": [
        "job_id",
        "artifact",
        "threads",
        "input_size",
        "warmup",
        "runs",
        "lease_expires",
        "lease_seconds",
    ],
    "properties": {
        "job_id": {"type": "integer"},
        "artifact": {
            "type": "object",
            "required": ["id", "kind", "sha256", "size_bytes", "download_url"],
            "properties": {
                "id": {"type": "integer"},
                "kind": {"type": "string", "enum": ["onnx_fp32", "onnx_int8", "onnx_fp16"]},
                "sha256": SHA256,
                "size_bytes": {"type": "integer"},
                "download_url": {"type": "string"},
                "run_id": {"type": "integer"},
            },
        },
        "threads": {"type": "array", "items": {"type": "integer", "minimum": 1}},
        "input_size": {"type": "integer"},
        "warmup": {"type": "integer"},
        "runs": {"type": "integer"},
        "test_inputs_url": {"type": "string"},
        "lease_expires": {"type": "string", "format": "date-time"},
        "lease_seconds": {"type": "integer"},
    },
}

ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string", "description": "what was wrong and what to do"}},
}


def _json(schema: dict) -> dict:
    return {"application/json": {"schema": schema}}


def _error(text: str) -> dict:
    return {"description": text, "content": _json({"$ref": "#/components/schemas/Error"})}


def _post(
    summary: str, body: str | None, ok: dict, *, auth: bool = True, job: bool = False
) -> dict:
    op: dict[str, Any] = {"summary": summary, "responses": dict(ok)}
    if body:
        op["requestBody"] = {
            "required": True,
            "content": _json({"$ref": f"#/components/schemas/{body}"}),
        }
    op["responses"]["400"] = _error("the body is not JSON or does not match the schema")
    if auth:
        op["responses"]["401"] = _error("missing, wrong or revoked agent token")
    else:
        op["security"] = []
    if job:
        op["parameters"] = [{"$ref": "#/components/parameters/JobId"}]
        op["responses"]["403"] = _error("the job is held by another agent")
        op["responses"]["404"] = _error("no such job")
        op["responses"]["409"] = _error("the job is no longer held by this agent")
    return {"post": op}


def openapi() -> dict:
    """The OpenAPI 3.1 document served at /api/openapi.json."""
    ok = {"200": {"description": "ok", "content": _json({"type": "object"})}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Distillery agent API",
            "version": "1.0.0",
            "description": (
                "Device agents register with an enrollment token (dse_…), then authenticate "
                "with their own bearer token (dsa_…). They claim benchmark jobs under a lease, "
                "download the ONNX artifact (sha256-verified, Range-resumable), and post results."
            ),
        },
        "servers": [{"url": "/"}],
        "security": [{"agentToken": []}],
        "paths": {
            "/api/agents/register": _post(
                "Exchange an enrollment token for an agent token",
                "Register",
                {
                    "201": {
                        "description": "registered; the token is shown only this once",
                        "content": _json(
                            {
                                "type": "object",
                                "required": ["agent_id", "token"],
                                "properties": {
                                    "agent_id": {"type": "integer"},
                                    "token": {"type": "string", "pattern": "^dsa_"},
                                },
                            }
                        ),
                    },
                    "401": _error("the enrollment token is unknown, expired or revoked"),
                },
                auth=False,
            ),
            "/api/agents/heartbeat": _post(
                "Report liveness (and facts); extend leases", "Heartbeat", ok
            ),
            "/api/jobs/claim": _post(
                "Claim the next benchmark job",
                None,
                {
                    "200": {
                        "description": "a job, leased to this agent",
                        "content": _json({"$ref": "#/components/schemas/ClaimedJob"}),
                    },
                    "204": {"description": "no job waiting"},
                },
            ),
            "/api/jobs/{job_id}/result": _post("Post measurements", "Result", ok, job=True),
            "/api/jobs/{job_id}/failure": _post("Report a failed job", "Failure", ok, job=True),
            "/api/jobs/{job_id}/release": _post("Give a job back to the queue", None, ok, job=True),
            "/api/jobs/{job_id}/test-inputs": {
                "get": {
                    "summary": "Test inputs and teacher outputs for on-device PSNR",
                    "description": (
                        "An .npz with input_NNN and teacher_NNN arrays, float32 NCHW RGB in [0, 1]."
                    ),
                    "parameters": [{"$ref": "#/components/parameters/JobId"}],
                    "responses": {
                        "200": {
                            "description": "the arrays",
                            "content": {"application/octet-stream": {"schema": {}}},
                        },
                        "401": _error("missing, wrong or revoked agent token"),
                        "403": _error("the job is held by another agent"),
                        "404": _error("no such job, or its run kept no samples"),
                    },
                }
            },
            "/api/artifacts/{artifact_id}/download": {
                "get": {
                    "summary": "Download an artifact of a job this agent holds",
                    "parameters": [
                        {
                            "name": "artifact_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "integer"},
                        },
                        {
                            "name": "Range",
                            "in": "header",
                            "required": False,
                            "schema": {"type": "string", "examples": ["bytes=1024-"]},
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "the whole file",
                            "headers": {"X-Checksum-SHA256": {"schema": SHA256}},
                            "content": {"application/octet-stream": {"schema": {}}},
                        },
                        "206": {
                            "description": "the requested byte range",
                            "headers": {"Content-Range": {"schema": {"type": "string"}}},
                            "content": {"application/octet-stream": {"schema": {}}},
                        },
                        "401": _error("missing, wrong or revoked agent token"),
                        "403": _error("no job held by this agent uses this artifact"),
                        "404": _error("no such artifact, or its file is gone"),
                        "416": {"description": "the range starts past the end of the file"},
                    },
                }
            },
            "/api/openapi.json": {
                "get": {
                    "summary": "This document",
                    "security": [],
                    "responses": {
                        "200": {"description": "OpenAPI 3.1", "content": ok["200"]["content"]}
                    },
                }
            },
        },
        "components": {
            "securitySchemes": {
                "agentToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "the dsa_ token returned by /api/agents/register",
                }
            },
            "parameters": {
                "JobId": {
                    "name": "job_id",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "integer"},
                }
            },
            "schemas": {
                "Register": REGISTER,
                "Heartbeat": HEARTBEAT,
                "Result": RESULT,
                "ResultRow": RESULT_ROW,
                "Failure": FAILURE,
                "ClaimedJob": CLAIMED_JOB,
                "Error": ERROR,
            },
        },
    }
