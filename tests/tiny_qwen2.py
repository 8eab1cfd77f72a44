"""A tiny random-weight Qwen2 causal LM (config, weights, tokenizer, chat template) built offline, for plumbing tests
of the prompt rewriter only: its answers are noise and are never presented as results. Its special tokens never win
the greedy choice, so an answer runs to `max_new_tokens` of (random) text.

The tokenizer is a byte-level BPE trained here on a few English and Chinese sentences, with Qwen2's special tokens;
the chat template renders messages the way Qwen2.5-Instruct's does (`<|im_start|>role ... <|im_end|>`)."""

from __future__ import annotations

from pathlib import Path

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "A red fox runs through fresh snow at dawn, the camera tracks it from the side in a wide shot.",
    "An old fisherman mends a green net on a harbour pier, soft morning light, medium close-up.",
    "A neon sign reading OPEN glows red on a rainy street at night; cinematic, high contrast.",
    "一个小女孩在草地上放风筝，午后的阳光明亮柔和，中景镜头，写实摄影风格。",
]


def build_tokenizer():
    """A PreTrainedTokenizerFast with the small trained BPE, Qwen2's special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_qwen2(folder: Path, seed: int = 0) -> Path:
    """Write the checkpoint into `folder` (save_pretrained layout) and return it."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = build_tokenizer()
    config = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         bos_token_id=None, eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
                         pad_token_id=tok.convert_tokens_to_ids("<|endoftext|>"), tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():
        # Special tokens get logit 0 against random others, so greedy answers are text, not an immediate stop.
        for t in SPECIAL:
            model.lm_head.weight[tok.convert_tokens_to_ids(t)] = 0
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
