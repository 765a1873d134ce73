"""recaption: recaption image-text datasets with vision-language models."""

__version__ = "0.1.0"


def caption(inputs, output, **options):
    """Caption `inputs` into `output`; see recaption.pipeline.caption."""
    from .pipeline import caption as _caption

    return _caption(inputs, output, **options)


__all__ = ["caption", "__version__"]
