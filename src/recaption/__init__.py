"""recaption: recaption image-text datasets with vision-language models.

The main entry points take the options of the `recap` command of the same name:

    import recaption
    summary = recaption.caption(["shards/*.tar"], "out/", model="tiny", key_col="id")
    recaption.score("out/", clip_model="tiny-clip")
    recaption.report("out/")
"""

from .api import (
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
from .spine import __version__

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
