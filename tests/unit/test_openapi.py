"""The committed OpenAPI document matches the service's routes (regenerate it with
``python -m serve.openapi``), and documents what clients need."""

from __future__ import annotations

import json

from serve.openapi import DEFAULT, document, render


def _outline(spec: dict) -> dict:
    """What a client relies on: routes, methods, parameters, bodies, answers and fields (not
    FastAPI's exact rendering, which may change between its releases)."""
    routes = {
        (path, method): (
            sorted(p["name"] for p in op.get("parameters", [])),
            sorted(op.get("requestBody", {}).get("content", {})),
            sorted(op["responses"]),
        )
        for path, ops in spec["paths"].items()
        for method, op in ops.items()
    }
    fields = {
        name: sorted(schema.get("properties", {}))
        for name, schema in spec.get("components", {}).get("schemas", {}).items()
    }
    return {"routes": routes, "fields": fields}


def test_docs_openapi_json_is_current() -> None:
    committed = json.loads(DEFAULT.read_text(encoding="utf-8"))
    assert _outline(committed) == _outline(document()), (
        "docs/openapi.json is out of date: run `python -m serve.openapi`"
    )


def test_search_is_documented_with_its_bodies_answers_and_refusals() -> None:
    spec = json.loads(render())
    assert spec == document()
    search = spec["paths"]["/search"]["post"]
    assert set(search["requestBody"]["content"]) == {
        "multipart/form-data",
        "application/json",
        "image/*",
    }
    assert {p["name"] for p in search["parameters"]} == {"k", "categories", "text"}
    assert {"200", "400", "401", "413", "415", "429"} <= set(search["responses"])
    answer = search["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    assert answer.endswith("/SearchResponse")
    result = spec["components"]["schemas"]["SearchResult"]["properties"]
    assert {"product_id", "image_id", "score", "similarity", "text_similarity"} <= set(result)
    assert {"/healthz", "/readyz", "/metrics", "/products/{product_id}", "/images/{image_id}"} <= (
        set(spec["paths"])
    )
