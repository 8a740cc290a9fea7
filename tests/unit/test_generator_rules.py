"""The generator's pure rules: numbering, how a stream must end, what is retried and how long to wait."""
from __future__ import annotations

import random

import pytest

from protocol import messages as m
from services.generator.rules import (BACKOFF_MAX_S, Generation, JobFailed, RetryBeforeFirstToken, retry_after_seconds,
                                      retry_delay, status_failure)
from services.generator.sse import ChunkEvent


def gen() -> Generation:
    return Generation(m.Job("g", [{"role": "user", "content": "hi"}], "mock-1", {}, "h"))


def test_only_chunks_with_text_are_numbered_from_one():
    g = gen()
    sent = [g.take(e) for e in (ChunkEvent(""), ChunkEvent("Hel"), ChunkEvent("lo"), ChunkEvent("", "stop"),
                                ChunkEvent("", None, 3, 2))]
    assert sent == [[], [(False, 1, "Hel")], [(False, 2, "lo")], [], []]
    assert (g.seq, g.length, "".join(g.parts)) == (2, 5, "Hello")
    assert (g.finish_reason, g.prompt_tokens, g.completion_tokens) == ("stop", 3, 2)


def test_a_nul_in_the_models_text_becomes_the_replacement_character():
    g = gen()
    assert g.take(ChunkEvent("a\x00b\x00")) == [(False, 1, "a\ufffdb\ufffd")] and g.length == 4
    assert "".join(g.parts) == "a\ufffdb\ufffd"


def test_a_chunk_with_text_and_a_finish_reason_is_both():
    g = gen()
    assert g.take(ChunkEvent("end", "length")) == [(False, 1, "end")] and (g.seq, g.finish_reason) == (1, "length")


@pytest.mark.parametrize("saw_done, tail", [(True, ""), (False, " (connection closed)")])
def test_no_finish_reason_is_truncated_never_completed(saw_done, tail):
    g = gen()
    g.take(ChunkEvent("partial"))
    with pytest.raises(JobFailed) as err:
        g.check_ended(saw_done)
    assert str(err.value) == "truncated: the stream ended without a finish reason" + tail
    g.take(ChunkEvent("", "stop"))
    g.check_ended(saw_done)  # with a finish reason it ended properly


def test_a_lost_upstream_is_retried_before_the_first_token_and_an_error_after():
    g = gen()
    before = g.lost_upstream("ConnectError", False, "http://x/v1 (OPENAI_BASE_URL)", 60, 600)
    assert isinstance(before, RetryBeforeFirstToken)
    assert str(before) == "upstream unreachable at http://x/v1 (OPENAI_BASE_URL): ConnectError"
    # silence before the first token is the server's queue: waited for up to its own limit, then an error
    # that names it, never retried (a new request would only queue again at the back)
    silent = g.lost_upstream("TimeoutError", True, "http://x/v1 (OPENAI_BASE_URL)", 60, 600)
    assert isinstance(silent, JobFailed) and str(silent).startswith("no first token within 600 s "
                                                                    "(CHATTER_FIRST_TOKEN_MS)")
    g.take(ChunkEvent("some text"))
    after = g.lost_upstream("ReadError", False, "http://x/v1", 60, 600)
    assert isinstance(after, JobFailed) and str(after) == "upstream disconnected after 9 characters: ReadError"
    quiet = g.lost_upstream("TimeoutError", True, "http://x/v1", 1.5, 600)
    assert isinstance(quiet, JobFailed) and "sent nothing for 1.5 s after 9 characters" in str(quiet)


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 599])
def test_retryable_statuses_are_retried_honouring_retry_after(status):
    exc = status_failure(status, "busy", "2.5")
    assert isinstance(exc, RetryBeforeFirstToken) and exc.retry_after == 2.5 and f"HTTP {status}: busy" in str(exc)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_other_statuses_fail_at_once(status):
    exc = status_failure(status, "bad key", "5")
    assert isinstance(exc, JobFailed) and str(exc) == f"upstream refused the request: HTTP {status}: bad key"


@pytest.mark.parametrize("header, seconds", [(None, None), ("", None), ("3", 3.0), ("0.5", 0.5), ("-2", 0.0),
                                             ("Wed, 21 Oct 2015 07:28:00 GMT", None)])
def test_retry_after_header(header, seconds):
    assert retry_after_seconds(header) == seconds


def test_backoff_doubles_with_jitter_up_to_its_cap_and_retry_after_wins():
    rng = random.Random(7)
    delays = [retry_delay(n, None, rng) for n in range(1, 9)]
    for n, delay in enumerate(delays, start=1):
        base = min(BACKOFF_MAX_S, 0.25 * 2 ** (n - 1))
        assert base <= delay <= base * 1.1
    assert delays[-1] <= BACKOFF_MAX_S * 1.1 and delays[1] > delays[0]
    assert retry_delay(1, 7.0, rng) == 7.0


def test_the_servers_own_words_are_kept_however_it_shapes_its_error():
    from services.generator.rules import server_words
    fallback = "Error code: 401"
    assert server_words({"error": {"message": "Invalid API Key", "type": "auth"}}, fallback) == "Invalid API Key"
    assert server_words({"object": "error", "message": "model  not\nfound"}, fallback) == "model not found"
    assert server_words({"error": "unauthorized: bad\n token"}, fallback) == "unauthorized: bad token"
    assert server_words({"detail": "Not authenticated"}, fallback) == "Not authenticated"
    assert server_words("upstream says no", fallback) == "upstream says no"
    assert server_words("<html><body>401</body></html>", fallback) == fallback  # a page is not words
    assert server_words({"error": {"code": 401}}, fallback) == fallback and server_words(None, fallback) == fallback


def test_context_lengths_are_read_where_servers_put_them():
    from services.generator.rules import context_lengths
    models = [{"id": "llama", "max_model_len": 2048}, {"id": "qwen", "context_length": 32768},
              {"id": "plain"}, {"id": "odd", "max_model_len": "big"}, {"id": "flag", "max_model_len": True},
              {"id": "smol", "owned_by": "llamacpp", "meta": {"n_ctx": 2048, "n_ctx_train": 8192}},
              {"id": "bad meta", "meta": "n_ctx"}, "not a model"]
    assert context_lengths(models) == {"llama": 2048, "qwen": 32768, "smol": 2048}


def test_the_server_kind_is_the_owned_by_its_models_agree_on():
    from services.generator.rules import server_kind
    assert server_kind([{"id": "a", "owned_by": "vllm"}, {"id": "b", "owned_by": "vllm"}]) == "vllm"
    assert server_kind([{"id": "a", "owned_by": "vllm"}, {"id": "b", "owned_by": "llamacpp"}]) == ""
    assert server_kind([{"id": "a"}]) == "" and server_kind([]) == "" and server_kind(["x"]) == ""
