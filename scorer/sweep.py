"""``wanctl-sweep``: one trace replayed under many settings at once.

Every ``--set KEY=V1,V2,...`` multiplies the variants (their cross product).
Each worker process reads and decodes the trace once and feeds every sample to
the engines of all its variants, so N settings cost one decode per worker, not
N.  Each variant's decisions are exactly those ``wanctl-replay --set KEY=V ...``
writes (``--out-dir`` writes them, one file per variant); the table gives per
variant and policy the decisions, steering episodes, time steered, the median
episode, flap-brake activations and, with ``--labels``, the episodes measured
against the trace's load windows.
"""

from __future__ import annotations

import gzip
import itertools
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from proto.messages import DEGRADED, ENABLE
from runtime import cli

GRACE_S = 2.0  # an ENABLE up to this long after a load ends still belongs to that load
MIN_LOAD_S = 5.0  # a load window shorter than this justifies no steer
TOL = 1e-6


def parse_sets(sets: list[str]) -> list[tuple[str, list[str]]]:
    """``KEY=V1,V2`` options as (key, values); a usage error (exit 2) when malformed."""
    out = []
    for item in sets:
        key, sep, values = item.partition("=")
        if not sep or not key.strip() or not values:
            raise typer.BadParameter(f"--set {item!r}: expected KEY=V1,V2,...", param_hint="--set")
        out.append((key.strip(), values.split(",")))
    return out


def variants(sets: list[tuple[str, list[str]]]) -> list[list[str]]:
    """The cross product as lists of ``KEY=V`` overrides, in the order of the options."""
    keys = [k for k, _ in sets]
    return [[f"{k}={v}" for k, v in zip(keys, combo)] for combo in itertools.product(*(v for _, v in sets))]


def variant_name(overrides: list[str]) -> str:
    name = ",".join(overrides) or "config"
    return "".join(c if c.isalnum() or c in "-_.=," else "_" for c in name)


