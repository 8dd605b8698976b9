"""qwen_server's /v1/completions (OpenAI's legacy text completions, what editor plugins call): a plain
prompt continued, or fill-in-the-middle when `suffix` is sent, written with the model's own FIM tokens
(`<|fim_prefix|>{prompt}<|fim_suffix|>{suffix}<|fim_middle|>`, Qwen2.5-Coder's). Streamed or not."""
from common.openai_completions import bad_param, text_completion  # (the wire side: common/openai_completions.py)


def prompt_ids(engine, prompt, suffix) -> list:
    if suffix is None:
        if not prompt:
            raise bad_param("prompt", "'prompt' is empty: send the text to continue.")
        return engine.tokenize(prompt)
    fim = engine.fim_ids()
    if fim is None:
        raise bad_param("suffix", f"{engine.model_name} has no fill-in-the-middle tokens (<|fim_prefix|>, "
                             f"<|fim_suffix|>, <|fim_middle|>): leave 'suffix' out, or serve a model that has "
                             f"them (Qwen2.5-Coder).", "fim_not_supported")
    pre, suf, mid = fim
    return [pre] + engine.tokenize(prompt) + [suf] + engine.tokenize(suffix) + [mid]


def legacy_logprobs(entries, offset0=0):
    """Chat-style entries -> the completions endpoint's {tokens, token_logprobs, top_logprobs, text_offset}."""
    out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    at = offset0
    for e in entries:
        out["tokens"].append(e["token"])
        out["token_logprobs"].append(e["logprob"])
        out["top_logprobs"].append({t["token"]: t["logprob"] for t in e["top_logprobs"]})
        out["text_offset"].append(at)
        at += len(e["token"])
    return out


def collect(chunks):
    """(text, logprob entries, finish_reason, usage) of a whole answer."""
    parts, entries, last = [], [], None
    for last in chunks:
        parts.append(last.text)
        entries.extend(last.logprobs or [])
    return "".join(parts), entries, last.finish_reason, last.usage or {}


def stream_events(chunks, cid, model, want_logprobs):
    """Engine chunks -> (text_completion frame, usage of the last one or None)."""
    offset = 0
    for c in chunks:
        lp = legacy_logprobs(c.logprobs or [], offset) if want_logprobs else None
        if c.text or (lp and lp["tokens"]):
            yield text_completion(cid, model, c.text, None, lp), None
            offset += len(c.text)
        if c.finish_reason:
            yield text_completion(cid, model, "", c.finish_reason), c.usage or {}
