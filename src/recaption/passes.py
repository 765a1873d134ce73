"""Caption passes: each prompt a run asks of every image is data, not code.

A pass names its instruction, how it decodes and which columns it writes. The paper's run is one
pass into `re_caption`; `--conditional` adds the dataset's later alt-text-conditioned pass into
`re_caption_condition_diverse_topk`; `--pass NAME=PROMPT` (or `--passes passes.yaml`) adds named
passes into `re_caption_<NAME>`. Every pass of an image shares one decode (and, where the engine
can, one image preprocessing); each pass's prompts are batched together."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa

from .flags import FLAG_NAMES
from .models.registry import CONDITIONAL_PROMPT, MAX_NEW_TOKENS, PAPER_PROMPT
from .spine.errors import RecaptionError
from .spine.user_yaml import UserFileError, load_yaml

ALT_TEXT = "{caption}"  # in a pass's prompt: replaced by the sample's original caption
DEFAULT, CONDITIONAL = "default", "condition_diverse_topk"
_NAME = re.compile(r"[a-z0-9][a-z0-9_]{0,39}")
FLAGS = FLAG_NAMES  # flags.py: the one table of flags


class PassError(RecaptionError, ValueError):
    """A pass that cannot run: a bad name, a duplicate, an empty prompt, a malformed passes file."""


@dataclass(frozen=True)
class Decoding:
    """How one pass decodes: greedy when top_k is 0; `seed` fixes a sampled batch."""

    max_new_tokens: int
    top_k: int = 0
    seed: int | None = None

    @property
    def sample(self) -> bool:
        return self.top_k > 0


@dataclass(frozen=True)
class CaptionPass:
    name: str
    prompt: str  # the instruction; `{caption}` in it makes the pass conditional on the alt-text
    column: str  # the caption column
    length_column: str  # its word count
    flag_prefix: str | None = None  # `<prefix>_truncated`, `_repetition`, ... columns; None: none
    top_k: int = 0  # 0: greedy (the paper); > 0: sampled from the top k, seeded per batch
    max_new_tokens: int | None = None  # None: the run's --max-new-tokens

    @property
    def conditional(self) -> bool:
        return ALT_TEXT in self.prompt

    def instruction(self, alt_text: str | None) -> str:
        """The text asked of one image: the prompt, with the alt-text in place of `{caption}`."""
        if not self.conditional:
            return self.prompt
        return self.prompt.replace(ALT_TEXT, (alt_text or "").strip())

    def decoding(self, max_new_tokens: int, seed: int | None = None) -> Decoding:
        return Decoding(self.max_new_tokens or max_new_tokens, self.top_k, seed if self.top_k else None)

    def flag_column(self, flag: str) -> str | None:
        return None if self.flag_prefix is None else f"{self.flag_prefix}_{flag}"

    def provenance(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def default_pass(prompt: str = PAPER_PROMPT) -> CaptionPass:
    """The paper's pass: the published `re_caption` and `re_length`, and our `re_*` flags."""
    return CaptionPass(DEFAULT, prompt, "re_caption", "re_length", flag_prefix="re")


def conditional_pass(prompt: str = CONDITIONAL_PROMPT, top_k: int = 0) -> CaptionPass:
    """The dataset's later column, conditioned on the alt-text (published without flags)."""
    if ALT_TEXT not in prompt:
        raise PassError(f"the conditional prompt must contain {ALT_TEXT} (where the alt-text goes)")
    return CaptionPass(CONDITIONAL, prompt, "re_caption_condition_diverse_topk", "re_condition_length",
                       top_k=top_k)


def named_pass(name: str, prompt: str, top_k: int = 0, max_new_tokens: int | None = None) -> CaptionPass:
    """A pass the user adds: `re_caption_<name>`, `re_caption_<name>_length` and its flags."""
    name = str(name).strip()
    if not _NAME.fullmatch(name) or name in (DEFAULT, CONDITIONAL):
        raise PassError(
            f"pass name {name!r}: use lower-case letters, digits and _ (up to 40), not "
            f"{DEFAULT!r} or {CONDITIONAL!r}; it becomes the column re_caption_<name>"
        )
    if not str(prompt).strip():
        raise PassError(f"pass {name}: the prompt is empty")
    if top_k < 0 or (max_new_tokens is not None and not 1 <= max_new_tokens <= MAX_NEW_TOKENS):
        raise PassError(f"pass {name}: top_k must be 0 or more, max_new_tokens 1 to {MAX_NEW_TOKENS}")
    column = f"re_caption_{name}"
    return CaptionPass(name, str(prompt), column, f"{column}_length", flag_prefix=column, top_k=top_k,
                       max_new_tokens=max_new_tokens)


