"""recaption: recaption image-text datasets with vision-language models.

The main entry points take the options of the `recap` command of the same name:

    import recaption
    summary = recaption.caption(["shards/*.tar"], "out/", model="tiny", key_col="id")
    recaption.score("out/", clip_model="tiny-clip")
    recaption.report("out/")
    recaption.view("out/")  # http://127.0.0.1:8765/
"""

from .api import (  # noqa: A004 - filter: the command's name
    caption,
    caption_presets,
    convert_llava,
    download,
    eval_captioner,
    eval_retrieval,
    eval_t2i,
    export,
    filter,
    filter_output,
    generate,
    judge,
    lookup,
    make_shapes,
    model_families,
    report,
    run,
    run_demo,
    score,
    stats,
    train_captioner,
    train_clip,
    train_dit,
    view,
)
from .spine import __version__

__all__ = [
    "__version__", "caption", "caption_presets", "convert_llava", "run_demo", "download", "lookup",
    "eval_captioner", "eval_retrieval", "eval_t2i", "export", "filter", "filter_output", "generate",
    "judge", "model_families", "report", "run", "score", "make_shapes", "stats", "train_captioner",
    "train_clip", "train_dit", "view"
]
