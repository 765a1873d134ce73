"""Typed settings, one dataclass per concern; the CLI only maps flags onto these."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .images import DEFAULT_MAX_PIXELS, DEFAULT_MAX_SIDE
from .models.registry import CONDITIONAL_PROMPT, PAPER_PROMPT


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
    seed: int = 0
    attn_implementation: str | None = "sdpa"
    engine: str = "transformers"  # transformers | vllm | openai
    # --engine openai: servers, and how hard to push them.
    endpoints: list[str] = field(default_factory=list)
    concurrency: int = 64  # requests in flight over all endpoints
    request_timeout: float = 120.0  # seconds for one request, connect to last byte
    retries: int = 4
    retry_backoff: float = 1.0  # seconds before the first retry; doubles each time
    api_key_env: str | None = "OPENAI_API_KEY"  # the key is read from this variable, never logged

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        if self.batch_size < 0:
            raise ValueError("batch_size must be positive, or 0 for automatic")
        if self.concurrency < 1 or self.retries < 0 or self.request_timeout <= 0:
            raise ValueError("concurrency and request_timeout must be positive, retries at least 0")
        if self.top_k < 0:
            raise ValueError("top_k must be 0 (greedy) or positive")
        if self.conditional and "{caption}" not in self.conditional_prompt:
            raise ValueError("the conditional prompt must contain {caption}")

    def provenance(self) -> dict:
        """What decides the output's content; stored with every shard and checked on resume."""
        keys = ["model", "prompt", "max_new_tokens", "conditional", "seed"]
        if self.conditional:
            keys += ["conditional_prompt", "top_k"]
        if self.min_new_tokens:
            keys.append("min_new_tokens")
        return {k: asdict(self)[k] for k in keys}


@dataclass
class RunConfig:
    """Where output goes and how the run treats existing output and bad input."""

    output: str
    overwrite: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_side: int | None = DEFAULT_MAX_SIDE
    # Loader processes that read, decode and preprocess; 0: in the main process; None: 0 when
    # the model runs on CPU, up to 4 when it runs on a GPU.
    workers: int | None = None
    prefetch_batches: int = 2  # batches each worker keeps ready
    row_group_rows: int = 1000
    clip_model: str | None = None  # score in the same pass (images decoded once): CLIP id or folder


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
        if self.executor not in ("local", "ray"):
            raise ValueError(f"unknown executor {self.executor!r}; choose local or ray")
