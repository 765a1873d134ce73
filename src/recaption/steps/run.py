"""`recap run`: URLs to captions in one folder, download into OUT/images then caption into
OUT/captions. The run folder goes through the output contract itself: never among the inputs,
and holding nothing but a run's two halves."""

from __future__ import annotations

from ..spine.contract import Step, holds_only

RUN = Step("run", recognise=holds_only("images", "captions"), always_recognise=True)
IMAGES, CAPTIONS = "images", "captions"
