"""The gateway in front of a Qwen upstream that is not qwen_server: llama-cpp-python's own OpenAI server
(`python -m llama_cpp.server`) on SmolLM2's GGUF. It streams no usage, even when asked for it; the gateway
counts the tokens itself (providers/usage_count.py) so that `stream_options.include_usage` ends with
integers, as OpenAI's schema requires, never `"usage": {}`."""
import pytest

from conftest import start_gateway
from helpers import PYTHON, free_port, http, openai_client, start_process, stop_process


@pytest.fixture(scope="module")
def llama_cpp_server(smollm2_gguf):
    port = free_port()
    proc = start_process([PYTHON, "-m", "llama_cpp.server", "--model", smollm2_gguf, "--host", "127.0.0.1",
                          "--port", port, "--n_ctx", "2048", "--n_threads", "1"],
                         env={"OMP_NUM_THREADS": "1"}, port=port, ready_path="/v1/models", timeout=120)
    yield proc
    stop_process(proc)


@pytest.fixture(scope="module")
def gateway(llama_cpp_server, fake_gigachat, tmp_path_factory):
    proc = start_gateway(llama_cpp_server.base_url, fake_gigachat, tmp_path_factory.mktemp("gw-foreign"))
    yield proc
    stop_process(proc)


client = openai_client  # (tests/helpers.py)


def integer_usage(usage, max_completion):
    assert type(usage.prompt_tokens) is int and type(usage.completion_tokens) is int, usage
    assert usage.prompt_tokens > 0 and 0 < usage.completion_tokens <= max_completion + 1
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_the_upstream_itself_streams_no_usage(llama_cpp_server):
    """What makes the gateway count: asked for usage, llama-cpp-python's stream has none."""
    chunks = list(client(llama_cpp_server).chat.completions.create(
        model="x", messages=[{"role": "user", "content": "Hi"}], max_tokens=4, stream=True,
        stream_options={"include_usage": True}))
    assert all(c.usage is None for c in chunks)


def test_streamed_chat_usage_is_counted_by_the_gateway(gateway, llama_cpp_server):
    text, usage = "", None
    for c in client(gateway).chat.completions.create(
            model="qwen", messages=[{"role": "user", "content": "Как дела? Ответь коротко."}], max_tokens=12,
            temperature=0.0, stream=True, stream_options={"include_usage": True}):
        if c.choices:
            text += c.choices[0].delta.content or ""
        else:
            usage = c.usage
    assert text
    integer_usage(usage, 12)
    # The count is the upstream's tokenizer's: the answer's text, tokenized again, gives the same number.
    status, _, counted = http("POST", llama_cpp_server.base_url + "/extras/tokenize/count", {"input": text})
    assert status == 200 and counted["count"] == usage.completion_tokens


def test_streamed_text_completion_usage_is_counted_by_the_gateway(gateway):
    usage = None
    for c in client(gateway).completions.create(model="qwen", prompt="The capital of France is", max_tokens=6,
                                                temperature=0.0, stream=True, stream_options={"include_usage": True}):
        usage = c.usage or usage
    integer_usage(usage, 6)


def test_whole_answer_keeps_the_upstreams_own_usage(gateway, llama_cpp_server):
    """Not streamed, llama-cpp-python counts (its template included): that is passed on unchanged."""
    msgs = [{"role": "user", "content": "Hi"}]
    direct = client(llama_cpp_server).chat.completions.create(model="x", messages=msgs, max_tokens=3, temperature=0.0)
    via = client(gateway).chat.completions.create(model="qwen", messages=msgs, max_tokens=3, temperature=0.0)
    assert via.usage.prompt_tokens == direct.usage.prompt_tokens and via.usage.completion_tokens == 3
