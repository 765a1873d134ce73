"""Engines other than in-process transformers: an OpenAI-compatible server on loopback, a vLLM
stand-in with vLLM's call signature, and out-of-memory back-off."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import types

import pyarrow.parquet as pq
import pytest
import torch

from recaption.captioning.pipeline import CaptionPipeline
from recaption.config import CaptionConfig, ExecutorConfig, RunConfig, ServerOptions
from recaption.models.registry import PAPER_PROMPT
from recaption.readers import discover_shards

from ..conftest import write_shards
from ..openai_server import LoopbackServer, completion, default_behaviour, describe, image_of


def expected_caption(i: int) -> str:
    """What the loopback server answers for record i of make_records (40+4i by 30+3i pixels)."""
    return f"an image of {40 + 4 * i} by {30 + 3 * i} pixels ({PAPER_PROMPT[:24]})"


def run_openai(shards, out, endpoints, **options):
    server = {"endpoints": endpoints, "retry_backoff": 0.01, "concurrency": 4, **options}
    cfg = CaptionConfig(engine="openai", model="served-llava", max_new_tokens=32, batch_size=3,
                        server=ServerOptions(**server))
    pipeline = CaptionPipeline(cfg, RunConfig(output=str(out)))
    try:
        return pipeline.run(discover_shards(shards))
    finally:
        pipeline.captioner.close()


def caption_with(captioner, shards, out):
    pipeline = CaptionPipeline(captioner.config, RunConfig(output=str(out)), captioner)
    return pipeline.run(discover_shards(shards))


def captions(out, shard="00000"):
    return [r["re_caption"] for r in rows(out, shard)]


def rows(out, shard="00000"):
    return pq.read_table(out / f"{shard}.parquet").to_pylist()


def test_openai_engine_spreads_requests_and_keeps_row_order(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("RECAP_TEST_KEY", "sk-secret-123")
    shards = write_shards(tmp_path / "in", n_shards=2, per_shard=10)
    caplog.set_level(logging.DEBUG)
    with LoopbackServer() as a, LoopbackServer() as b:
        summary = run_openai(shards, tmp_path / "out", [a.url, b.url + "/v1"], api_key_env="RECAP_TEST_KEY")
        assert len(summary.failed) == 0 and summary.rows == 20
        for shard in ("00000", "00001"):
            captions = [r["re_caption"] for r in rows(tmp_path / "out", shard)]
            assert captions == [expected_caption(i) for i in range(10)]
            assert {r["status"] for r in rows(tmp_path / "out", shard)} == {"ok"}
        # Both servers served, never more than `concurrency` at once, and requests overlapped.
        assert len(a.state.requests) > 0 and len(b.state.requests) > 0
        assert len(a.state.requests) + len(b.state.requests) == 20
        assert max(a.state.max_active, b.state.max_active) <= 4
        assert a.state.max_active + b.state.max_active > 2
        body = a.state.requests[0]
        assert body["model"] == "served-llava" and body["temperature"] == 0.0 and body["max_tokens"] == 32
        assert a.state.headers[0]["Authorization"] == "Bearer sk-secret-123"
    assert "sk-secret-123" not in caplog.text


def test_openai_engine_retries_429_and_5xx(tmp_path):
    shards = write_shards(tmp_path / "in", n_shards=1, per_shard=6)

    async def flaky(body, state):
        if state.counter <= 2:
            return 429, "slow down", {"Retry-After": "0"}
        if state.counter <= 4:
            return 503, "overloaded", {}
        return await default_behaviour(body, state)

    with LoopbackServer(flaky) as server:
        summary = run_openai(shards, tmp_path / "out", [server.url])
        assert server.state.counter == 6 + 4  # every fault retried once, nothing asked twice after success
    assert summary.rows == 6 and len(summary.failed) == 0
    assert [r["re_caption"] for r in rows(tmp_path / "out")] == [expected_caption(i) for i in range(6)]


def test_openai_engine_failures_stay_with_their_row(tmp_path):
    shards = write_shards(tmp_path / "in", n_shards=1, per_shard=6)

    async def faulty(body, state):
        width = image_of(body).width
        if width == 44:  # record 1: the server always errors
            return 500, "internal error", {}
        if width == 48:  # record 2: never answers in time
            await asyncio.sleep(3)
        if width == 52:  # record 3: a reply without choices
            return 200, {"object": "error"}, {}
        if width == 56:  # record 4: hit the token limit
            return 200, completion(describe(body), finish_reason="length", tokens=32), {}
        return await default_behaviour(body, state)

    with LoopbackServer(faulty) as server:
        summary = run_openai(shards, tmp_path / "out", [server.url], retries=1, request_timeout=0.5)
    assert len(summary.failed) == 0, "a failing request must not fail the shard"
    got = rows(tmp_path / "out")
    assert [r["status"] for r in got] == ["ok", "caption_error", "caption_error", "caption_error", "ok", "ok"]
    assert "HTTP 500" in got[1]["error"] and "2 attempt(s)" in got[1]["error"]
    assert "no reply within 0.5s" in got[2]["error"]
    assert "no choices" in got[3]["error"] and "1 attempt(s)" in got[3]["error"]
    assert got[4]["re_truncated"] is True and got[5]["re_truncated"] is False
    assert got[1]["re_caption"] is None and got[0]["re_caption"] == expected_caption(0)


def test_openai_engine_needs_an_endpoint():
    with pytest.raises(ValueError, match="--endpoint"):
        CaptionPipeline(CaptionConfig(engine="openai"), RunConfig(output="unused"))


def _echo_credentials(status: int):
    """A server that rejects every request but the second image's and echoes the credentials it
    got, as some do. (One caption must succeed, or the shard is left to redo, unwritten.)"""

    seen: set = set()

    async def behaviour(body, state):
        sent = state.headers[-1].get("Authorization", "")
        if "44 by 33 pixels" in describe(body):  # record 1 of make_records
            return 200, completion(describe(body)), {}
        request = json.dumps(body["messages"], sort_keys=True)
        if request not in seen:  # first try: retried, and its message is logged on the way
            seen.add(request)
            return 429, {"error": {"message": f"rate limited for {sent}"}}, {"Retry-After": "0"}
        return status, {"error": {"message": f"Incorrect API key provided: {sent}", "header": sent}}, {}

    return behaviour


def caption_cli(*args):
    from typer.testing import CliRunner

    from recaption.cli import app

    return CliRunner().invoke(app, ["caption", *[str(a) for a in args], "--engine", "openai",
                                    "--model", "served", "--max-new-tokens", "8"])


def test_an_api_key_echoed_by_the_server_is_never_stored_or_printed(tmp_path, monkeypatch, caplog):
    key = "org-key-0123456789abcdef"
    monkeypatch.setenv("RECAP_ECHO_KEY", key)
    caplog.set_level(logging.DEBUG)
    write_shards(tmp_path / "in", n_shards=1, per_shard=2)
    with LoopbackServer(_echo_credentials(400)) as server:
        result = caption_cli(tmp_path / "in", "-o", tmp_path / "out", "--endpoint", server.url,
                             "--api-key-env", "RECAP_ECHO_KEY", "--retries", "1", "--concurrency", "1")
        assert server.state.headers[0]["Authorization"] == f"Bearer {key}"  # it was sent
    assert result.exit_code == 0, result.output
    errors = [r["error"] for r in rows(tmp_path / "out") if r["status"] == "caption_error"]
    assert len(errors) == 1
    assert all("HTTP 400" in e and "Incorrect API key provided: Bearer ***" in e for e in errors), errors
    assert "rate limited" in caplog.text, "the retry was logged"
    for text in [*errors, result.output, caplog.text]:
        assert key not in text and key[:12] not in text


def test_endpoint_url_credentials_authenticate_and_are_never_shown(tmp_path, monkeypatch, caplog):
    import base64

    monkeypatch.setenv("OPENAI_API_KEY", "sk-also-set-in-the-environment-123")
    caplog.set_level(logging.DEBUG)
    write_shards(tmp_path / "in", n_shards=1, per_shard=2)
    with LoopbackServer(_echo_credentials(401)) as server:
        endpoint = server.url.replace("http://", "http://captioner:pw-9876543210@") + "/v1"
        result = caption_cli(tmp_path / "in", "-o", tmp_path / "out", "--endpoint", endpoint,
                             "--retries", "1", "--concurrency", "1")
        basic = "Basic " + base64.b64encode(b"captioner:pw-9876543210").decode()
        assert server.state.headers and all(h["Authorization"] == basic for h in server.state.headers)
    assert result.exit_code == 0, result.output
    errors = [r["error"] for r in rows(tmp_path / "out") if r["status"] == "caption_error"]
    assert len(errors) == 1
    assert all(e.startswith("request failed after 2 attempt(s): http://***@127.0.0.1") for e in errors)
    assert all("HTTP 401" in e for e in errors), errors
    for text in [*errors, result.output, caplog.text]:
        for secret in ("pw-9876543210", basic.split()[1], "sk-also-set-in-the-environment-123"):
            assert secret not in text, (secret, text)


def test_judge_never_logs_an_echoed_api_key(tmp_path, monkeypatch, caplog):
    from typer.testing import CliRunner

    from recaption.cli import app

    key = "judge-key-0123456789abcdef"
    monkeypatch.setenv("RECAP_JUDGE_KEY", key)
    caplog.set_level(logging.DEBUG)
    shards = write_shards(tmp_path / "in", n_shards=1, per_shard=2)
    with LoopbackServer() as server:
        run_openai(shards, tmp_path / "out", [server.url])
    with LoopbackServer(_echo_credentials(400)) as server:
        result = CliRunner().invoke(app, ["judge", str(tmp_path / "out"), "--endpoint", server.url,
                                          "--model", "j", "--fraction", "1", "--retries", "1",
                                          "--api-key-env", "RECAP_JUDGE_KEY"])
        assert server.state.requests, "the judge asked"
    assert result.exit_code == 0, result.output
    assert "Incorrect API key provided: Bearer ***" in caplog.text, caplog.text
    assert key not in caplog.text and key not in result.output
    assert "request_failed" in {r["re_judge_status"] for r in rows(tmp_path / "out")}


# -- vLLM, through a stand-in with vLLM's call signature ----------------------------------------------

class _StandInVLLM:
    """`vllm.LLM` and `vllm.SamplingParams` as far as the adapter uses them, generating with the
    tiny model through transformers one request at a time (as vLLM's scheduler would see them)."""

    calls: list = []

    class SamplingParams:
        def __init__(self, *, temperature=1.0, top_k=0, max_tokens=16, seed=None):
            self.temperature, self.top_k, self.max_tokens, self.seed = temperature, top_k, max_tokens, seed

    class LLM:
        def __init__(self, model, *, dtype="auto", seed=0, limit_mm_per_prompt=None):
            from transformers import AutoProcessor, LlavaForConditionalGeneration

            assert limit_mm_per_prompt == {"image": 1}
            self.processor = AutoProcessor.from_pretrained(model)
            self.model = LlavaForConditionalGeneration.from_pretrained(model).eval()

        def get_tokenizer(self):
            return self.processor.tokenizer

        def generate(self, prompts, sampling_params=None, *, use_tqdm=True):
            _StandInVLLM.calls.append((prompts, sampling_params))
            outputs = []
            for request in prompts:
                assert set(request) == {"prompt", "multi_modal_data"}
                assert request["prompt"].count("<image>") == 1
                params = sampling_params
                assert params.temperature == 0.0
                inputs = self.processor(images=[request["multi_modal_data"]["image"]],
                                        text=[request["prompt"]], return_tensors="pt")
                with torch.inference_mode():
                    out = self.model.generate(**inputs, max_new_tokens=params.max_tokens, do_sample=False)
                tokens = out[0, inputs["input_ids"].shape[1]:].tolist()
                eos = self.model.generation_config.eos_token_id
                eos = set(eos if isinstance(eos, list) else [eos])
                end = next((i for i, t in enumerate(tokens) if t in eos), None)
                kept = tokens if end is None else tokens[: end + 1]
                completion = types.SimpleNamespace(
                    text=self.processor.tokenizer.decode(kept, skip_special_tokens=True), token_ids=kept,
                    finish_reason="stop" if end is not None else "length")
                outputs.append(types.SimpleNamespace(outputs=[completion]))
            return outputs



def _install_stand_in_vllm(monkeypatch, llm) -> None:
    """`import vllm` gives the stand-in: `llm` as vllm.LLM, its SamplingParams."""
    module = types.ModuleType("vllm")
    module.LLM, module.SamplingParams = llm, _StandInVLLM.SamplingParams
    monkeypatch.setitem(sys.modules, "vllm", module)


def test_vllm_adapter_against_stand_in_matches_transformers_engine(tmp_path, monkeypatch, captioner):
    _install_stand_in_vllm(monkeypatch, _StandInVLLM.LLM)
    shards = write_shards(tmp_path / "in", n_shards=1, per_shard=5)
    caption_with(captioner, shards, tmp_path / "hf")
    vllm_cfg = CaptionConfig(model="tiny", max_new_tokens=captioner.config.max_new_tokens,
                             engine="vllm", batch_size=4)
    summary = CaptionPipeline(vllm_cfg, RunConfig(output=str(tmp_path / "vllm"))).run(discover_shards(shards))
    assert summary.rows == 5
    assert len(_StandInVLLM.calls) == 2  # batches of 4 and 1
    hf, vl = rows(tmp_path / "hf"), rows(tmp_path / "vllm")
    assert [r["re_caption"] for r in vl] == [r["re_caption"] for r in hf]
    assert [r["re_truncated"] for r in vl] == [r["re_truncated"] for r in hf]


def test_vllm_engine_says_what_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import fails
    from recaption.engines.vllm_engine import VLLMCaptioner

    with pytest.raises(RuntimeError, match="pip install vllm"):
        VLLMCaptioner(CaptionConfig(engine="vllm")).setup()


def test_vllm_engine_that_cannot_load_the_model_says_so_in_one_line(monkeypatch, tmp_path):
    class RefusingLLM:
        def __init__(self, model, **_):
            raise ValueError("The model's max seq len (4096) is larger than the KV cache\nmore")

    _install_stand_in_vllm(monkeypatch, RefusingLLM)
    from recaption.engines.vllm_engine import VLLMCaptioner
    from recaption.models.loading import ModelError

    with pytest.raises(ModelError, match=r"^cannot load model tiny: The model's max seq len \(4096\)[^\n]*$"):
        VLLMCaptioner(CaptionConfig(engine="vllm")).setup()


# -- out-of-memory back-off ------------------------------------------------------------------------

def test_out_of_memory_halves_the_batch_and_keeps_every_caption(tmp_path, monkeypatch, captioner):
    shards = write_shards(tmp_path / "in", n_shards=1, per_shard=9)
    caption_with(captioner, shards, tmp_path / "fits")
    real_generate = captioner.model.generate
    sizes = []

    def small_gpu(**kwargs):
        sizes.append(kwargs["input_ids"].shape[0])
        if kwargs["input_ids"].shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_generate(**kwargs)

    monkeypatch.setattr(captioner.model, "generate", small_gpu)
    monkeypatch.setattr(captioner, "max_rows", 1 << 30)
    summary = caption_with(captioner, shards, tmp_path / "oom")
    assert summary.rows == 9 and summary.status_counts == {"ok": 9}
    assert captioner.max_rows == 2
    assert sizes[:3] == [8, 4, 2]  # halved until it fits, then kept small for the next batch
    assert max(sizes[3:]) <= 2
    assert captions(tmp_path / "oom") == captions(tmp_path / "fits")


def test_a_server_that_is_down_leaves_the_shard_to_redo(tmp_path):
    """Every request failing is the engine failing, not the data: no .done, exit code 1, and the
    rerun with the server up captions the shard."""
    import socket

    write_shards(tmp_path / "in", 1, 3)
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    summary = run_openai([str(tmp_path / "in")], tmp_path / "out", [dead], retries=0)
    assert [r.outcome for r in summary.results] == ["failed"]
    assert "every caption failed (3 rows)" in summary.failed[0].error
    assert not (tmp_path / "out" / "00000.done").exists()
    assert not (tmp_path / "out" / "00000.parquet").exists()
    with LoopbackServer(default_behaviour) as server:
        again = run_openai([str(tmp_path / "in")], tmp_path / "out", [server.url])
    assert [r.outcome for r in again.results] == ["done"]
    assert [r["status"] for r in pq.read_table(tmp_path / "out" / "00000.parquet").to_pylist()] == ["ok"] * 3


def test_retry_failed_captions_again_the_shards_with_caption_errors(tmp_path):
    write_shards(tmp_path / "in", 1, 3)
    out = tmp_path / "out"
    failing = {"on": True}

    async def flaky(body, state):
        if failing["on"] and "44 by 33 pixels" in describe(body):  # record 1 of make_records
            return 400, {"error": {"message": "bad request"}}, {}
        return await default_behaviour(body, state)

    def run(**run_options):
        cfg = CaptionConfig(engine="openai", model="served", max_new_tokens=32, batch_size=3,
                            server=ServerOptions(endpoints=[server.url], retries=0))
        pipeline = CaptionPipeline(cfg, RunConfig(output=str(out), **run_options))
        try:
            return pipeline.run(discover_shards([str(tmp_path / "in")]))
        finally:
            pipeline.captioner.close()

    with LoopbackServer(flaky) as server:
        first = run()
        assert first.results[0].status_counts == {"ok": 2, "caption_error": 1}
        kept = pq.read_table(out / "00000.parquet")
        url = server.url
        server.url = "http://127.0.0.1:9"  # down: the retry fails whole, and must lose nothing
        assert [r.outcome for r in run(retry_failed=True).results] == ["failed"]
        assert (out / "00000.done").exists() and pq.read_table(out / "00000.parquet").equals(kept)
        server.url = url
        failing["on"] = False
        assert [r.outcome for r in run().results] == ["skipped"]  # complete: a plain rerun keeps it
        again = run(retry_failed=True)
    assert [r.outcome for r in again.results] == ["done"]
    assert [r["status"] for r in pq.read_table(out / "00000.parquet").to_pylist()] == ["ok"] * 3


def test_a_caption_that_echoes_the_credentials_is_stored_masked(tmp_path, monkeypatch):
    """A server whose reply text holds the API key, or the basic-auth token without its `Basic `
    prefix: the stored caption has the secret masked, and the rest of the text kept."""
    import base64

    key = "sk-echoed-key-0123456789"
    monkeypatch.setenv("RECAP_ECHO_KEY", key)

    async def echo(body, state):
        sent = state.headers[-1].get("Authorization", "")
        return 200, completion(f"a basic table; token {sent.split(' ', 1)[-1]}"), {}

    write_shards(tmp_path / "in", n_shards=1, per_shard=2)
    with LoopbackServer(echo) as server:
        keyed = caption_cli(tmp_path / "in", "-o", tmp_path / "keyed", "--endpoint", server.url,
                            "--api-key-env", "RECAP_ECHO_KEY")
        basic = caption_cli(tmp_path / "in", "-o", tmp_path / "basic", "--endpoint",
                            server.url.replace("http://", "http://cap:pw-0123456789@"))
    assert keyed.exit_code == 0 and basic.exit_code == 0, keyed.output + basic.output
    token = base64.b64encode(b"cap:pw-0123456789").decode()
    for out in ("keyed", "basic"):
        captions = [r["re_caption"] for r in rows(tmp_path / out)]
        assert captions == ["a basic table; token ***"] * 2, captions
    assert token not in basic.output and key not in keyed.output


@pytest.mark.parametrize("endpoint, expected", [
    ("http://h:8000", "http://h:8000/v1/chat/completions"),
    ("http://h:8000/v1/", "http://h:8000/v1/chat/completions"),
    ("https://h/openai/deployments/d?api-version=2024-06-01",
     "https://h/openai/deployments/d/v1/chat/completions?api-version=2024-06-01"),
    ("https://h/v1/chat/completions?api-version=1", "https://h/v1/chat/completions?api-version=1"),
])
def test_an_endpoint_with_a_query_keeps_it_after_the_path(endpoint, expected):
    from recaption.engines.openai_engine import chat_completions_url

    assert chat_completions_url(endpoint) == expected


def test_a_run_of_one_token_stops_its_caption_early_and_says_so(tmp_path, captioner):
    """A captioner stuck on one token (",,,," on photos it cannot read) stops after LOOP_RUN of
    them instead of spending the whole budget: truncated, flagged by its text, and the tokens
    counted are those generated."""
    from recaption.engines.base import LOOP_RUN, loop_end
    from recaption.engines.transformers_engine import stop_on_token_run

    assert loop_end([1, 2, *[5] * LOOP_RUN, 6]) == 2 + LOOP_RUN and loop_end([1, 2, 1, 2] * 20) is None
    ids = torch.tensor([[9, 9, *[4] * LOOP_RUN], [9, 9, *range(LOOP_RUN)]])
    assert stop_on_token_run(2)(ids, None).tolist() == [True, False]

    comma = captioner.processor.tokenizer.convert_tokens_to_ids(",")
    lm_head = captioner.model.get_output_embeddings()
    hook = lm_head.register_forward_hook(lambda module, args, out: out.index_add(
        -1, torch.tensor([comma]), torch.full((*out.shape[:-1], 1), 1e4, dtype=out.dtype)))
    try:
        shards = write_shards(tmp_path / "in", n_shards=1, per_shard=3)
        config = CaptionConfig(model=captioner.config.model, max_new_tokens=64, batch_size=3)
        pipeline = CaptionPipeline(config, RunConfig(output=str(tmp_path / "out")), captioner)
        pipeline.run(discover_shards(shards))
    finally:
        hook.remove()
    rows = pq.read_table(tmp_path / "out" / "00000.parquet").to_pylist()
    assert all(r["re_truncated"] and r["re_degenerate"] for r in rows), rows
    stats = json.loads((tmp_path / "out" / "00000_stats.json").read_text())
    assert stats["tokens_generated"] == 3 * LOOP_RUN, "stopped at the loop, not at max_new_tokens (64)"


def test_a_text_only_pass_on_an_openai_server_sends_text_alone(tmp_path, captioner):
    """The fusion step on an OpenAI-compatible server: the request holds the filled-in prompt (the
    earlier pass's caption and the alt-text), no image; the reply is the pass's column."""
    from recaption.captioning.pipeline import CaptionPipeline
    from recaption.executors.run import check_run
    from recaption.readers import discover_shards

    async def echo(body, state):
        return 200, completion("fused: " + body["messages"][0]["content"][-40:]), {}

    shards = write_shards(tmp_path / "in", n_shards=1, per_shard=3)
    prompt = "Fuse {re_caption} with {caption}"
    with LoopbackServer(echo) as server:
        fused = {"name": "fused", "model": "served-llm", "engine": "openai", "endpoint": server.url,
                 "prompt": prompt, "max_new_tokens": 20}
        config = CaptionConfig(model="tiny", max_new_tokens=8, passes=[fused])
        pipeline = CaptionPipeline(config, RunConfig(output=str(tmp_path / "out")), captioner)
        pipeline.run(discover_shards(shards))
        bodies = server.state.requests
    assert len(bodies) == 3 and all(isinstance(b["messages"][0]["content"], str) for b in bodies)
    assert bodies[0]["model"] == "served-llm" and bodies[0]["max_tokens"] == 20
    for row, body in zip(rows(tmp_path / "out"), bodies, strict=True):
        assert body["messages"][0]["content"] == f"Fuse {row['re_caption']} with {row['org_caption']}"
        assert row["re_caption_fused"] == "fused: " + body["messages"][0]["content"][-40:]
    marker = json.loads((tmp_path / "out" / "00000.done").read_text())
    assert "endpoint" not in marker["passes"][0] and marker["passes"][0]["engine"] == "openai"

    no_server = CaptionConfig(passes=[{**fused, "endpoint": None}])
    with pytest.raises(ValueError, match="pass fused: engine openai needs a server"):
        check_run(no_server, RunConfig(output=str(tmp_path / "o2")), ExecutorConfig())


class _StandInTextVLLM:
    """`vllm.LLM` for a text model (no images), generating greedily with transformers."""

    class LLM:
        def __init__(self, model, *, dtype="auto", seed=0):
            from transformers import AutoModelForCausalLM, AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(model)
            self.model = AutoModelForCausalLM.from_pretrained(model).eval()

        def get_tokenizer(self):
            return self.tokenizer

        def generate(self, prompts, sampling_params=None, *, use_tqdm=True):
            outputs = []
            for request in prompts:
                assert set(request) == {"prompt"} and sampling_params.temperature == 0.0
                inputs = self.tokenizer([request["prompt"]], return_tensors="pt", add_special_tokens=False)
                with torch.inference_mode():
                    out = self.model.generate(**inputs, max_new_tokens=sampling_params.max_tokens,
                                              do_sample=False)
                tokens = out[0, inputs["input_ids"].shape[1]:].tolist()
                text = self.tokenizer.decode(tokens, skip_special_tokens=True)
                completion = types.SimpleNamespace(text=text, token_ids=tokens, finish_reason="length")
                outputs.append(types.SimpleNamespace(outputs=[completion]))
            return outputs


def test_a_text_only_pass_on_vllm_matches_transformers(tmp_path, monkeypatch, captioner):
    _install_stand_in_vllm(monkeypatch, _StandInTextVLLM.LLM)
    shards = write_shards(tmp_path / "in", n_shards=1, per_shard=2)
    fused = {"name": "fused", "model": "tiny-text", "prompt": "Fuse {re_caption} with {caption}",
             "max_new_tokens": 6}
    columns = {}
    for engine in ("transformers", "vllm"):
        config = CaptionConfig(model="tiny", max_new_tokens=8, batch_size=1,
                               passes=[{**fused, "engine": engine}])
        pipeline = CaptionPipeline(config, RunConfig(output=str(tmp_path / engine)), captioner)
        pipeline.run(discover_shards(shards))
        columns[engine] = [r["re_caption_fused"] for r in rows(tmp_path / engine)]
    assert columns["vllm"] == columns["transformers"] and all(columns["vllm"])
