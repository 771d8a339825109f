"""Tiny random models and locally trained tokenizers, for tests and the CPU demo (no hub access)."""

from __future__ import annotations

import string
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

from protocol.config.model import Arch

MOE_ARCHS: tuple[Arch, ...] = ("qwen3_moe", "qwen2_moe", "mixtral", "olmoe")

EOS = "<|endoftext|>"
PAD = "<|pad|>"


def default_corpus() -> list[str]:
    """Text covering what tests and the demo emit: digits, arithmetic, LaTeX answers, Python."""
    lines = [
        "Question: What is 3 + 4 - 2? Answer: 3 + 4 = 7\n7 - 2 = 5\n\\boxed{5}",
        "A farmer has 2 cows and 3 chickens. How many legs? 2 * 4 = 8\n3 * 2 = 6\n8 + 6 = 14\n\\boxed{14}",
        "Write a function f with f(0)=3, f(1)=5, f(2)=7.\n```python\ndef f(x):\n    return 2 * x + 3\n```",
        "def add(a, b):\n    return a + b\n\nprint(add(1, 2))\nimport sys\nfor line in sys.stdin:\n    pass",
        "The answer is \\frac{1}{2} or 0.5, the set \\{1, 2\\}, the interval [0, 1).",
        string.ascii_letters + string.digits + string.punctuation,
    ]
    return lines * 20


def train_tokenizer(texts: Iterable[str] | None = None, vocab_size: int = 640) -> PreTrainedTokenizerFast:
    """Byte-level BPE with every digit its own token (arithmetic is learnable digit by digit)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS, PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(list(texts) if texts is not None else default_corpus(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD,
                                   bos_token=EOS, unk_token=None, clean_up_tokenization_spaces=False)


def tiny_config(arch: Arch, vocab_size: int, hidden: int = 128, layers: int = 4,
                experts: int = 8, top_k: int = 2, expert_ffn: int = 192, max_positions: int = 1024,
                **overrides: Any) -> Any:
    """A small config of the given architecture (defaults: 2.6M params, 0.9M active for qwen3_moe)."""
    common: dict[str, Any] = dict(
        vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=max_positions, tie_word_embeddings=True,
        bos_token_id=0, eos_token_id=0, pad_token_id=1, rms_norm_eps=1e-6,
    )
    if arch in ("qwen3_moe", "qwen3"):
        common["head_dim"] = hidden // 4
    if arch == "qwen3_moe":
        common.update(num_experts=experts, num_experts_per_tok=top_k, moe_intermediate_size=expert_ffn,
                      intermediate_size=expert_ffn * 2, decoder_sparse_step=1, norm_topk_prob=True,
                      output_router_logits=False, router_aux_loss_coef=0.0, mlp_only_layers=[])
    elif arch == "qwen2_moe":
        common.update(num_experts=experts, num_experts_per_tok=top_k, moe_intermediate_size=expert_ffn,
                      shared_expert_intermediate_size=expert_ffn, intermediate_size=expert_ffn * 2,
                      decoder_sparse_step=1, output_router_logits=False, router_aux_loss_coef=0.0,
                      mlp_only_layers=[])
    elif arch == "mixtral":
        common.update(num_local_experts=experts, num_experts_per_tok=top_k, intermediate_size=expert_ffn,
                      output_router_logits=False, router_aux_loss_coef=0.0)
    elif arch == "olmoe":
        common.update(num_experts=experts, num_experts_per_tok=top_k, intermediate_size=expert_ffn,
                      output_router_logits=False, router_aux_loss_coef=0.0)
    elif arch in ("qwen3", "qwen2"):
        common.update(intermediate_size=expert_ffn * 2)
    else:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {MOE_ARCHS + ('qwen3', 'qwen2')}")
    common.update(overrides)
    return AutoConfig.for_model(arch, **common)


def build_tiny_model(out_dir: str | Path, arch: Arch = "qwen3_moe", texts: Iterable[str] | None = None,
                     seed: int = 0, dtype: torch.dtype = torch.float32, vocab_size: int = 640,
                     **config_overrides: Any) -> Path:
    """Write a random model + its tokenizer as a Hugging Face folder (safetensors) and return it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(texts, vocab_size=vocab_size)
    cfg = tiny_config(arch, vocab_size=len(tokenizer), **config_overrides)
    cfg.torch_dtype = dtype
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, torch_dtype=dtype)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out
