"""``make bench``'s RESULTS.md: each section's table from results.json, and the targets read from the run."""
from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).resolve().parent


def gateway_table(results: dict) -> list[str]:
    g = results.get("gateway")
    if not g:
        return []
    lines = ["", "## l. The gateway", "",
             f"{g['tokens']} tokens at {g['tps']:g} tok/s a stream; straight to the coordinator (`chatter loadtest`) "
             "and through the gateway with `openai` SDK users streaming the Responses API (`chatter loadtest "
             f"--http`, a share of {g['resume_frac']:g} dropped halfway and resumed by `starting_after`), in one run "
             f"({g['date']}). The SDK users run in worker processes on the same machine: "
             + "; ".join(f"at {row['streams']} streams they spent "
                         f"{row['http']['sdk_client_cpu_us_per_token'] * row['http']['tokens'] / row['http']['elapsed_s'] / 1e6:.2f}"
                         " CPU-seconds a second" for row in g["levels"] if row["http"].get("sdk_client_cpu_us_per_token"))
             + f" of this machine's {results['machine']['cores']} cores, so where they and the stack need more than "
             "there is, the latencies through the gateway measure the machine's saturation, not the gateway; CPU per "
             "token is each process's own accounting either way.", "",
             "| streams | path | mismatches / errors | backend µs/token | gateway µs/token | SDK users µs/token "
             "| mock → client p50/p99 ms | TTFT p50/p99 ms | resume p50/p99 ms |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in g["levels"]:
        for path in ("direct", "http"):
            r = row[path]
            up, ttft, resume = r["upstream_to_client_ms"], r["ttft_ms"], r.get("resume_latency_ms") or {}
            lines.append(
                f"| {row['streams']} | {'through the gateway' if path == 'http' else 'straight'} | "
                f"{r['mismatches']} / {r['errors']} | {r['backend_cpu_us_per_token']} | "
                f"{r.get('gateway_cpu_us_per_token') or '–'} | {r.get('sdk_client_cpu_us_per_token') or '–'} | "
                f"{up['p50']} / {up['p99']} | {ttft['p50']} / {ttft['p99']} | "
                f"{resume.get('p50', '–')} / {resume.get('p99', '–')} |")
    return lines


def chaos_table(h: dict) -> list[str]:
    r = h["recovery_ms"]
    lines = [f"`CHATTER_CONTINUE_STYLE={h.get('continue_style', 'none')}`: errors without a generator kill "
             f"{h['errors_without_a_generator_kill']}", "",
             "| killed | trials | replies | completed | errors | interrupted | non-terminal | mismatches "
             "| lost acked chars | duplicates | recovery max ms |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for kind, k in h["by_kind"].items():
        lines.append(f"| {kind} | {k['trials']} | {k['streams']} | {k['completed']} | {k['errors']} | "
                     f"{k['interrupted']} | {k['non_terminal']} | {k['mismatches']} | {k['lost_acked_chars']} | "
                     f"{k['duplicates']} | {k['recovery_ms_max']} |")
    lines.append(f"| **all** | {h['trials']} | {h['streams']} | {h['completed']} | {h['errors']} | "
                 f"{h['interrupted']} | {h['non_terminal']} | {h['mismatches']} | {h['lost_acked_chars']} | "
                 f"{h['duplicates']} | p50 {r['p50']}, p99 {r['p99']}, max {r['max']}; "
                 f"not recovered in 30 s: {r.get('unrecovered', 0)} |")
    return lines + [""]


def conversation_table(results: dict) -> list[str]:
    now = results.get("conversation")
    if not now:
        return []
    before = json.loads((OUT / "conversation_before.json").read_text())
    lines = ["", "## j. A long conversation's storage", "",
             f"One session of {now['turns']} turns: ~{now['chars_per_message']}-character messages and replies, "
             "SQLite, a real stack (`bench/conversation_bytes.py`). Database bytes (pages in use, the log copied in) "
             f"per byte of conversation text; before: the same script against {before['commit']}, where each reply "
             "kept a copy of its prompt and preview.", "",
             "| turns | conversation bytes | database bytes now | per text byte now | per text byte before |",
             "|---|---|---|---|---|"]
    then = {row["turns"]: row for row in before["by_turns"]}
    for row in now["by_turns"]:
        old = then.get(row["turns"], {})
        lines.append(f"| {row['turns']} | {row['conversation_bytes']:,} | {row['database_bytes']:,} | "
                     f"{row['database_bytes_per_text_byte']} | {old.get('database_bytes_per_text_byte', '–')} |")
    lines.append(f"\nFrom the first row to the last the ratio changes {now['growth']}× now, {before['growth']}× before.")
    return lines


def search_table(results: dict) -> list[str]:
    k = results.get("search")
    if not k:
        return []
    index = (f"the index {k['index_bytes']:,} bytes, {k['index_per_text_byte']} per byte of text"
             if k.get("index_bytes") else "the index's size not measured (no dbstat table in this SQLite)")
    lines = ["", "## k. Search", "",
             f"{k['sessions']:,} sessions and {k['messages']:,} messages on SQLite, built in {k['build_s']} s through "
             f"the store's schema (its triggers index each message): {k['text_bytes']:,} bytes of text, {index}. "
             f"Each kind of query {k['queries_each']} times through a real coordinator and persister "
             "(`chatter search`'s rpc; `bench/search.py`).", "",
             "| query | p50 ms | p99 ms | hits a query (at most 20) |", "|---|---|---|---|"]
    for kind, row in k["latency"].items():
        lines.append(f"| {kind} | {row['p50_ms']} | {row['p99_ms']} | {row.get('hits_per_query', '–')} |")
    return lines


def write_markdown(results: dict) -> str:
    mach = results["machine"]
    lines = ["# Benchmark results", "",
             f"Machine: {mach['cpu']}, {mach['cores']} cores, {mach['memory_gb']} GB; Python {mach['python']}; "
             f"{mach['date']}. The mock LLM and the load client run on the same machine.", "",
             "Reproduce: `make bench` (or `python bench/run.py --quick` for a short run).", ""]
    a = results["coordinator_alone"]
    lines += ["## a. The coordinator alone", "",
              f"{a['deltas']} deltas in batches of {a['batch']} ({a['generations_completed_whole']} replies completed "
              f"whole): **{a['deltas_per_s']:,} deltas/s**, "
              f"{a['coordinator_cpu_us_per_delta']} µs coordinator CPU per delta (target ≥ 200,000 deltas/s).", ""]
    b = results["generator_alone"]
    lines += ["## b. The generator alone against the mock", "",
              f"{b['fast_path']['streams']} streams at 20 tok/s: raw-SSE fast path "
              f"**{b['fast_path']['generator_cpu_us_per_chunk']} µs** CPU per chunk (whole generator process); "
              f"the openai client's typed iteration **{b['typed_iteration']['client_cpu_us_per_chunk']} µs** per chunk "
              f"(in-process, same mock, same run): typed / fast = {b['typed_over_fast']}.", ""]
    lines += ["## c. The whole stack, and d. the peer side by side", "",
              "| streams | mismatches | errors | delivery p50/p99 ms | upstream → client p50/p99 ms | TTFT p50/p99 ms "
              "| cancel p99 ms | tok/s "
              "| backend CPU µs/token | coordinator / persister / generator µs/token | coordinator RSS MB "
              "| DB reply text / disk bytes per content byte | peer client CPU µs/token | peer TTFT p50/p99 ms "
              "| peer / backend CPU |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row, peer in zip(results["whole_stack"], results["peer"]):
        cpu = row["cpu_us_per_token"]
        gen_cpu = sum(v for k, v in cpu.items() if k.startswith("generator") and v)
        ratio = round(peer["client_cpu_us_per_token"] / row["backend_cpu_us_per_token"], 2)
        lines.append(
            f"| {row['streams']} | {row['mismatches']} | {row['errors']} | {row['delivery_latency_ms']['p50']} / "
            f"{row['delivery_latency_ms']['p99']} | {(row.get('upstream_to_client_ms') or {}).get('p50')} / "
            f"{(row.get('upstream_to_client_ms') or {}).get('p99')} | {row['ttft_ms']['p50']} / {row['ttft_ms']['p99']} | "
            f"{row['cancel_latency_ms']['p99']} | {row['tokens_per_s']} | {row['backend_cpu_us_per_token']} | "
            f"{cpu.get('coordinator')} / {cpu.get('persister')} / {round(gen_cpu, 1)} | {row['rss_mb'].get('coordinator')} | "
            f"{row['db_text_bytes_per_content_byte']} / {row['db_bytes_per_content_byte']} | "
            f"{peer['client_cpu_us_per_token']} | {peer['ttft_ms']['p50']} / "
            f"{peer['ttft_ms']['p99']} | {ratio} |")
    lines += write_databases(results)
    lines += conversation_table(results)
    lines += search_table(results)
    lines += gateway_table(results)
    lines += ["", "## The targets, read from this run", "", "| target | figure | met |", "|---|---|---|"]
    lines += [f"| {name} | {figure} | {'yes' if met else '**no**'} |" for name, figure, met in targets(results)]
    lines += ["", "Where the time and the bytes go, with profiles, and what would close each gap: "
              "`docs/PERFORMANCE.md`.", "", "Raw figures: `bench/results.json`.", ""]
    return "\n".join(lines)


def write_databases(results: dict) -> list[str]:
    lines = []
    e = results.get("databases")
    if e and "skipped" not in e:
        lines += ["", f"## e. PostgreSQL against SQLite ({e['sqlite']['streams']} streams each, same run)", "",
                  "| database | mismatches | errors | delivery p50/p99 ms | persister CPU µs/token "
                  "| PG server CPU µs/token | disk bytes per content byte | of which WAL | written by |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for name in ("sqlite", "postgresql"):
            row, server = e[name], e[name]["db_server"] or {}
            lines.append(f"| {name} | {row['mismatches']} | {row['errors']} | {row['delivery_latency_ms']['p50']} / "
                         f"{row['delivery_latency_ms']['p99']} | {row['cpu_us_per_token'].get('persister')} | "
                         f"{server.get('cpu_us_per_token', '–')} | {row['db_bytes_per_content_byte']} | "
                         f"{server.get('wal_bytes_per_content_byte', '–')} | {row['db_bytes_source']} |")
    elif e:
        lines += ["", f"## e. PostgreSQL against SQLite: not run ({e['skipped']})"]
    f = results.get("hammer")
    if f and "skipped" not in f:
        q = f["quiet"]["delivery_latency_ms"]
        lines += ["", f"## f. Database reads hammered while {f['streams']} streams run (PostgreSQL)", "",
                  f"4 clients ask, in rounds, for the sessions list, a prefix of one of {f['stored_sessions']} "
                  "sessions not in the coordinator's memory, and its history (every answer checked), while the "
                  f"same load test runs again. Quiet: delivery p50/p99 {q['p50']} / {q['p99']} ms, coordinator "
                  f"{f['quiet']['cpu_us_per_token'].get('coordinator')} µs/token.", "",
                  "| hammer | requests/s | wrong / refused | database reads | delivery p50/p99 ms | p99 hammered / quiet "
                  "| coordinator CPU µs/token | mismatches |", "|---|---|---|---|---|---|---|---|"]
        for run in f["hammered"]:
            h, r = run["hammer"], run["report"]
            d = r["delivery_latency_ms"]
            rate = "flat out" if run["rate"] is None else f"{run['rate']} rounds/s"
            lines.append(f"| {rate} | {h['requests_per_s']} | {h['wrong']} / {h['refused']} | "
                         f"{run['database_reads']} | {d['p50']} / {d['p99']} | **{run['delivery_p99_ratio']}** | "
                         f"{r['cpu_us_per_token'].get('coordinator')} | {r['mismatches']} |")
    elif f:
        lines += ["", f"## f. Reads hammered: not run ({f['skipped']})"]
    g = results.get("fuzz")
    if g:
        rss = g["coordinator_rss_mb"]
        lines += ["", f"## g. Fuzzed frames ({g['frames_per_socket']:,} into each of rpc, gen-events and "
                  "persist-acks)", "",
                  "Random bytes, msgpack of wrong shapes, right type ids with wrong fields, huge and negative "
                  "integers, deep nesting, bundles of good and bad items, deltas for unknown generations, frames "
                  "over the size limit, and a subscriber that never reads (`tools/fuzz.py`).", "",
                  "| frames | bad frames expected / counted | late deltas | frames/s | coordinator CPU µs/frame "
                  "| coordinator RSS MB before / after | all alive | a send after, exact |",
                  "|---|---|---|---|---|---|---|---|",
                  f"| {g['frames']:,} | {g['bad_frames_expected']:,} / {g['bad_frames_counted']:,} | "
                  f"{g['late_deltas_dropped']:,} | {g['frames_per_s']:,} | {g['coordinator_cpu_us_per_frame']} | "
                  f"{rss[0]} / {rss[1]} | {'yes' if g['all_alive'] else '**no**'} | "
                  f"{'yes' if g['send_after_exact'] else '**no**'} |"]
    h = results.get("chaos")
    if h:
        lines += ["", f"## h. Chaos: {h['trials']} SIGKILLs over {h['spec']['streams']} streams "
                  f"(`chatter chaos --spawn --streams {h['spec']['streams']} --trials {h['trials']}`)", "",
                  "Each kill lands at a random moment, round robin over generator, persister and coordinator; the "
                  f"process is started again {h['spec']['restart_after_s']} s later, and the next kill waits until "
                  "the replies have moved on. Every reply is checked against the mock's text, in the client and in "
                  "the database. Two runs: without a continue style (`CHATTER_CONTINUE_STYLE=none`), and with the "
                  "mock read as vLLM (`CHATTER_CONTINUE_STYLE=vllm`), where a reply whose generator is killed goes "
                  "on from its text on the restarted one.", ""]
        for run in (h, results.get("chaos_continued")):
            if run:
                lines += chaos_table(run)
        lines += ["", "A reply counts under every kind of kill that happened while it streamed. Errors come from "
                  "generator kills alone (a reply with tokens whose upstream died with its generator, never run "
                  "again from the beginning), and with a continue style from none."]
    i = results.get("gui")
    if i and "skipped" not in i:
        lines += ["", f"## i. The window (`chatter gui`, offscreen): a {i['tokens']:,}-token reply at {i['tps']:g} tok/s",
                  "", f"GUI thread (Qt and every slot): **{i['gui_thread_cpu_us_per_token']} µs CPU per token**, "
                  f"{round(i['gui_thread_cpu_share'] * 100, 1)}% of a core; **{i['repaints_per_s']} repaints a "
                  f"second** ({i['repaints']} in {i['seconds']} s; the bound is 30). Reply {i['status']}."]
    elif i:
        lines += ["", f"## i. The window: not run ({i['skipped']})"]
    return lines


def targets(results: dict) -> list[tuple[str, str, bool]]:
    """Each target of the per-token cost issue (#16) against this run's figures, and the earlier ones still kept
    (the peer ratio, the coordinator's memory). The largest level of c is the 1000-request burst: every stream
    of a level starts at once, so its TTFT p50 is the burst's."""
    rows = {r["streams"]: r for r in results["whole_stack"]}
    top, low = results["whole_stack"][-1], results["whole_stack"][0]
    peer = results["peer"][-1]
    n, n_low = top["streams"], low["streams"]
    ratio = round(peer["client_cpu_us_per_token"] / top["backend_cpu_us_per_token"], 2)
    cancel = {k: rows[k]["cancel_latency_ms"]["p99"] for k in (200, 500, 1000) if k in rows} or {
        r["streams"]: r["cancel_latency_ms"]["p99"] for r in results["whole_stack"]}
    cancel_worst = max((v or 0) for v in cancel.values())
    rss = top["rss_mb"].get("coordinator")
    disk = top["db_bytes_per_content_byte"]
    deltas_per_s = results["coordinator_alone"]["deltas_per_s"]
    mismatches = sum(r["mismatches"] for r in results["whole_stack"])
    return [
        (f"backend CPU per token at {n} streams ≤ 30 µs", f"{top['backend_cpu_us_per_token']} µs",
         top["backend_cpu_us_per_token"] <= 30),
        (f"backend CPU per token at {n_low} streams ≤ 60 µs", f"{low['backend_cpu_us_per_token']} µs",
         low["backend_cpu_us_per_token"] <= 60),
        (f"delivery p99 at {n} streams ≤ 50 ms", f"{top['delivery_latency_ms']['p99']} ms",
         top["delivery_latency_ms"]["p99"] <= 50),
        (f"cancel p99 at {', '.join(map(str, cancel))} streams ≤ 20 ms",
         " / ".join(f"{v} ms" for v in cancel.values()), cancel_worst <= 20),
        (f"TTFT p50 for a burst of {n} new requests ≤ 1 s", f"{top['ttft_ms']['p50']} ms",
         top["ttft_ms"]["p50"] <= 1000),
        ("disk bytes written per content byte (SQLite, WAL included) ≤ 8", str(disk), disk is not None and disk <= 8),
        ("the coordinator alone ≥ 500k deltas/s", f"{deltas_per_s:,}", deltas_per_s >= 500_000),
        ("0 mismatches at every level", str(mismatches), mismatches == 0),
        ("backend CPU ≥ 4× less than the peer's (kept)", f"{ratio}×", ratio >= 4),
        (f"coordinator RSS ≤ 150 MB at {n} streams (kept)", f"{rss} MB", rss is not None and rss <= 150),
    ] + gateway_targets(results)


def gateway_targets(results: dict) -> list[tuple[str, str, bool]]:
    """The HTTP issue's (#40): the gateway's own CPU per token at its largest level, and no stream lost."""
    g = results.get("gateway")
    if not g:
        return []
    top = g["levels"][-1]
    cpu = top["http"].get("gateway_cpu_us_per_token")
    wrong = sum(row["http"]["mismatches"] + row["http"]["errors"] for row in g["levels"])
    return [(f"the gateway adds ≤ 15 µs per token at {top['streams']} streams", f"{cpu} µs",
             cpu is not None and cpu <= 15),
            ("0 mismatches or errors through the gateway", str(wrong), wrong == 0)]


