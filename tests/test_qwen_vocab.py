"""The test models mirror what matters of the real tokenizers (tests/MODELS.md), and constrained decoding
gets its vocabulary ready at load time: the tiny Qwen2 carries Qwen2.5's added tokens with the same
`special` flags, its GGUF types them as llama.cpp's converter types Qwen2.5's, both engines tokenize a
tool conversation alike, and /status says when constrained decoding is ready."""
import json
import threading
import time
from pathlib import Path

import pytest

from engines.constrained import Vocab
from helpers import http
from tools.make_models import QWEN_ADDED

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}

# Qwen2.5's added tokens start right after its BPE vocabulary (id 151643 there); the flags are its own.
TOOL_CONVERSATION = [
    {"role": "user", "content": "Погода в Париже?"},
    {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {
        "name": "get_weather", "arguments": {"city": "Paris"}}}]},
    {"role": "tool", "tool_call_id": "c1", "content": "+21, солнце"}]


def test_tiny_qwen_has_qwen25_added_tokens_with_their_flags(tiny_qwen_dir):
    tj = json.loads((Path(tiny_qwen_dir) / "tokenizer.json").read_text(encoding="utf-8"))
    added = [(a["content"], a["special"]) for a in tj["added_tokens"]]
    assert added == QWEN_ADDED
    assert dict(added)["<tool_call>"] is False and dict(added)["<|im_end|>"] is True
    ids = [a["id"] for a in tj["added_tokens"]]
    assert ids == list(range(len(tj["model"]["vocab"]), len(tj["model"]["vocab"]) + len(ids)))  # right after BPE


def test_tiny_qwen_gguf_types_its_vocabulary_as_llamacpps_converter_does(tiny_qwen_gguf):
    from gguf import GGUFReader, TokenType
    r = GGUFReader(tiny_qwen_gguf)
    field = r.fields["tokenizer.ggml.tokens"]
    tokens = [bytes(field.parts[i]).decode("utf-8") for i in field.data]
    types = r.fields["tokenizer.ggml.token_type"]
    kind = {tokens[n]: TokenType(int(types.parts[i][0])) for n, i in enumerate(types.data)}
    assert kind["<tool_call>"] == kind["</tool_call>"] == TokenType.USER_DEFINED  # rendered as text, like Qwen's
    assert kind["<|im_end|>"] == kind["<|fim_prefix|>"] == TokenType.CONTROL  # <|...|>: control, as converted
    assert bytes(r.fields["general.architecture"].parts[-1]).decode() == "qwen2"


def test_both_engines_tokenize_a_tool_conversation_alike(tiny_qwen_dir, tiny_qwen_gguf):
    """The same Qwen2.5 template and vocabulary through transformers' tokenizer and llama.cpp's GGUF."""
    from engines import create_engine
    hf = create_engine("transformers", tiny_qwen_dir, "q4", 2048)
    hf.load_tokenizer()
    ll = create_engine("llamacpp", tiny_qwen_gguf, "q4", 2048, threads=1)
    ll.load()
    ids = hf.encode(TOOL_CONVERSATION, [WEATHER])
    assert ids == ll.encode(TOOL_CONVERSATION, [WEATHER])
    assert hf.tool_tag_ids() == ll.tool_tag_ids() and len(hf.tool_tag_ids()) == 2
    assert hf.tool_tag_ids()["<tool_call>"] in ids  # the call in the history is written with the added token
    assert hf.fim_ids() == ll.fim_ids() is not None


@pytest.mark.parametrize("server", ["qwen_tiny_2k", "qwen_tiny_llama"])
def test_status_says_when_constrained_decoding_is_ready(request, server):
    proc = request.getfixturevalue(server)
    deadline = time.monotonic() + 60
    while True:
        st = http("GET", proc.base_url + "/status")[2]
        if st["constrained_decoding"] != "preparing" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert st["constrained_decoding"] == "ready", st
    assert isinstance(st["constrained_vocab_seconds"], float) and st["constrained_vocab_seconds"] >= 0


def test_vocab_is_read_in_the_background_and_a_request_waits_for_it():
    gate = threading.Event()
    vocab = Vocab(lambda: gate.wait(10) and "tokenizer")
    assert vocab.state() == "not started"
    vocab.start()
    assert vocab.state() == "preparing"
    got = []
    waiter = threading.Thread(target=lambda: got.append(vocab.get()))
    waiter.start()
    time.sleep(0.1)
    assert not got  # a request that needs it waits...
    gate.set()
    waiter.join(5)
    assert got == ["tokenizer"] and vocab.state() == "ready"  # ...and has it once it is read


def test_a_vocab_that_cannot_be_read_fails_each_request_that_needs_it_with_the_reason():
    def broken():
        raise ValueError("no tokenizer.json")
    vocab = Vocab(broken)
    vocab.start()
    with pytest.raises(RuntimeError, match="no tokenizer.json"):
        vocab.get()
    assert vocab.state().startswith("failed: ValueError: no tokenizer.json")


def test_a_model_built_by_an_older_recipe_is_built_again(tmp_path):
    """Checkouts that hold the tiny Qwen2 of before (no added tokens) get the new one, not a stale cache."""
    from tools.make_models import _ensure

    def build(tmp, _out):
        tmp.mkdir()
        (tmp / "made").write_text("x")
    path, built = _ensure(tmp_path, "m", build)
    assert built and (path / "made").exists() and _ensure(tmp_path, "m", build) == (path, False)
    (path / ".complete").write_text("2026-01-01T00:00:00\n")  # a marker written before versions: version 1
    assert _ensure(tmp_path, "m", build, 1) == (path, False)
    assert _ensure(tmp_path, "m", build, 2) == (path, True) and _ensure(tmp_path, "m", build, 2) == (path, False)
