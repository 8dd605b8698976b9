"""Both servers' GET /openapi.json describe the paths, methods and parameters recorded in
tests/openapi_shape.json (taken before the gateway was split into packages). A change to the API is
a change to that file: `.venv/bin/python -m tests.test_openapi_shape` rewrites it from the code."""
import json
import os

import requests

SNAPSHOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "openapi_shape.json")


def shape(spec) -> dict:
    """{"METHOD /path": [[in, name, required], ...]} for every operation."""
    return {f"{method.upper()} {path}": sorted([p["in"], p["name"], bool(p.get("required"))]
                                               for p in op.get("parameters", []))
            for path, item in spec["paths"].items() for method, op in item.items()}


def check(base_url, which):
    with open(SNAPSHOT, encoding="utf-8") as f:
        expected = json.load(f)[which]
    got = shape(requests.get(base_url + "/openapi.json", timeout=10).json())
    assert sorted(got) == sorted(expected), f"operations differ: {set(got) ^ set(expected)}"
    assert got == expected


def test_gateway_describes_the_recorded_paths_methods_and_parameters(gateway):
    check(gateway.base_url, "gateway")


def test_qwen_server_describes_the_recorded_paths_methods_and_parameters(qwen_tiny):
    check(qwen_tiny.base_url, "qwen_server")


if __name__ == "__main__":
    from gateway.openapi_spec import gateway_spec
    from qwen_api.openapi_spec import qwen_server_spec
    with open(SNAPSHOT, "w", encoding="utf-8") as f:
        json.dump({"gateway": shape(gateway_spec()), "qwen_server": shape(qwen_server_spec())}, f, indent=1,
                  sort_keys=True)
        f.write("\n")
