"""Bundled trainer: Wan-compatible causal video VAE (and, later, the DiT) fed by curated stage manifests."""
