"""Token counts for an answer whose upstream sent none. OpenAI's usage object needs integers, and strictly
typed clients reject `"usage": {}`; llama-cpp-python's server, for one, sends no usage in a stream. The
gateway then counts with the upstream's own tokenizer, the way it counts a conversation for its context:
qwen_server's POST /v1/token/count (the prompt through the chat template, exactly), or llama-cpp-python's
POST /extras/tokenize/count (texts only: the prompt's messages without the template's few marker tokens).
With neither, the answer counts one token a streamed piece, and the prompt its texts' bytes / 4."""

COUNTERS = (("/v1/token/count", "text"), ("/extras/tokenize/count", "input"))  # qwen_server's, llama-cpp-python's


def has_counts(usage) -> bool:
    return isinstance(usage, dict) and all(isinstance(usage.get(k), int) and not isinstance(usage.get(k), bool)
                                           for k in ("prompt_tokens", "completion_tokens"))


def prompt_texts(request) -> list:
    """What the prompt holds as text: a text completion's prompt and suffix, or the messages' contents
    and tool calls."""
    done = request.completion
    if done:
        return [done.get("prompt") or "", done.get("suffix") or ""]
    out = []
    for m in request.messages:
        content = m.get("content")
        out.append(content if isinstance(content, str) else "")
        out += [c["function"]["name"] + str(c["function"]["arguments"]) for c in m.get("tool_calls") or ()]
    return out


def answer_text(pieces) -> str:
    """The answer's text as streamed: content deltas, and the tool calls' names and arguments."""
    out = []
    for ev in pieces:
        out.append(ev.get("delta") or "")
        for call in ev.get("tool_calls") or ():
            fn = call.get("function") or {}
            out.append((fn.get("name") or "") + (fn.get("arguments") or ""))
    return "".join(out)


def filled(upstream, usage, request, pieces) -> dict:
    """`usage` as the upstream sent it if it has the counts, else with prompt_tokens, completion_tokens
    and total_tokens counted here. `upstream`: count_text(text) and count_prompt(request) (an UpstreamRequest), each
    the upstream's count or None when it cannot say."""
    if has_counts(usage):
        return usage
    usage = dict(usage or {})
    text = answer_text(pieces)
    completion = upstream.count_text(text) if text else 0
    if completion is None:
        completion = sum(1 for ev in pieces if ev.get("delta") or ev.get("tool_calls"))
    prompt = upstream.count_prompt(request)
    if prompt is None:
        texts = prompt_texts(request)
        counts = [upstream.count_text(t) if t else 0 for t in texts]
        prompt = sum(counts) if None not in counts else sum(len(t.encode("utf-8")) for t in texts) // 4
    usage.update(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)
    return usage
