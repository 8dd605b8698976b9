"""qwen_server's `<tool_call>` parsing (qwen_api/tool_calls.py): each block is parsed once into a ToolCall,
and the streamed deltas and the whole answer are built from the same events, so a client gets the same
text and calls either way, wherever the engine's chunks were cut. The wire shapes are OpenAI's: a whole
answer's message.tool_calls (no index), streamed a delta with index, id, type and name (arguments "")
then one with the arguments, finish_reason "tool_calls". The last test takes its chunks from a real
engine's text handling (exllamav2's, on tests/exl_standin.py) with the tiny Qwen2's `<tool_call>` token."""
import re

import pytest

from common.openai_format import completion
from engines.base import Chunk
from qwen_api.tool_calls import collect, deltas
from test_exllamav2_engine import make_engine, run, user

WEATHER = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "°C"}}\n</tool_call>'
CLOCK = '<tool_call>\n{"name": "get_time", "arguments": "{\\"tz\\": \\"Europe/Paris\\"}"}\n</tool_call>'
CALL_W = ("get_weather", '{"city": "Paris", "unit": "°C"}')
CALL_C = ("get_time", '{"tz": "Europe/Paris"}')  # arguments sent as a string stay that string

# (answer text, tools on, finish, expected content of the whole answer, expected calls, expected finish)
CASES = {
    "text before and after two calls": ("Let me check. " + WEATHER + "\n" + CLOCK + "\nDone, both asked.", True,
                                        "stop", "Let me check. \nDone, both asked.", [CALL_W, CALL_C], "tool_calls"),
    "one call alone": ("\n" + WEATHER + "\n", True, "stop", None, [CALL_W], "tool_calls"),
    "a block that is no JSON is text": ("A <tool_call>not json</tool_call> B", True, "stop",
                                        "A <tool_call>not json</tool_call> B", [], "stop"),
    "a block without a name is text": ('<tool_call>{"arguments": {}}</tool_call>', True, "stop",
                                       '<tool_call>{"arguments": {}}</tool_call>', [], "stop"),
    "a malformed block between calls is text": (WEATHER + "<tool_call>[1]</tool_call>" + CLOCK, True, "stop",
                                                "<tool_call>[1]</tool_call>", [CALL_W, CALL_C], "tool_calls"),
    "an unclosed block at the end is text": ("Hm <tool_call>\n{\"name\": \"get_weather\"", True, "length",
                                             "Hm <tool_call>\n{\"name\": \"get_weather\"", [], "length"),
    "a call cut by max_tokens keeps finish length": (WEATHER + " and", True, "length", "and", [CALL_W], "length"),
    "a partial tag at the end is text": ("Almost <tool_ca", True, "stop", "Almost <tool_ca", [], "stop"),
    "tools off: a block stays text": (WEATHER, False, "stop", WEATHER, [], "stop"),
}


def cut(text, sizes):
    """text in pieces of the given sizes (cycled), each a Chunk with one logprob entry naming it."""
    out, at, k = [], 0, 0
    while at < len(text):
        piece = text[at:at + sizes[k % len(sizes)]]
        out.append(Chunk(text=piece, logprobs=[{"token": piece, "logprob": -0.5, "bytes": [], "top_logprobs": []}]))
        at, k = at + len(piece), k + 1
    return out


def with_finish(chunks, finish):
    usage = {"prompt_tokens": 3, "completion_tokens": len(chunks)}
    return chunks + [Chunk(finish_reason=finish, usage=usage)]


def whole(chunks, tools_on):
    """What a non-streamed client gets: the message, the logprobs, finish_reason."""
    content, calls, lps, finish, usage = collect(iter(chunks), "auto" if tools_on else None)
    body = completion("chatcmpl-x", "m", content, finish, usage, lps, calls)
    return body["choices"][0]["message"], body["choices"][0]["logprobs"]["content"], finish


