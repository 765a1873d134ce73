"""Has a shard's input changed since its output was made? Markers record fingerprints
(`input_provenance`), reruns compare them (`input_change`)."""

from __future__ import annotations

import json
import logging

from ..spine.ledger import INPUT_FINGERPRINT, OutputDir
from .base import Shard
from .folder import FolderShard

log = logging.getLogger(__name__)


def forget_vanished_slices(shards: list[Shard], out: OutputDir) -> None:
    """Remove, saying so, the output of slices a shrunk folder no longer has (it would count its
    images twice). `shards` must be every shard of the run (called once, under the lock)."""
    current = {s.name for s in shards}
    slices = [s for s in shards if isinstance(s, FolderShard)]
    roots = {(s.source.rsplit(" [", 1)[0], s.name.rsplit("-", 1)[0]) for s in slices}
    for root, prefix in roots:
        for marker in out.fs.glob(out.path(f"{prefix}-*.done")):
            name = marker.rsplit("/", 1)[-1][: -len(".done")]
            if name in current or not name.rsplit("-", 1)[-1].isdigit():
                continue
            try:
                with out.open(out.stats(name), "r") as f:
                    source = json.load(f).get("source", "")
            except (OSError, ValueError, AttributeError):  # gone, damaged, a FIFO: not ours to judge
                continue
            if source == f"{root} [{name}]":  # a slice of this very folder
                log.warning("%s: %s no longer has this slice (it shrank); removing its output", name, root)
                out.invalidate(name)


def input_provenance(shard: Shard) -> dict:
    """What a shard's .done marker records about its input: its fingerprint."""
    fingerprint = shard.fingerprint()
    return {} if fingerprint is None else {INPUT_FINGERPRINT: fingerprint}


def input_change(shard: Shard, marker: dict) -> str | None:
    """How a done shard's input differs from its marker's record, or None (none recorded: trusted)."""
    then, now = marker.get(INPUT_FINGERPRINT), shard.fingerprint()
    if not isinstance(then, dict) or now is None or then == now:
        return None
    if "file" in now:  # a tar or parquet shard
        return (f"{now['file']} changed since it was captioned ({then.get('size')} bytes then, "
                f"{now.get('size')} now{'' if then.get('size') != now.get('size') else ', rewritten'})")
    images_then, images_now = then.get("images"), now.get("images")
    if images_then != images_now:
        detail = f"{images_then} images then, {images_now} now"
    else:
        detail = f"still {images_now} images, but files were added, removed or modified"
    return f"folder changed since it was captioned ({detail})"