def parse_pass(spec) -> CaptionPass:
    """`"short=Describe the image in one sentence."`, a dict from a passes file, or a CaptionPass."""
    if isinstance(spec, CaptionPass):
        return spec
    if isinstance(spec, dict):
        unknown = set(spec) - {"name", "prompt", "top_k", "max_new_tokens"}
        if unknown or "name" not in spec or "prompt" not in spec:
            raise PassError(
                "give name and prompt (optional top_k, max_new_tokens)"
                + (f"; unknown key(s) {_some(sorted(map(str, unknown)))}" if unknown else "")
            )
        for field in ("name", "prompt"):
            if not isinstance(spec[field], str):
                raise PassError(f"{field} must be text, not {type(spec[field]).__name__}; quote it")
        top_k = _whole(spec.get("top_k"), "top_k", "top_k: 50") or 0
        max_new_tokens = _whole(spec.get("max_new_tokens"), "max_new_tokens", "max_new_tokens: 40")
        return named_pass(spec["name"], spec["prompt"], top_k, max_new_tokens)
    name, sep, prompt = str(spec).partition("=")
    if not sep:
        raise PassError(
            f"--pass {spec!r}: write NAME=PROMPT, e.g. --pass 'short=Describe the image in one sentence.'"
        )
    return named_pass(name, prompt)


def _some(names: list[str], shown: int = 5) -> str:
    """`a, b, c` or `a, b, c, d, e and 49995 more`: a message stays one short line."""
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f" and {more} more" if more > 0 else "")


def _whole(value, field: str, example: str) -> int | None:
    """A whole number from a passes file (None stays None); PassError naming the field otherwise."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise PassError(f"{field} {value!r} is not a whole number; write e.g. {example}")


def read_passes_file(path: str | Path) -> list[CaptionPass]:
    """A YAML (or JSON) list of passes: `- {name: short, prompt: "...", top_k: 0, max_new_tokens: 40}`;
    a mapping `passes: [...]` works too. Read with the bounded loader (no aliases, depth and size
    capped); each entry's fields are checked by type, the error naming the file and the entry."""
    try:
        data = load_yaml(path, "--passes")
    except UserFileError as exc:
        raise PassError(str(exc)) from None
    if isinstance(data, dict):
        data = data.get("passes")
    if not isinstance(data, list) or not data:
        raise PassError(f"--passes {path}: expected a list of passes, each with name and prompt")
    passes = []
    for number, item in enumerate(data, 1):
        try:
            passes.append(parse_pass(item if isinstance(item, dict) else {"entry": item}))
        except PassError as exc:
            raise PassError(f"--passes {path}: pass {number}: {exc}") from None
    return passes


def written_columns(p: CaptionPass) -> list[str]:
    """Every column a pass writes: its caption, its length and its flags."""
    return [p.column, p.length_column, *(p.flag_column(f) for f in FLAGS if p.flag_prefix)]


def check_unique(passes: list[CaptionPass]) -> None:
    """PassError when two passes would write one column (`a` and `a_length` both write
    re_caption_a_length): said when the settings are read, before any model loads."""
    owner: dict[str, str] = {}
    for p in passes:
        for column in written_columns(p):
            if column in owner:
                if owner[column] == p.name:
                    raise PassError(f"two passes write {p.column}: give each pass its own name")
                raise PassError(f"passes {owner[column]} and {p.name} (--pass / --passes) both write "
                                f"{column}: rename one")
            owner[column] = p.name


def pass_fields(p: CaptionPass) -> list[pa.Field]:
    """A named pass's columns (the default and conditional passes' columns are in schema.py)."""
    fields = [pa.field(p.column, pa.string()), pa.field(p.length_column, pa.int64())]
    return fields + [pa.field(p.flag_column(f), pa.bool_()) for f in FLAGS if p.flag_prefix]
