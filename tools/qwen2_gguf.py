"""A Hugging Face-format Qwen2 model dir -> a Qwen2-architecture GGUF file, written with the `gguf` package
the way llama.cpp's convert_hf_to_gguf.py writes Qwen2.5 (used by tools/make_models.py for the tiny Qwen2:
the llama.cpp engine is then tested on a Qwen vocabulary and chat template too)."""
import json
import re
from pathlib import Path


def _gguf_vocab(src: Path, n_vocab: int):
    """(tokens, token types, merges) of an HF byte-level BPE tokenizer, typed as llama.cpp's
    convert_hf_to_gguf types them: added `special` tokens and any `<|...|>` are CONTROL, the other added
    tokens (Qwen2.5's <tool_call>, </tool_call>) USER_DEFINED, ids past the tokenizer [PADn] UNUSED."""
    from gguf import TokenType
    tj = json.loads((src / "tokenizer.json").read_text(encoding="utf-8"))
    by_id = {i: (t, TokenType.NORMAL) for t, i in tj["model"]["vocab"].items()}
    for a in tj["added_tokens"]:
        looks_special = a["content"].startswith("<|") and a["content"].endswith("|>")
        by_id[a["id"]] = (a["content"], TokenType.CONTROL if a["special"] or looks_special else TokenType.USER_DEFINED)
    tokens, types = zip(*[by_id.get(i, (f"[PAD{i}]", TokenType.UNUSED)) for i in range(n_vocab)])
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
    return list(tokens), list(types), merges


def write_qwen2_gguf(src: Path, dest: Path, name: str) -> None:
    """A Hugging Face Qwen2 dir as a Qwen2-architecture f16 GGUF, as llama.cpp's converter writes Qwen2.5's
    (no q/k permutation for qwen2; tied embeddings: no output.weight)."""
    import gguf
    from safetensors.numpy import load_file

    cfg = json.loads((src / "config.json").read_text())
    tc = json.loads((src / "tokenizer_config.json").read_text())
    gen = json.loads((src / "generation_config.json").read_text())
    w = gguf.GGUFWriter(str(dest), "qwen2")
    w.add_name(name)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    tokens, types, merges = _gguf_vocab(src, cfg["vocab_size"])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(cfg["bos_token_id"])  # <|endoftext|>, never added (add_bos false), as in Qwen2.5
    w.add_eos_token_id(gen["eos_token_id"][0])  # <|im_end|>
    w.add_pad_token_id(cfg["pad_token_id"])
    w.add_add_bos_token(False)
    w.add_chat_template(tc["chat_template"])
    names = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
             "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down"}
    for name, t in sorted(load_file(str(next(src.glob("*.safetensors")))).items()):
        m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)", name)
        if m:
            out = f"blk.{m.group(1)}.{names[m.group(2)]}.{m.group(3)}"
        else:
            out = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                   "lm_head.weight": None}[name]
        if out:  # norms and biases in f32, matrices in f16 (llama.cpp's converter does the same)
            w.add_tensor(out, t.astype("float16" if t.ndim == 2 else "float32"))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
