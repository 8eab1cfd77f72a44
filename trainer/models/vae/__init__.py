"""The Wan2.1 causal video VAE: model, fused kernels, training losses."""
