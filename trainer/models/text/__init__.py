"""Text encoders for the DiT's conditioning: umT5-xxl (Wan's own) and the offline demo's MiniLM."""
