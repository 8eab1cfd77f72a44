"""Model definitions (VAE, DiT, text encoders): plain nn.Modules that know nothing of parallelism or training."""
