"""Bundled trainer: the Wan-compatible causal video VAE and DiT, trained from curated stage manifests.

Layout (after torchtitan): `models/` holds model files that know nothing of parallelism or training,
`distributed/` the multi-process code, `components/` what the scripts share, `data/` the input side, and the
scripts (`train_vae`, `train_dit`, `prepare`, `sample`) stay thin.
"""
