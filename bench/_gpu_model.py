"""The bench model: random FP16 weights in exactly Qwen2.5-Coder-7B-Instruct's shapes (hidden 3584, 28 layers,
28 heads, 4 KV heads, intermediate 18944, vocab 152064, untied head, QKV bias), safetensors with a top-level
rope_theta (exllamav2 reads only that) and the tiny-qwen2 tokenizer and chat template, built once into
.cache/bench/ (~15 GB at 28 layers). Speed does not depend on the weights' values; so that every run
decodes exactly the tokens asked for, the lm_head rows of ids the tokenizer lacks and of the stop tokens
are zero."""
import json
import os
import shutil
import sys
import time

CACHE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".cache", "bench")
SHAPE = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
             num_key_value_heads=4, vocab_size=152064, max_position_embeddings=32768, rope_theta=1000000.0,
             rms_norm_eps=1e-6, tie_word_embeddings=False)
MARKER = ".complete"
DEVICE = "cuda"  # where the random weights are drawn (fast); a CPU dry run of the layout sets "cpu"




def log(*a):
    print(*a, file=sys.stderr, flush=True)


# -- the model ---------------------------------------------------------------------------------

def tensor_shapes(shape=None):
    """(name, shape) of every tensor of a Qwen2ForCausalLM checkpoint, in Hugging Face naming."""
    shape = shape or SHAPE
    h, i, v = shape["hidden_size"], shape["intermediate_size"], shape["vocab_size"]
    head_dim = h // shape["num_attention_heads"]
    kv = shape["num_key_value_heads"] * head_dim
    yield "model.embed_tokens.weight", (v, h)
    for n in range(shape["num_hidden_layers"]):
        p = f"model.layers.{n}."
        yield p + "input_layernorm.weight", (h,)
        yield p + "post_attention_layernorm.weight", (h,)
        yield p + "self_attn.q_proj.weight", (h, h)
        yield p + "self_attn.q_proj.bias", (h,)
        yield p + "self_attn.k_proj.weight", (kv, h)
        yield p + "self_attn.k_proj.bias", (kv,)
        yield p + "self_attn.v_proj.weight", (kv, h)
        yield p + "self_attn.v_proj.bias", (kv,)
        yield p + "self_attn.o_proj.weight", (h, h)
        yield p + "mlp.gate_proj.weight", (i, h)
        yield p + "mlp.up_proj.weight", (i, h)
        yield p + "mlp.down_proj.weight", (h, i)
    yield "model.norm.weight", (h,)
    yield "lm_head.weight", (v, h)


def model_dir_for(layers):
    return os.path.join(CACHE_DIR, "qwen2.5-coder-7b-shaped-random" + ("" if layers == 28 else f"-{layers}l"))


def build_model(torch, tok_src, layers=28):
    """Random FP16 safetensors in Qwen2.5-Coder-7B's layout (~15 GB at 28 layers), written once."""
    shape = dict(SHAPE, num_hidden_layers=layers)
    MODEL_DIR = model_dir_for(layers)  # noqa: N806
    if os.path.exists(os.path.join(MODEL_DIR, MARKER)):
        return MODEL_DIR
    from safetensors.torch import save_file
    from transformers import AutoTokenizer
    t0 = time.time()
    tmp = MODEL_DIR + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    for f in ("tokenizer.json", "chat_template.jinja"):
        if os.path.exists(os.path.join(tok_src, f)):
            shutil.copy(os.path.join(tok_src, f), tmp)
    with open(os.path.join(tok_src, "tokenizer_config.json"), encoding="utf-8") as f:
        tc = json.load(f)
    tc["model_max_length"] = shape["max_position_embeddings"]
    with open(os.path.join(tmp, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(tc, f, indent=2)
    tok = AutoTokenizer.from_pretrained(tok_src)
    n_tok = len(tok)
    eot, im_end = tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"])
    with open(os.path.join(tmp, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": eot, "pad_token_id": eot, "eos_token_id": [im_end, eot]}, f)
    cfg = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu",
           "attention_dropout": 0.0, "initializer_range": 0.02, "use_cache": True, "use_sliding_window": False,
           "sliding_window": None, "max_window_layers": layers, "rope_scaling": None,
           "bos_token_id": eot, "eos_token_id": im_end, "pad_token_id": eot,
           "torch_dtype": "float16", "dtype": "float16", **shape}
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    shard, shard_bytes, shard_no, index = {}, 0, 0, {}

    def flush():
        nonlocal shard, shard_bytes, shard_no
        if shard:
            shard_no += 1
            name = f"model-{shard_no:05d}.safetensors"
            save_file(shard, os.path.join(tmp, name), metadata={"format": "pt"})
            index.update({k: name for k in shard})
            shard, shard_bytes = {}, 0

    total = 0
    for name, dims in tensor_shapes(shape):
        if name.endswith("norm.weight"):
            t = torch.ones(dims, dtype=torch.float16)
        else:
            t = (torch.randn(dims, generator=gen, device=DEVICE, dtype=torch.float32) * 0.02).to(torch.float16)
            if name == "lm_head.weight":
                t[n_tok:] = 0  # ids the tokenizer lacks never win the argmax ...
                t[[eot, im_end]] = 0  # ... nor the stop tokens: every run decodes max_tokens
            t = t.cpu()
        shard[name] = t.contiguous()
        shard_bytes += t.numel() * 2
        total += t.numel()
        if shard_bytes >= 4 << 30:
            flush()
    flush()
    with open(os.path.join(tmp, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total * 2}, "weight_map": index}, f, indent=1)
    with open(os.path.join(tmp, MARKER), "w") as f:
        f.write(f"{total} parameters\n")
    shutil.rmtree(MODEL_DIR, ignore_errors=True)
    os.replace(tmp, MODEL_DIR)
    log(f"built {MODEL_DIR}: {total / 1e9:.2f} B parameters in {time.time() - t0:.0f} s")
    return MODEL_DIR
