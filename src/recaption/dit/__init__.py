"""Recap-DiT: text-to-image diffusion trained on original captions, recaptions or a mix (the
paper's section 6): model, data, train (train_dit), generate, eval. Needs diffusers
(`pip install 'recaption[dit]'`); docs/dit.md has the commands and numbers.
"""
