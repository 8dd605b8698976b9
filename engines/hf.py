"""What the engines on Hugging Face-format model dirs (transformers, exllamav2) share: config.json,
the HF tokenizer with its chat template, and the stop token ids."""
import json
import os

from engines.base import Engine, EngineError


def read_model_config(path) -> dict:
    """config.json of a model dir, with clear errors for the usual mistakes."""
    if not os.path.isdir(path):
        raise EngineError(f"model path {path!r} is not a directory: pass -m with a Hugging Face or EXL2 model dir "
                          f"(or a .gguf file, served by the llamacpp engine)")
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise EngineError(f"{path!r} has no config.json: is it a Hugging Face-format model dir?")
    if not any(os.path.isfile(os.path.join(path, f)) for f in ("tokenizer.json", "tokenizer.model")):
        raise EngineError(f"{path!r} has no tokenizer.json: copy the tokenizer files next to the weights")
    with open(cfg_path, encoding="utf-8") as f:
        return json.load(f)


def trained_context(config):
    """The context the model was built for: max_position_embeddings, times a RoPE scaling factor if any."""
    own = config.get("max_position_embeddings")
    factor = (config.get("rope_scaling") or {}).get("factor") or 1
    return int(own * max(1, factor)) if own else None


class HFEngine(Engine):
    """An engine on a Hugging Face-format (or EXL2) model dir."""

    def __init__(self, model_path, cache_mode="q4", max_seq_len=None):
        super().__init__(model_path, cache_mode, max_seq_len)
        self.model_config = read_model_config(model_path)
        self.architecture = (self.model_config.get("architectures") or ["?"])[0]
        self.fit_context(trained_context(self.model_config))
        self.hf_tokenizer = None

    def load_tokenizer(self):
        from llguidance import hf as llguidance_hf
        from transformers import AutoTokenizer

        from engines.constrained import Vocab
        try:
            self.hf_tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        except Exception as e:  # noqa: BLE001 - transformers raises many types here
            raise EngineError(f"cannot load the tokenizer from {self.model_path!r}: {e}") from e
        self.stop_ids = self.stop_token_ids()
        self.ll_vocab = Vocab(lambda: llguidance_hf.from_tokenizer(
            self.hf_tokenizer, n_vocab=self.model_config.get("vocab_size"), eos_token=self.stop_ids))
        self.ll_vocab.start()  # read in the background while the weights load
        if not self.hf_tokenizer.chat_template:
            raise EngineError(f"{self.model_path!r} has no chat template (tokenizer_config.json "
                              f"'chat_template'): an instruct model is needed")

    def stop_token_ids(self) -> list:
        """EOS ids from generation_config.json, the tokenizer and ChatML (<|im_end|>, <|endoftext|>)."""
        ids = set()
        gen_cfg = os.path.join(self.model_path, "generation_config.json")
        if os.path.isfile(gen_cfg):
            with open(gen_cfg, encoding="utf-8") as f:
                eos = json.load(f).get("eos_token_id")
            ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        tok = self.hf_tokenizer
        if tok.eos_token_id is not None:
            ids.add(tok.eos_token_id)
        vocab = tok.get_vocab()
        ids.update(vocab[t] for t in ("<|im_end|>", "<|endoftext|>") if t in vocab)
        return sorted(ids)

    def render(self, messages, tools=None) -> str:
        return self.hf_tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)

    def template_has_tools(self) -> bool:
        return "tools" in self.hf_tokenizer.chat_template

    def tokenize(self, text) -> list:
        return self.hf_tokenizer(text, add_special_tokens=False)["input_ids"]

    def decode(self, ids) -> str:
        return self.hf_tokenizer.decode(ids, skip_special_tokens=True)