def open_trace(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")


def _run_group(trace: str, config: str, group: list[list[str]], out_dir: str | None) -> list[dict]:
    """One worker: decode the trace once, score it under every variant of ``group``."""
    import msgspec

    from proto.config import config_or_exit
    from scorer.engine import Engine
    from scorer.replay import InvalidLine, _decode_telemetry, parse_odd_line

    engines, sinks, bufs, logs = [], [], [], []
    for overrides in group:
        cfg = config_or_exit("wanctl-sweep", Path(config), overrides)
        engines.append(Engine(cfg.scorer, wans=cfg.wans))
        sinks.append(open(Path(out_dir) / f"{variant_name(overrides)}.jsonl", "wb") if out_dir else None)
        bufs.append(bytearray())
        logs.append([])  # (wan, t, policy, driving, decision) per decision
    encode = msgspec.json.Encoder().encode_into
    decode = _decode_telemetry
    decode_error = msgspec.MsgspecError
    procs = [e.process for e in engines]
    jobs = list(zip(procs, bufs, logs, sinks))
    last_t = None
    samples = invalid = 0
    with open_trace(Path(trace)) as source:
        for line in source:
            try:
                sample = decode(line)
            except decode_error:
                try:
                    sample = parse_odd_line(line)
                except InvalidLine:
                    invalid += 1
                    continue
                if sample is None:
                    continue
            samples += 1
            for process, buf, log, sink in jobs:
                outcome = process(sample)
                decisions = outcome.decisions
                if not decisions:
                    continue
                for d in decisions:
                    log.append((d.wan, d.t, d.policy, d.driving, d.decision))
                    if sink is not None:
                        encode(d, buf, len(buf))
                        buf += b"\n"
                if sink is not None and len(buf) > 1 << 16:
                    sink.write(buf)
                    buf.clear()
            if outcome.cause is None:
                last_t = sample.t if last_t is None or sample.t > last_t else last_t
    results = []
    for overrides, engine, buf, log, sink in zip(group, engines, bufs, logs, sinks):
        if sink is not None:
            sink.write(buf)
            sink.close()
        flap = {
            "confidence": sum(w.confidence_policy.penalties for w in engine.wans.values()),
            "quality": engine.counters["quality_holds_flap_hold"],
            "hysteresis": 0,
        }
        results.append({"variant": overrides, "samples": samples, "invalid": invalid, "end_t": last_t,
                        "decisions": log, "flap": flap})
    return results


def episodes(decisions: list[tuple], end_t: float | None) -> dict[str, list[tuple[float, float | None]]]:
    """Steering intervals per policy (over every WAN): [ENABLE, DISABLE), None when still steering."""
    start: dict[tuple[str, str], float] = {}
    out: dict[str, list] = {}
    for wan, t, policy, _driving, decision in decisions:
        key = (policy, wan)
        out.setdefault(policy, [])
        if decision == ENABLE:
            start.setdefault(key, t)
        elif key in start:
            out[policy].append((start.pop(key), t))
    for (policy, _wan), t in start.items():
        out[policy].append((t, None))
    return out


def summarize(result: dict, labels: dict | None) -> dict:
    """One variant's row: per policy decisions, episodes, steered time, median episode, flap, labels."""
    end_t = result["end_t"]
    by_policy: dict[str, dict] = {}
    roles = {}
    counts: dict[str, int] = {}
    for _wan, _t, policy, driving, _d in result["decisions"]:
        counts[policy] = counts.get(policy, 0) + 1
        roles[policy] = "driving" if driving else "shadow"
    for policy, intervals in episodes(result["decisions"], end_t).items():
        lengths = [(end_t if e is None else e) - s for s, e in intervals]
        row = {
            "role": roles[policy], "decisions": counts[policy], "episodes": len(intervals),
            "steered_s": round(sum(lengths), 2),
            "median_episode_s": round(statistics.median(lengths), 2) if lengths else None,
            "flap_brake": result["flap"].get(policy, 0),
        }
        if labels is not None:
            row.update(against_loads(intervals, labels, end_t))
        by_policy[policy] = row
    return {"variant": result["variant"], "samples": result["samples"], "invalid": result["invalid"],
            "policies": by_policy}


def against_loads(intervals: list[tuple[float, float | None]], labels: dict, end_t: float | None) -> dict:
    """False steers, missed loads, onset -> ENABLE and load end -> DISABLE of one policy."""
    loads = [tuple(w) for w in labels.get("load", [])]
    end_t = labels.get("end_t", end_t)
    enables = sorted(s for s, _ in intervals)

    def in_load(t: float) -> bool:
        return any(a - TOL <= t <= b + GRACE_S and b - a >= MIN_LOAD_S for a, b in loads)

    false = sum(1 for t in enables if not in_load(t))
    missed = 0
    onsets, recoveries = [], []
    for a, b in loads:
        if b - a < MIN_LOAD_S:
            continue
        hit = [t for t in enables if a - TOL <= t <= b + GRACE_S]
        steering_at_start = any(s < a and (e is None or e > a) for s, e in intervals)
        if not hit and not steering_at_start:
            missed += 1
            continue
        if hit:
            onsets.append(round(hit[0] - a, 2))
        ends = [e for s, e in intervals if s <= b + GRACE_S and (e is None or e > b)]
        if ends:
            e = ends[0]
            recoveries.append(round((end_t if e is None else e) - b, 2))
    return {"false_steers": false, "missed_loads": missed,
            "onset_s": onsets, "recovery_s": recoveries}


def load_labels(path: Path, trace: Path) -> dict:
    """An index.json entry (``load`` windows, ``end_t``), or the whole index: the trace's entry."""
    data = json.loads(path.read_text())
    if "load" in data:
        return data
    entries = data.get("traces", data)
    name = trace.name.removesuffix(".gz").removesuffix(".jsonl")
    if name in entries:
        return entries[name]
    for entry in entries.values():
        if isinstance(entry, dict) and Path(entry.get("file", "")).name.removesuffix(".gz").removesuffix(
                ".jsonl") == name:
            return entry
    raise typer.BadParameter(f"{path}: no entry for trace {name}", param_hint="--labels")


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, list):
        return "/".join(f"{x:g}" for x in v) or "-"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def print_table(rows: list[dict], labels: bool, out=sys.stdout) -> None:
    head = ["variant", "policy", "role", "decisions", "episodes", "steered_s", "median_episode_s", "flap_brake"]
    if labels:
        head += ["false_steers", "missed_loads", "onset_s", "recovery_s"]
    lines = [head]
    for row in rows:
        name = " ".join(row["variant"]) or "(config)"
        if not row["policies"]:
            lines.append([name, "-", "-", "0", "0", "0", "-", "0"] + (["0", "-", "-", "-"] if labels else []))
        for policy, p in sorted(row["policies"].items()):
            lines.append([name, policy] + [_fmt(p[k]) for k in head[2:]])
    widths = [max(len(r[i]) for r in lines) for i in range(len(head))]
    for r in lines:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip(), file=out)


