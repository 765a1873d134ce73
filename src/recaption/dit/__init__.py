"""Recap-DiT: text-to-image diffusion trained on original captions, recaptions or a mix (the
paper's section 6), and its evaluation.

  model      the PixArt-style transformer (diffusers), frozen text encoder, pixel / latent codec,
             EMA, the saved DiT folder
  data       training pairs in memory; which caption a draw uses (p, caption dropout)
  train      train_dit(DitTrainConfig(...))
  generate   generate(model, prompts, output, ...): img2dataset-layout shards + contact sheet
  eval       eval_shapes (no model), clip_scores, frechet_distance, eval_t2i

Needs diffusers (`pip install 'recaption[dit]'`); docs/dit.md has the commands and numbers.
"""
