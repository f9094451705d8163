"""The serving benchmark's report: the table of its results, and the summary printed as its JSON line."""

from __future__ import annotations

import statistics
from typing import Any

REFERENCES = {
    "stub": "the service's gRPC layer over a constant-reply engine (no sessions, no onnxruntime)",
    "floor": "the same over one step.onnx call and its top-k per request, nothing else (one stream only)",
}


def level_summary(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """One level's result from its rounds (``runs[server]``, one measurement per round, "echo" included): per
    server the median of every figure, plus ``ratio`` (tokens/s) and ``p50_ratio`` against the echo, each the
    median of the per-round ratios; the service's ratios also sit at the level's top."""
    echo = runs["echo"]
    level: dict[str, Any] = {"rounds": len(echo)}
    for name, ms in runs.items():
        med = {k: float(statistics.median(m[k] for m in ms)) for k in ms[0]}
        if name != "echo":
            med["ratio"] = statistics.median(
                m["tokens_per_s"] / e["tokens_per_s"] for m, e in zip(ms, echo, strict=True)
            )
            med["p50_ratio"] = statistics.median(m["p50_ms"] / e["p50_ms"] for m, e in zip(ms, echo, strict=True))
        level[name] = med
    level["ratio"] = level["service"]["ratio"]
    level["p50_ratio"] = level["service"]["p50_ratio"]
    return level


def print_table(out: dict[str, Any], prompt_streams: int, prompt_len: int) -> None:
    """Print the results ``out`` of ``bench/serve_load.py``: per level, then prompts, then idle memory."""
    print(f"model: {out['model']}" + (f", durability: {out['durability']}" if "durability" in out else ""))
    print(
        f"{'streams':>7} | {'echo tok/s':>10} | {'svc tok/s':>10} | {'ratio':>5} | {'echo p50/p99 ms':>15} | "
        f"{'svc p50/p99 ms':>15} | {'server CPU us/tok echo/svc':>26}"
    )
    for n, lv in out["levels"].items():
        e, s = lv["echo"], lv["service"]
        print(
            f"{n:>7} | {e['tokens_per_s']:>10.0f} | {s['tokens_per_s']:>10.0f} | {lv['ratio']:>5.2f} | "
            f"{e['p50_ms']:>6.3f}/{e['p99_ms']:<8.3f} | {s['p50_ms']:>6.3f}/{s['p99_ms']:<8.3f} | "
            f"{e['server_cpu_us_per_token']:>12.0f}/{s['server_cpu_us_per_token']:<13.0f}"
        )
    for ref, what in REFERENCES.items():
        if not any(ref in lv for lv in out["levels"].values()):
            continue
        print(f"{ref} = {what}:")
        for n, lv in out["levels"].items():
            if ref in lv:
                st = lv[ref]
                print(
                    f"{n:>7} | {ref} {st['tokens_per_s']:>6.0f} tok/s ({st['ratio']:.2f} of echo) | p50 "
                    f"{st['p50_ms']:.3f} ms ({st['p50_ratio']:.2f} of echo) | server CPU "
                    f"{st['server_cpu_us_per_token']:.0f} us/tok"
                )
    pr = out["prompt"]
    print(
        f"prompts ({prompt_streams} streams x {prompt_len} tokens): service {pr['service_tokens_per_s']:.0f} "
        f"tok/s, offline sequence.onnx {pr['offline_tokens_per_s']:.0f} tok/s"
    )
    if "memory" in out:
        m = out["memory"]
        print(
            f"idle sessions: {m['sessions']}: RSS {m['rss_before_mb']:.0f} -> {m['rss_after_mb']:.0f} MiB, "
            f"{m['bytes_per_idle_session']:.0f} bytes/session (state {m['state_bytes']} bytes; target "
            f"<= {m['target_bytes']:.0f})"
        )


def summarize(out: dict[str, Any]) -> dict[str, Any]:
    """The headline figures of ``out``: the keys of the JSON line."""
    pr = out["prompt"]
    summary: dict[str, Any] = {}
    if 64 in out["levels"]:
        summary["throughput_ratio_64"] = round(out["levels"][64]["ratio"], 3)
    if 1 in out["levels"]:
        summary["p50_ratio_1"] = round(out["levels"][1]["p50_ratio"], 3)
    summary["prompt_ratio"] = round(pr["service_tokens_per_s"] / pr["offline_tokens_per_s"], 3)
    if "memory" in out:
        summary["bytes_per_idle_session"] = round(out["memory"]["bytes_per_idle_session"], 1)
        summary["state_bytes"] = out["memory"]["state_bytes"]
    for ref in REFERENCES:
        for n, key in ((64, f"{ref}_throughput_ratio_64"), (1, f"{ref}_p50_ratio_1")):
            lv = out["levels"].get(n, {})
            if ref in lv:
                summary[key] = round(lv[ref]["ratio"] if n == 64 else lv[ref]["p50_ratio"], 3)
    for n, lv in out["levels"].items():
        summary[f"tokens_per_s_{n}"] = round(lv["service"]["tokens_per_s"])
        summary[f"echo_tokens_per_s_{n}"] = round(lv["echo"]["tokens_per_s"])
        summary[f"p99_ms_{n}"] = round(lv["service"]["p99_ms"], 3)
    return summary
