"""Text encoders for the DiT's conditioning: umT5-xxl (Wan's own) and the offline demo's MiniLM (see encoder.py)."""

from trainer.models.text.encoder import TextEncoder, TextEncoderConfig, build_text_encoder, load_text_encoder

__all__ = ["TextEncoder", "TextEncoderConfig", "build_text_encoder", "load_text_encoder"]
