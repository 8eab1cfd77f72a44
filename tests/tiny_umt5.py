"""A tiny random-weight umT5 encoder + a tokenizer trained here on a few sentences, saved in the Diffusers layout
(`text_encoder/`, `tokenizer/`) that the `umt5-xxl` registry folder has: for plumbing tests of the text encoder only
(its embeddings are noise and never presented as results)."""

from __future__ import annotations

from pathlib import Path

CORPUS = [
    "A video clip of a city street at night; the camera pans slowly.",
    "A photo of a cup of coffee on a wooden table, warm light.",
    "A landscape video clip with optimal motion; on-screen text: NEWS24.",
    "A woman walks a dog along the beach while waves roll in.",
]


def build_tiny_umt5(folder: Path, seed: int = 0, d_model: int = 32) -> Path:
    """Write `folder/text_encoder` (UMT5EncoderModel, 2 layers) and `folder/tokenizer` (Unigram); return `folder`."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=200, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>")
    tok.train_from_iterator(CORPUS * 4, trainer)
    eos = tok.token_to_id("</s>")
    # T5 appends </s> to every text; Wan keeps it among the valid tokens.
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", eos)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(str(folder / "tokenizer"))
    torch.manual_seed(seed)
    cfg = UMT5Config(vocab_size=len(fast), d_model=d_model, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                     relative_attention_num_buckets=8, relative_attention_max_distance=16, dropout_rate=0.0,
                     pad_token_id=fast.pad_token_id, eos_token_id=eos)
    UMT5EncoderModel(cfg).eval().save_pretrained(str(folder / "text_encoder"))
    return folder
