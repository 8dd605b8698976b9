"""Property-based fuzzing of both HTTP APIs from their own OpenAPI documents (GET /openapi.json),
with schemathesis, against real subprocess servers: qwen_server.py on the tiny Qwen2 model and the
gateway in front of it and the fake GigaChat.

Per operation: the coverage phase (boundary and invalid values of every field) and a capped
hypothesis fuzzing phase, valid and invalid data both. Checks on every answer:
  - no 5xx, ever;
  - every 4xx is the JSON error shape {"error": {"message": str, "type": str, "code": str|null}};
  - status code, content type, headers and body are the ones the document declares (so the
    document stays true to the code);
  - data valid per the document is not refused with a 4xx other than the ones it can legitimately
    get (404 for a random session id, ...; see refused_by_a_rule_outside_the_schema);
  - methods the document does not list answer 405 with an Allow header.
Generation cost is bounded: the gateway's default max_tokens is small (QWEN_MAX_TOKENS) and the
test caps any max_tokens it sends, so no example waits for a long generation. The run is seeded
(FUZZ_SEED) so CI is reproducible; FUZZ_SEED=<n> FUZZ_MAX_EXAMPLES=100 explores further."""
import os

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import positive_data_acceptance

from conftest import start_gateway
from helpers import stop_process

# schemathesis's pytest loader (4.x) renames the running item through `item._nodeid`, an attribute
# pytest 9.1+ no longer has (it keeps a NodeId in `_id`): read the id, ignore the rename. Each
# operation still reports as its own subtest, labelled "METHOD /path".
if not hasattr(pytest.Function, "_nodeid"):
    pytest.Function._nodeid = property(lambda self: self.nodeid, lambda self, value: None)

MAX_EXAMPLES = int(os.environ.get("FUZZ_MAX_EXAMPLES", "30"))
TOKEN_CAP = 8  # the most tokens any fuzzed request may ask the tiny model for
MAX_TOKENS = 1 << 20  # openai_format.PARAM_RANGES["max_tokens"][2]


def fuzz_config():
    return SchemathesisConfig.from_dict({
        "seed": int(os.environ.get("FUZZ_SEED", "20240501")),  # reproducible in CI; change it to explore
        "generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "database": "none"},
        "phases": {"examples": {"enabled": False}, "stateful": {"enabled": False},
                   "coverage": {"enabled": True}, "fuzzing": {"enabled": True}},
        "request-timeout": 60,
        "output": {"sanitization": {"enabled": False}},
        "checks": {
            "not_a_server_error": {"enabled": True},
            "status_code_conformance": {"enabled": True},
            "content_type_conformance": {"enabled": True},
            "response_headers_conformance": {"enabled": True},
            "response_schema_conformance": {"enabled": True},
            "positive_data_acceptance": {"enabled": True},
            # Invalid data is generated and sent all the same (mode "all"), and must get a JSON 4xx, never
            # a 5xx (the checks above); this check would also demand a 4xx for every deviation from the
            # document, but the servers are lenient on purpose in ways it cannot state: an empty query
            # value means "default" (?top_k=), unknown fields are ignored, max_completion_tokens is
            # unused when max_tokens is given, and GET q is documented shorter than the server takes.
            "negative_data_rejection": {"enabled": False},
            "unsupported_method": {"enabled": True},
            # The API key is optional (CHAT_API_KEY unset here): nothing to ignore.
            "ignored_auth": {"enabled": False},
            # Flask matches DELETE /history/sessions (and /export) as DELETE /history/{sid}, so their
            # Allow header lists DELETE; the answer is a proper 404 unknown_session.
            "allow_header_conformance": {"enabled": False},
        },
    })


