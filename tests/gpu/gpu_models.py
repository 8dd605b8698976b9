"""Models and references for the GPU tests, built on the spot with no network: the tiny Qwen2 and a deeper
random Qwen2 (head_dim 128: exllamav2's Q4 cache crashes on tiny head dims), plus a transformers
fp16 reference to judge exllamav2's greedy tokens by."""
import json
import os
from pathlib import Path

from tools.make_models import TINY_QWEN_VERSION, _ensure, _fix_dir, ensure_tiny_qwen

REPO = Path(__file__).resolve().parents[2]

# models/ may be a link to a checkout that is not on this machine: build under .cache/ (git-ignored).
MODELS_DIR = Path(os.environ.get("GPU_MODELS_DIR", REPO / ".cache" / "gpu-models"))
RU_EMOJI = [{"role": "user", "content": "Привет! Напиши функцию на Python, которая переворачивает строку 🙂🚀"}]
TIE = 0.02  # logits closer than this (x the row's std) are a tie that fp16 rounding may break either way


def tiny_qwen() -> str:
    return str(ensure_tiny_qwen(MODELS_DIR))


def deep_qwen() -> str:
    """8 layers, hidden 1024, 8 heads / 2 KV heads (GQA), untied head, from tiny-qwen2's tokenizer."""
    def build(tmp, out_dir):
        import torch
        from transformers import AutoTokenizer, GenerationConfig, Qwen2Config, Qwen2ForCausalLM
        src = tiny_qwen()
        tok = AutoTokenizer.from_pretrained(src)
        cfg = json.loads((Path(src) / "config.json").read_text())
        config = Qwen2Config(vocab_size=cfg["vocab_size"], hidden_size=1024, intermediate_size=2816,
                             num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2,
                             max_position_embeddings=8192, tie_word_embeddings=False, rope_theta=1000000.0,
                             bos_token_id=cfg["bos_token_id"], eos_token_id=cfg["eos_token_id"],
                             pad_token_id=cfg["pad_token_id"])
        torch.manual_seed(1)
        model = Qwen2ForCausalLM(config).to(torch.float16).eval()
        model.generation_config = GenerationConfig.from_pretrained(src)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        _fix_dir(tmp, tok.chat_template)
    return str(_ensure(MODELS_DIR, "deep-qwen2-random", build, TINY_QWEN_VERSION)[0])  # (tiny-qwen2's tokenizer)


class Reference:
    """transformers fp16 on the GPU: greedy decoding and teacher-forced argmax checks."""

    def __init__(self, model_dir):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float16).cuda().eval()
        self.n_vocab = len(AutoTokenizer.from_pretrained(model_dir))  # exllamav2 masks the head's padding rows

    def logits(self, ids):
        with self.torch.inference_mode():
            out = self.model(self.torch.tensor([ids]).cuda()).logits[0].float()
            out[:, self.n_vocab:] = float("-inf")
        return out

    def greedy(self, prompt_ids, n):
        """Greedy ids as the transformers engine decodes them (KV cache, one token a step)."""
        torch = self.torch
        with torch.inference_mode():
            out = self.model(torch.tensor([prompt_ids]).cuda(), use_cache=True)
            past, ids = out.past_key_values, []
            for _ in range(n):
                tok = int(out.logits[0, -1, :self.n_vocab].argmax())
                ids.append(tok)
                out = self.model(torch.tensor([[tok]]).cuda(), past_key_values=past, use_cache=True)
                past = out.past_key_values
        return ids

    def judge(self, prompt_ids, new_ids):
        """Teacher-forced over prompt + new_ids: (mismatches beyond a tie, first mismatch text, agreement)."""
        logits = self.logits(prompt_ids + new_ids)[len(prompt_ids) - 1:-1]
        best = logits.argmax(-1).tolist()
        bad, first = 0, None
        for i, (want, got) in enumerate(zip(best, new_ids)):
            if want == got:
                continue
            row = logits[i, :self.n_vocab]
            gap = float(row[want] - row[got]) / float(row.std())
            first = first or f"token {i}: exllamav2 {got}, transformers {want}, gap {gap:.4f} x std"
            bad += gap > TIE
        agree = sum(a == b for a, b in zip(best, new_ids)) / max(1, len(new_ids))
        return bad, first, agree


def long_prompt(engine, n_tokens):
    words = "кэш токен поток сервер модель cache token stream server model 🙂".split()
    text = " ".join(words[i % len(words)] for i in range(n_tokens))
    msgs = [{"role": "user", "content": text}]
    while engine.count_tokens(msgs) > n_tokens:
        msgs = [{"role": "user", "content": msgs[0]["content"][:-40]}]
    return msgs


def prompts(model_dir):
    """[(label, prompt ids, real vocabulary size)]: the teacher-forced comparison's two prompts, one short
    and one over a 2048-token prefill chunk, encoded by the exllamav2 engine's own template code."""
    from engines.exllamav2_engine import ExLlamaV2Engine
    engine = ExLlamaV2Engine(model_dir, "fp16", 4096)
    engine.load_tokenizer()
    return [(label, engine.encode(msgs), len(engine.hf_tokenizer))
            for label, msgs in (("ru+emoji", RU_EMOJI), ("over one prefill chunk", long_prompt(engine, 2600)))]


def first_divergence(a, b):
    i = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
    return None if i is None else f"first divergence at token {i}: {a[i]} vs {b[i]} (equal before)"
