"""exllamav2 0.3.2's quantized KV cache, emulated on CPU, to derive the thresholds of tests/gpu's
teacher-forced comparison (test_exllamav2.py CACHE_LIMITS) from a computation anyone can rerun:

    .venv/bin/python tests/gpu/kv_emulation.py          # builds the two test models if needed, ~2 min

What it copies (exllamav2_ext/cuda/cache_q.cuh fp16_to_q / q_to_fp16, cache.cu, attn.py):
  - K and V are stored in fp16, then per 64 consecutive values of a position (lane t of a warp holds
    values 2t, 2t+1): an unscaled 32-point Hadamard transform over the lanes, for the even and the odd
    values apart (butterflies in fp16); one scale per 16 lanes (32 values) = absmax; 4-bit: q = round(w /
    absmax * 8 + 8) clamped to 0..15, 8-bit: round(w / absmax * 128 + 128) clamped to 0..255; back:
    (q - 8) * absmax / 8 (or - 128, / 128), the same transform, times 1/32. Q4 = K4 V4, Q6 = K8 V4,
    Q8 = K8 V8 (cache.cu array_fp16_to_q_kv_paged_cuda).
  - A forward call attends to the dequantized cache of earlier calls and to its own K/V unquantized
    (attn.py: get_kv_state, the new K/V written into the fp16 buffer, store_kv_state), so a prompt is
    prefilled in chunks of 2048 (config.max_input_len) and each teacher-forced token is one call.
The model is Qwen2 written out in fp32 from the safetensors (checked against transformers by
tests/test_kv_emulation.py); each quantized run is compared with the same run unquantized."""
import json
import math
import sys
from pathlib import Path

import torch

CHUNK = 2048  # exllamav2's default config.max_input_len: model.forward's prefill chunk
N_NEW = 64  # teacher-forced positions after each prompt (tests/gpu uses the same)
BITS = {"fp16": None, "q8": (8, 8), "q6": (8, 4), "q4": (4, 4)}