def streamed(chunks, tools_on):
    """What a streaming client puts together from the deltas (as the openai SDK does), checking each
    delta's shape on the way."""
    text, calls, lps, finishes = [], {}, [], []
    for delta, logprobs, finish, usage in deltas(iter(chunks), "auto" if tools_on else None):
        lps += logprobs or []
        if finish:
            finishes.append(finish)
            assert delta is None and usage == chunks[-1].usage  # the last chunk's, passed on
            continue
        if "content" in delta:
            text.append(delta["content"])
        for tc in delta.get("tool_calls", []):
            if tc["index"] not in calls:  # the first delta of a call: id, type and name, no arguments yet
                assert set(tc) == {"index", "id", "type", "function"} and tc["type"] == "function", tc
                assert tc["function"]["arguments"] == "" and tc["index"] == len(calls), tc
                calls[tc["index"]] = dict(tc, function=dict(tc["function"]))
            else:
                assert tc == {"index": tc["index"], "function": {"arguments": tc["function"]["arguments"]}}, tc
                calls[tc["index"]]["function"]["arguments"] += tc["function"]["arguments"]
    assert len(finishes) == 1
    return "".join(text), [calls[i] for i in sorted(calls)], lps, finishes[0]


def check_calls(calls, expected):
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in calls] == expected
    assert all(re.fullmatch(r"call_[0-9a-f]{24}", c["id"]) and c["type"] == "function" for c in calls), calls


@pytest.mark.parametrize("sizes", [[10 ** 6], [1], [2], [3, 7], [5, 1, 11]], ids=str)
@pytest.mark.parametrize("case", CASES)
def test_streamed_and_whole_answers_carry_the_same_text_and_calls(case, sizes):
    text, tools_on, finish, content, expected, finish_out = CASES[case]
    chunks = with_finish(cut(text, sizes), finish)
    message, lps, finish_whole = whole(chunks, tools_on)
    s_text, s_calls, s_lps, s_finish = streamed(chunks, tools_on)

    assert finish_whole == s_finish == finish_out
    check_calls(s_calls, expected)
    check_calls(message.get("tool_calls") or [], expected)
    if expected:
        assert set(message) == {"role", "content", "tool_calls"}
        assert all(set(c) == {"id", "type", "function"} for c in message["tool_calls"])  # no index in a message
        assert message["content"] == content and (s_text.strip() or None) == content
    else:
        assert message == {"role": "assistant", "content": content} and s_text == content
    piece_lps = [e for c in chunks for e in c.logprobs or []]
    assert lps == s_lps == piece_lps  # no token's logprob lost to the held-back text, none doubled


@pytest.mark.parametrize("at", range(1, len(WEATHER)))
def test_any_cut_through_a_call_gives_the_same_answer(at):
    """Every place the engine might cut `text <tool_call>…</tool_call> text` into two chunks."""
    text = "Hi " + WEATHER + " bye"
    chunks = with_finish([Chunk(text=text[:at + 3]), Chunk(text=text[at + 3:])], "stop")
    message, _, finish = whole(chunks, True)
    s_text, s_calls, _, s_finish = streamed(chunks, True)
    assert finish == s_finish == "tool_calls" and message["content"] == s_text == "Hi  bye"
    check_calls(message["tool_calls"], [CALL_W])
    check_calls(s_calls, [CALL_W])


def test_an_engines_chunks_with_the_added_tool_call_token(tiny_qwen_dir):
    """The exllamav2 engine's own text handling (one chunk per token or so) on the tiny Qwen2, where
    `<tool_call>` and `</tool_call>` are one added token each, as in Qwen2.5."""
    answer = "Checking. " + WEATHER + "\n" + CLOCK
    engine, _ = make_engine(tiny_qwen_dir, {"weather?": answer}, max_seq_len=1024)
    chunks = run(engine, user("weather?"), max_tokens=800)
    assert len(chunks) > 10 and "".join(c.text for c in chunks) == answer
    message, _, finish = whole(chunks, True)
    s_text, s_calls, _, s_finish = streamed(chunks, True)
    assert finish == s_finish == "tool_calls"
    assert message["content"] == s_text.strip() == "Checking."
    check_calls(message["tool_calls"], [CALL_W, CALL_C])
    check_calls(s_calls, [CALL_W, CALL_C])
