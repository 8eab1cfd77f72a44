"""Synthetic visual-text data (the Wan paper's rendered Chinese and English text images): text, rendering, the OCR
gate and the Ray pass."""
