"""Training and evaluation: CLIP on original/recaptioned mixes, retrieval and zero-shot eval."""
