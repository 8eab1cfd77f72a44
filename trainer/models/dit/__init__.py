"""The Wan2.1 diffusion transformer (text-to-video) and its state-dict layout."""
