"""l. The gateway: the same load straight to the coordinator (``chatter loadtest``) and through the gateway with
``openai`` SDK users (``chatter loadtest --http``), at 50 and 500 streams of 200 tokens at 20 tok/s, in one run:
each process's CPU per delivered token (the gateway's among them), the way from the mock's write to the client,
TTFT, and the latency of a resume by ``starting_after`` (a fifth of the HTTP streams dropped halfway)."""
from __future__ import annotations

import time

from tools.loadhttp import run_http_loadtest
from tools.loadtest import LoadSpec, run_loadtest

KEPT = ("streams", "count", "completed", "errors", "mismatches", "tokens", "elapsed_s", "backend_cpu_us_per_token",
        "cpu_us_per_token", "ttft_ms", "upstream_to_client_ms", "delivery_latency_ms", "resume_latency_ms",
        "resumed", "gateway_cpu_us_per_token", "sdk_client_cpu_us_per_token", "errors_detail")


def bench_gateway(quick: bool) -> dict:
    levels = [20, 50] if quick else [50, 500]
    tokens = 60 if quick else 200
    rows = []
    for streams in levels:
        spec = LoadSpec(streams=streams, count=streams, tokens=tokens, tps=20.0)
        direct = run_loadtest(spec, spawn=True)
        http = run_http_loadtest(LoadSpec(streams=streams, count=streams, tokens=tokens, tps=20.0), spawn=True)
        rows.append({"streams": streams, "direct": {k: direct[k] for k in KEPT if k in direct},
                     "http": {k: http[k] for k in KEPT if k in http}})
    return {"levels": rows, "tokens": tokens, "tps": 20.0, "resume_frac": 0.2,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
