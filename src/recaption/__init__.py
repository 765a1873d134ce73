"""recaption: recaption image-text datasets with vision-language models.

The main entry points take the options of the `recap` command of the same name:

    import recaption
    summary = recaption.caption(["shards/*.tar"], "out/", model="tiny", key_col="id")
    recaption.score("out/", clip_model="tiny-clip")
    recaption.report("out/")
"""

__version__ = "0.1.0"

from .api import (  # noqa: E402
    caption,
    download,
    eval_retrieval,
    export,
    filter_output,
    judge,
    report,
    score,
    stats,
    train_clip,
)

__all__ = [
    "__version__",
    "caption",
    "download",
    "eval_retrieval",
    "export",
    "filter_output",
    "judge",
    "report",
    "score",
    "stats",
    "train_clip",
]
