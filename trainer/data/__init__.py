"""Training data: curated manifest rows decoded into clips, latent shards, curriculum samplers."""