def hadamard32(w):
    """Unnormalised Walsh-Hadamard transform over dim -2 (the 32 lanes), fp16 butterflies as in the kernel."""
    shape = w.shape
    for i in (1, 2, 4, 8, 16):
        v = w.reshape(*shape[:-2], 32 // (2 * i), 2, i, shape[-1])
        a, b = v[..., 0, :, :], v[..., 1, :, :]
        w = torch.stack((a + b, a - b), dim=-3).reshape(shape)
    return w


def quant_dequant(x, bits):
    """x (..., dim) with dim % 64 == 0 -> what exllamav2's Q cache gives back for it (fp32)."""
    half, top = (8.0, 15) if bits == 4 else (128.0, 255)
    shape = x.shape
    w = x.to(torch.float16).reshape(*shape[:-1], -1, 32, 2)  # (..., 64-value blocks, lane, half2 slot)
    w = hadamard32(w)
    g = w.reshape(*w.shape[:-3], w.shape[-3], 2, 16, 2)  # scale groups: lanes 0-15 and 16-31
    absmax = g.abs().amax(dim=(-2, -1), keepdim=True)
    n = (g / absmax).float() * half + half  # __h2div, then __hfma2 (one rounding, to fp16)
    n = torch.nan_to_num(n.to(torch.float16).float(), nan=0.0)  # an all-zero group: 0/0, which __half2int_rn makes 0
    q = torch.clamp(torch.round(n), 0, top)  # __half2int_rn: to nearest, ties to even
    scale = (absmax * torch.tensor(1.0 / half, dtype=torch.float16)).to(torch.float16)
    d = ((q - half).to(torch.float16) * scale).reshape(w.shape)
    d = hadamard32(d) * torch.tensor(1.0 / 32, dtype=torch.float16)
    return d.reshape(shape).float()


class Qwen2:
    """Qwen2ForCausalLM's forward in fp32 with an emulated exllamav2 cache (one sequence)."""

    def __init__(self, model_dir):
        from safetensors.torch import load_file
        self.cfg = json.loads((Path(model_dir) / "config.json").read_text())
        w = {k: v.float() for k, v in load_file(str(Path(model_dir) / "model.safetensors")).items()}
        self.w, self.head = w, w.get("lm_head.weight", w["model.embed_tokens.weight"])
        c = self.cfg
        self.n_heads, self.n_kv = c["num_attention_heads"], c["num_key_value_heads"]
        self.d = c["hidden_size"] // self.n_heads
        theta = c.get("rope_theta") or c["rope_parameters"]["rope_theta"]
        self.inv_freq = 1.0 / theta ** (torch.arange(0, self.d, 2).float() / self.d)

    def _norm(self, x, name):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.cfg["rms_norm_eps"]) * self.w[name]

    def _rope(self, x, pos):
        f = torch.outer(pos.float(), self.inv_freq)
        cos, sin = torch.cat((f, f), -1).cos()[:, None], torch.cat((f, f), -1).sin()[:, None]
        x1, x2 = x[..., :self.d // 2], x[..., self.d // 2:]
        return x * cos + torch.cat((-x2, x1), -1) * sin

    def _attn(self, i, x, pos, cache, bits):
        p = f"model.layers.{i}.self_attn."
        lin = lambda n: x @ self.w[p + n + ".weight"].T + self.w[p + n + ".bias"]  # noqa: E731
        q = self._rope(lin("q_proj").view(len(pos), self.n_heads, self.d), pos)
        k = self._rope(lin("k_proj").view(len(pos), self.n_kv, self.d), pos).half().float()  # fp16 cache
        v = lin("v_proj").view(len(pos), self.n_kv, self.d).half().float()
        ks, vs = cache[i]
        keys, values = torch.cat((ks, k)), torch.cat((vs, v))  # earlier calls dequantized, this one exact
        if bits:
            k, v = quant_dequant(k, bits[0]), quant_dequant(v, bits[1])
        cache[i] = (torch.cat((ks, k)), torch.cat((vs, v)))
        rep = self.n_heads // self.n_kv
        keys, values = keys.repeat_interleave(rep, 1), values.repeat_interleave(rep, 1)
        s = torch.einsum("qhd,khd->hqk", q, keys) / math.sqrt(self.d)
        past = len(keys) - len(pos)
        mask = torch.ones(len(pos), len(keys), dtype=torch.bool).tril(past)
        a = torch.einsum("hqk,khd->qhd", s.masked_fill(~mask, float("-inf")).softmax(-1), values)
        return a.reshape(len(pos), -1) @ self.w[p + "o_proj.weight"].T

    def forward(self, ids, cache, bits):
        """Logits (len(ids), vocab) of one forward call after the len(cache) tokens already cached."""
        past = len(cache[0][0])
        pos = torch.arange(past, past + len(ids))
        h = self.w["model.embed_tokens.weight"][torch.tensor(ids)]
        for i in range(self.cfg["num_hidden_layers"]):
            p = f"model.layers.{i}."
            h = h + self._attn(i, self._norm(h, p + "input_layernorm.weight"), pos, cache, bits)
            x = self._norm(h, p + "post_attention_layernorm.weight")
            gate, up = (x @ self.w[p + f"mlp.{n}_proj.weight"].T for n in ("gate", "up"))
            h = h + (torch.nn.functional.silu(gate) * up) @ self.w[p + "mlp.down_proj.weight"].T
        return self._norm(h, "model.norm.weight") @ self.head.T

    def empty_cache(self):
        z = torch.zeros(0, self.n_kv, self.d)
        return [(z, z) for _ in range(self.cfg["num_hidden_layers"])]

    @torch.inference_mode()
    def teacher_forced(self, ids, n_prompt, bits, chunk=CHUNK):
        """Logits rows predicting ids[n_prompt:], as exllamav2's model.forward with a cache gives them:
        the prompt less its last token prefilled in chunks, then one call per token."""
        cache = self.empty_cache()
        for a in range(0, n_prompt - 1, chunk):
            self.forward(ids[a:min(a + chunk, n_prompt - 1)], cache, bits)
        return torch.stack([self.forward(ids[p:p + 1], cache, bits)[0] for p in range(n_prompt - 1, len(ids) - 1)])

    @torch.inference_mode()
    def greedy(self, prompt, n, n_vocab):
        cache, ids = self.empty_cache(), list(prompt)
        logits = self.forward(ids, cache, None)[-1]
        for _ in range(n):
            ids.append(int(logits[:n_vocab].argmax()))
            logits = self.forward(ids[-1:], cache, None)[-1]
        return ids[len(prompt):]


def compare(rows, want, n_vocab):
    """Logits rows against the reference's over the real vocabulary: top-1 agreement, mean and min cosine,
    and the largest gap (in the reference row's std) between the reference's top-1 and a differing top-1."""
    rows, want = rows[:, :n_vocab], want[:, :n_vocab]
    best, top = want.argmax(-1), rows.argmax(-1)
    gaps = (want.gather(1, best[:, None]) - want.gather(1, top[:, None]))[:, 0] / want.std(-1)
    cos = torch.nn.functional.cosine_similarity(rows, want, dim=-1)
    return {"top1_agreement": round((best == top).float().mean().item(), 4), "cosine_mean": round(cos.mean().item(), 6),
            "cosine_min": round(cos.min().item(), 6), "max_mismatch_gap": round(gaps.max().item(), 4)}


def main(argv):
    """argv: [model names] [prompt labels' first words] to run a part (e.g. `deep over`), everything by default."""
    here = Path(__file__).resolve().parent
    sys.path[:0] = [str(here.parents[1]), str(here)]  # the repository (engines, tools) and tests/gpu
    from gpu_models import deep_qwen, prompts, tiny_qwen
    torch.manual_seed(0)
    for name, build in (("tiny", tiny_qwen), ("deep", deep_qwen)):
        if argv[:1] and name not in argv[0].split(","):
            continue
        model_dir = build()
        model = Qwen2(model_dir)
        for label, prompt, n_vocab in prompts(model_dir):
            if argv[1:] and label.split()[0] not in argv[1].split(","):
                continue
            ids = prompt + model.greedy(prompt, N_NEW, n_vocab)
            exact = model.teacher_forced(ids, len(prompt), None)
            for cache, bits in BITS.items():
                got = exact if bits is None else model.teacher_forced(ids, len(prompt), bits)
                print(json.dumps({"model": name, "prompt": label, "prompt_tokens": len(prompt), "cache": cache,
                                  **compare(got, exact, n_vocab)}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