@schemathesis.check
def json_error_shape(ctx, response, case):
    """Every 4xx/5xx answer is {"error": {"message": str, "type": str, "code": str|null}}."""
    if response.status_code < 400:
        return None
    try:
        body = response.json()
    except ValueError:
        raise AssertionError(f"{response.status_code} without a JSON body: {response.text[:200]!r}")
    err = body.get("error") if isinstance(body, dict) else None
    assert isinstance(err, dict), f"{response.status_code} body is not {{'error': {{...}}}}: {body!r:.200}"
    assert isinstance(err.get("message"), str) and err["message"], f"no error.message: {body!r:.200}"
    assert isinstance(err.get("type"), str) and err["type"], f"no error.type: {body!r:.200}"
    assert "code" in err and (err["code"] is None or isinstance(err["code"], str)), f"bad error.code: {body!r:.200}"
    return True


def cap_generation(case):
    """Keep each example cheap: at most TOKEN_CAP tokens of generation. Only valid values are lowered,
    and to valid values, so a valid example stays valid and an invalid one stays invalid."""
    for container in (case.query, case.body):
        if not isinstance(container, dict):
            continue
        for key in ("max_tokens", "max_completion_tokens"):
            value = container.get(key)
            if isinstance(value, bool):
                continue
            if isinstance(value, str) and value.isascii() and value.isdigit():  # a query string value
                value = int(value)
            if isinstance(value, int) and TOKEN_CAP < value <= MAX_TOKENS:
                container[key] = TOKEN_CAP if isinstance(container[key], int) else str(TOKEN_CAP)
        if container is case.body and "max_tokens" not in container and "max_completion_tokens" not in container:
            container["max_tokens"] = TOKEN_CAP


def refused_by_a_rule_outside_the_schema(response):
    """400s for data valid per the document, from rules the document cannot state: the prompt plus
    max_tokens must fit the model's context (512 tokens here); the last message must not be an
    empty assistant message."""
    if response.status_code != 400:
        return False
    try:
        err = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return False  # not the JSON error shape: json_error_shape reports it
    # Cross-field rules of qwen_server: tool_choice needs tools, top_logprobs needs logprobs, a JSON schema
    # (response_format, tool parameters) must compile to a grammar, tool_calls arguments must be JSON.
    return (err["code"] in ("context_length_exceeded", "secret_in_request")  # (a secret: never to GigaChat)
            or "empty assistant message" in err["message"]
            or err.get("param") in ("tools", "tool_choice", "response_format", "top_logprobs")
            or err.get("param") == "logprobs" and "GigaChat" in err["message"]  # (the gateway: by model)
            or "tool_calls" in err["message"])


def fuzz(case):
    cap_generation(case)
    response = case.call(timeout=60)
    excluded = [positive_data_acceptance] if refused_by_a_rule_outside_the_schema(response) else []
    case.validate_response(response, additional_checks=[json_error_shape], excluded_checks=excluded)


FUZZ_SETTINGS = settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
                         suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def fuzzed_gateway(qwen_tiny, fake_gigachat, tmp_path_factory):
    # QWEN_MAX_TOKENS: the default for /qwen without max_tokens; GIGACHAT_MAX_CONCURRENCY: nothing queues.
    proc = start_gateway(qwen_tiny.base_url, fake_gigachat, tmp_path_factory.mktemp("fuzz"),
                         QWEN_MAX_TOKENS=str(TOKEN_CAP), GIGACHAT_MAX_CONCURRENCY="4")
    yield proc
    stop_process(proc)


@pytest.fixture(scope="module")
def gateway_schema(fuzzed_gateway):
    return schemathesis.openapi.from_url(fuzzed_gateway.base_url + "/openapi.json", config=fuzz_config())


@pytest.fixture(scope="module")
def qwen_schema(qwen_tiny):
    return schemathesis.openapi.from_url(qwen_tiny.base_url + "/openapi.json", config=fuzz_config())


gateway_api = schemathesis.pytest.from_fixture("gateway_schema")
qwen_api = schemathesis.pytest.from_fixture("qwen_schema")


@gateway_api.parametrize()
@FUZZ_SETTINGS
def test_gateway_api(case):
    fuzz(case)


@qwen_api.parametrize()
@FUZZ_SETTINGS
def test_qwen_server_api(case):
    fuzz(case)