def sweep(
    trace: Annotated[Path, typer.Argument(help="JSONL telemetry trace (as for wanctl-replay; .gz is read too).")],
    config: Annotated[Path, typer.Option("--config", help="wanctl.yaml; its scorer section is the base of every variant.")],
    set_: Annotated[list[str], typer.Option(
        "--set", help="KEY=V1,V2,...: one variant per value (repeatable: the cross product), "
                      "e.g. scorer.quality.sustain_s=1.5,2,3.")],
    jobs: Annotated[Optional[int], typer.Option("--jobs", min=1, help="Worker processes (default: the core count).")] = None,
    labels: Annotated[Optional[Path], typer.Option(
        "--labels", help="Load windows: a realtraces index.json entry ({\"load\": [[start, end]], \"end_t\": ...}), "
                         "or the whole index.json (the trace's entry is used).")] = None,
    json_: Annotated[bool, typer.Option("--json", help="One JSON object per variant, one per line.")] = False,
    out_dir: Annotated[Optional[Path], typer.Option(
        "--out-dir", metavar="DIR",
        help="Also write each variant's decisions to DIR/<variant>.jsonl (as wanctl-replay --out).")] = None,
    version: Annotated[bool, cli.version_option(True)] = False,
) -> None:
    """Replay TRACE under the cross product of --set values and print one row per variant and policy.

    Each worker decodes the trace once for all of its variants.  A bad --set
    value or config exits 2 naming the key.
    """
    from proto.config import config_or_exit

    all_variants = variants(parse_sets(set_))
    for overrides in all_variants:  # every variant's config is checked before any work
        config_or_exit("wanctl-sweep", config, overrides)
    if not trace.is_file():
        print(f"wanctl-sweep: cannot read trace {trace}", file=sys.stderr)
        raise typer.Exit(1)
    label = load_labels(labels, trace) if labels is not None else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    n = min(jobs or os.cpu_count() or 1, len(all_variants))
    groups = [all_variants[i::n] for i in range(n)]
    if n == 1:
        results = _run_group(str(trace), str(config), groups[0], str(out_dir) if out_dir else None)
    else:
        import multiprocessing
        with multiprocessing.get_context("fork").Pool(n) as pool:
            parts = pool.starmap(_run_group, [(str(trace), str(config), g, str(out_dir) if out_dir else None)
                                             for g in groups])
        results = [r for part in parts for r in part]
    order = {tuple(v): i for i, v in enumerate(all_variants)}
    rows = sorted((summarize(r, label) for r in results), key=lambda row: order[tuple(row["variant"])])
    if json_:
        for row in rows:
            print(json.dumps(row, sort_keys=True))
    else:
        print_table(rows, label is not None)


def main() -> None:
    app = cli.app()
    app.command(cls=cli.Command)(sweep)
    app()
