"""Typed settings, one dataclass per concern; the CLI only maps flags onto these."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from .models.registry import CONDITIONAL_PROMPT, MAX_NEW_TOKENS, PAPER_PROMPT
from .samples.images import DEFAULT_MAX_PIXELS, DEFAULT_MAX_SIDE
from .samples.placeholders import read_placeholder_list
from .spine.errors import RecaptionError


@dataclass
class TransformersOptions:
    """--engine transformers (and the trainers' model loading)."""

    attn_implementation: str | None = "sdpa"  # sdpa | eager | flash_attention_2 | None (the model's)


@dataclass
class ServerOptions:
    """--engine openai (and the judge): the servers, and how hard to push them."""

    endpoints: list[str] = field(default_factory=list)
    concurrency: int = 64  # requests in flight over all endpoints
    request_timeout: float = 120.0  # seconds for one request, connect to last byte
    retries: int = 4
    retry_backoff: float = 1.0  # seconds before the first retry; doubles each time
    api_key_env: str | None = "OPENAI_API_KEY"  # the key is read from this variable, never logged

    def __post_init__(self):
        if self.concurrency < 1 or self.retries < 0 or self.request_timeout <= 0:
            raise ValueError("concurrency and request_timeout must be positive, retries at least 0")


@dataclass
class CaptionConfig:
    """What the captioner does: model, prompt and decoding."""

    model: str = "tiny"  # for --engine openai: the model name the server serves
    prompt: str = PAPER_PROMPT
    max_new_tokens: int = 128
    min_new_tokens: int = 0  # benchmarks set it to max_new_tokens for a fixed output length
    batch_size: int = 8  # 0: automatic (GPU: from free memory, backing off on out-of-memory)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | float32 | bfloat16 | float16
    conditional: bool = False  # also write re_caption_condition_diverse_topk
    conditional_prompt: str = CONDITIONAL_PROMPT  # `{caption}` is replaced by the alt-text
    top_k: int = 0  # conditional mode only; 0 means greedy
    # Named passes after the paper's one (CaptionPass, "NAME=PROMPT" or a passes file's dicts);
    # `passes_file` adds those of a YAML file.
    passes: list = field(default_factory=list)
    passes_file: str | None = None
    # A shipped preset (presets.py): its passes come first; it may turn on the conditional pass.
    preset: str | None = None
    seed: int = 0
    # The processor's from_pretrained settings (`--processor-option KEY=VALUE`: JSON, else text).
    processor_options: dict = field(default_factory=dict)
    engine: str = "transformers"  # a module engines/<name>_engine.py: transformers | vllm | openai
    # Engine-specific options, each engine reading its own.
    transformers: TransformersOptions = field(default_factory=lambda: TransformersOptions())
    server: ServerOptions = field(default_factory=lambda: ServerOptions())

    def __post_init__(self):
        if not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS:
            raise ValueError(f"--max-new-tokens {self.max_new_tokens}: give 1 to {MAX_NEW_TOKENS} "
                             "(the paper: 128)")
        if self.batch_size < 0:
            raise ValueError("batch_size must be positive, or 0 for automatic")
        if self.top_k < 0:
            raise ValueError("top_k must be 0 (greedy) or positive")
        from .passes import check_dependencies, check_unique, parse_pass, read_passes_file

        if isinstance(self.passes, (str, dict)):
            self.passes = [self.passes]
        self.passes = [parse_pass(p) for p in self.passes or []]
        if self.preset:
            from .presets import load_preset

            preset = load_preset(self.preset)
            self.passes = [*preset.passes, *self.passes]
            if preset.conditional:
                self.conditional = True
                self.top_k = self.top_k or preset.top_k
            self.preset = None  # read once: the passes and decoding are what the run keeps
        if self.passes_file:
            self.passes += read_passes_file(self.passes_file)
            self.passes_file = None  # read once: the passes are what the run keeps
        check_unique(self.caption_passes)  # (the conditional prompt without {caption}: PassError)
        check_dependencies(self.caption_passes)  # reads of later, unknown or own outputs; cycles
        self.processor_options = parse_processor_options(self.processor_options)
        if self.processor_options and self.engine == "openai":
            raise ValueError("--processor-option: with --engine openai the server runs the processor; "
                             "set it there")
        import re

        from .models.loading import DEVICE_PATTERN, DTYPE_CHOICES, DTYPES

        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype {self.dtype}: unknown; choose {DTYPE_CHOICES}")
        self.dtype = DTYPES[self.dtype]  # fp16 -> float16: the name every engine takes
        if not re.fullmatch(f"auto|{DEVICE_PATTERN}", str(self.device)):
            raise ValueError(f"--device {self.device}: unknown; choose auto, cpu, cuda, cuda:N (N: a GPU "
                             "number) or mps")

    @property
    def caption_passes(self) -> list:
        """Every pass of the run: the paper's (--prompt) into re_caption, the named ones, then
        the conditional one (--conditional) into re_caption_condition_diverse_topk."""
        from .passes import conditional_pass, default_pass

        passes = [default_pass(self.prompt), *self.passes]
        if self.conditional:
            passes.append(conditional_pass(self.conditional_prompt, self.top_k))
        return passes

    def provenance(self) -> dict:
        """What decides the output's content; stored with every shard and checked on resume."""
        keys = ["model", "prompt", "max_new_tokens", "conditional", "seed", "engine", "dtype"]
        if self.conditional:
            keys += ["conditional_prompt", "top_k"]
        if self.min_new_tokens:
            keys.append("min_new_tokens")
        values = {k: getattr(self, k) for k in keys}
        if self.passes:
            values["passes"] = [p.provenance() for p in self.passes]
        if self.processor_options:  # recorded only when given, so older output still resumes
            values["processor_options"] = dict(sorted(self.processor_options.items()))
        return values


@dataclass
class RunConfig:
    """Where output goes and how the run treats existing output and bad input."""

    output: str
    overwrite: bool = False
    # Redo complete shards that hold caption_error rows (whole: one file made in one pass).
    retry_failed: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_side: int | None = DEFAULT_MAX_SIDE
    # Loader processes; 0: in the main process; None: 0 on CPU, up to 4 on a GPU.
    workers: int | None = None
    prefetch_batches: int = 2  # batches each worker keeps ready
    row_group_rows: int = 1000
    clip_model: str | None = None  # score in the same pass (images decoded once): CLIP id or folder
    clip_long_text: str = "truncate"  # captions over the CLIP's window: truncate or chunk (long_text.py)
    # sha256 digests of placeholder images (samples/placeholders.py), never captioned; read here,
    # so a bad file fails before a model loads.
    placeholders: str | None = None
    # (an init field: `replace(run, ...)` on a Ray worker keeps the list read by the driver)
    placeholder_digests: frozenset = field(default=frozenset(), repr=False)

    def __post_init__(self):
        if self.placeholders and not self.placeholder_digests:
            self.placeholder_digests = read_placeholder_list(self.placeholders)
        if self.max_pixels < 1:
            raise ValueError(f"--max-pixels {self.max_pixels}: must be at least 1")
        if self.max_side is not None and self.max_side < 0:
            raise ValueError(f"max_side {self.max_side}: must be positive, or None for no limit")
        if self.workers is not None and self.workers < 0:
            raise ValueError(f"--workers {self.workers}: must be 0 (this process) or more")
        check_long_text(self.clip_long_text)


LONG_TEXT_MODES = ("truncate", "chunk")  # --clip-long-text: how captions over the text window score


class LongTextError(RecaptionError, ValueError):
    """A --clip-long-text that is not one of the rules (quality/long_text.py)."""


def check_long_text(mode: str) -> str:
    """The one check of --clip-long-text, for the run's settings and every scorer."""
    if mode not in LONG_TEXT_MODES:
        raise LongTextError(f"--clip-long-text {mode}: choose {' or '.join(LONG_TEXT_MODES)}")
    return mode


@dataclass
class ExecutorConfig:
    """Where the work runs: this process, one process per device, or Ray workers."""

    executor: str = "local"  # local | ray
    # local: one worker process per device over disjoint shards ("cuda:0", "cuda:1", ...);
    # None: every visible GPU when there are several, else this process.
    devices: list[str] | None = None
    ray_address: str | None = None  # None: start a local Ray; "auto" or ray://host:port: join one
    ray_workers: int | None = None  # caption workers; None: one per GPU in the cluster (or 1)
    ray_gpus_per_worker: float = 1.0  # fractional (0.5, 0.25) packs small models on one GPU
    ray_cpus_per_worker: float = 1.0

    def __post_init__(self):
        # The executor's name is checked where executors are found (executors.executor_module).
        import re

        from .models.loading import DEVICE_PATTERN

        wrong = [d for d in self.devices or [] if not re.fullmatch(DEVICE_PATTERN, str(d))]
        if wrong:
            raise ValueError(
                f"--devices {','.join(map(str, self.devices))}: {', '.join(map(str, wrong))} is not a "
                "device; give GPU numbers (0,1), cuda:N or cpu"
            )


@dataclass
class CaptionSettings:
    """Everything one `recap caption` run needs: the CLI and `recaption.caption()` both build it
    with `caption_settings`, so the Python API takes exactly the options the CLI takes."""

    caption: CaptionConfig
    run: RunConfig
    columns: Any  # readers.ColumnConfig (imported lazily: readers pull in fsspec and pyarrow)
    executor: ExecutorConfig


# Options named as on the command line that do not map one-to-one onto a config field.
_COLUMN_OPTIONS = {"image_col": "image", "caption_col": "caption", "url_col": "url", "key_col": "key",
                   "sha256_col": "sha256", "max_image_bytes": "max_image_bytes", "image_root": "image_root",
                   "any_image_path": "any_image_path"}
_CLI_ONLY = {"endpoint", "score", "devices"}


_OPTION_CLASSES = (CaptionConfig, TransformersOptions, ServerOptions, RunConfig, ExecutorConfig)
_SUB_CONFIGS = {"transformers", "server"}  # CaptionConfig fields built from their own options


def check_option_names(options: dict, known: list[str]) -> None:
    """TypeError naming the unknown options and listing the real ones (a misspelt keyword of the
    Python API), for every command's options."""
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise TypeError(f"unknown option(s) {', '.join(unknown)}; options: {', '.join(sorted(known))}")


def caption_option_names() -> list[str]:
    """Every option `caption_settings` (and so `recaption.caption`) accepts."""
    names = {f.name for cls in _OPTION_CLASSES for f in fields(cls)}
    return sorted((names - {"output"} - _SUB_CONFIGS) | set(_COLUMN_OPTIONS) | _CLI_ONLY)


def caption_settings(output: str, **options) -> CaptionSettings:
    """Build and validate a run's settings from CLI-style options (`key_col="id"`, `devices="0,1"`,
    `endpoint="http://a,http://b"`, `score=True`): TypeError for an unknown option, ValueError for
    a wrong value."""
    from .readers.base import ColumnConfig

    check_option_names(options, caption_option_names())
    options = dict(options)
    endpoint = options.pop("endpoint", None)
    if endpoint is not None:
        options["endpoints"] = split_list(endpoint)
    devices = options.pop("devices", None)
    if devices is not None:
        options["devices"] = [f"cuda:{d}" if d.isdigit() else d for d in split_list(devices)] or None
    score = options.pop("score", None)
    if score is False:
        options["clip_model"] = None
    elif score and not options.get("clip_model"):
        raise ValueError("score=True needs clip_model (a CLIP hub id, a local folder or tiny-clip)")
    columns = ColumnConfig(
        **{_COLUMN_OPTIONS[k]: options.pop(k) for k in list(options) if k in _COLUMN_OPTIONS}
    )
    engine_options = {"transformers": TransformersOptions(**_take(options, TransformersOptions)),
                      "server": ServerOptions(**_take(options, ServerOptions))}
    caption = CaptionConfig(**_take(options, CaptionConfig), **engine_options)
    executor = ExecutorConfig(**_take(options, ExecutorConfig))
    run = RunConfig(output=output, **_take(options, RunConfig))
    if caption.engine == "openai" and not caption.server.endpoints:
        raise ValueError("--engine openai needs --endpoint URL")
    return CaptionSettings(caption, run, columns, executor)


def parse_processor_options(options) -> dict:
    """`{"max_pixels": 1003520}`, or "KEY=VALUE" strings (a list, or one string): each value read
    as JSON (`1003520`, `false`, `[1, 2]`), else kept as text."""
    import json

    if isinstance(options, dict):
        items = list(options.items())
    else:
        items = []
        for spec in [options] if isinstance(options, str) else list(options or []):
            key, sep, text = str(spec).partition("=")
            if not sep or not key.strip():
                raise ValueError(f"--processor-option {spec}: give KEY=VALUE, e.g. max_pixels=1003520")
            try:
                value = json.loads(text)
            except ValueError:
                value = text
            items.append((key.strip(), value))
    for key, _ in items:
        if not str(key).isidentifier():
            raise ValueError(f"--processor-option {key}: not a setting name")
    return dict(items)


def split_list(value) -> list[str]:
    """A list or a comma-separated string (or a list of those): `"a,b"`, `["a", "b,c"]`."""
    values = [value] if isinstance(value, str) else list(value or [])
    return [v.strip() for item in values for v in str(item).split(",") if v.strip()]


def _take(options: dict, cls) -> dict:
    names = {f.name for f in fields(cls)}
    return {k: options.pop(k) for k in list(options) if k in names}
