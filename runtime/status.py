"""``wanctl-status``: every stage's health endpoint as one table (or ``--json``).

Exit status: 0 when every enabled stage answers ``ok``; 1 when any stage is
degraded, failing or unreachable; 2 for a bad config.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from proto.config import Config, config_or_exit
from runtime import cli
from runtime.health import OK, STAGES, fetch_health

UNREACHABLE = "unreachable"


def stage_urls(cfg: Config) -> dict[str, str]:
    """The health URL of every stage whose endpoint is enabled (port not 0)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(cfg.health.host, cfg.health.host)  # a wildcard serves loopback too
    host = f"[{host}]" if ":" in host else host
    return {stage: f"http://{host}:{getattr(cfg.health, stage)}" for stage in STAGES if getattr(cfg.health, stage)}


def collect_status(cfg: Config, timeout_s: float = 2.0) -> dict[str, Any]:
    """``{"ok": bool, "stages": {stage: health document or {"status": "unreachable", "error": ...}}}``."""
    stages: dict[str, Any] = {}
    for stage, url in stage_urls(cfg).items():
        try:
            doc = fetch_health(url, timeout_s)
        except (OSError, ValueError) as error:
            reason = getattr(error, "reason", None) or error
            doc = {"stage": stage, "status": UNREACHABLE, "error": f"{url}/health: {reason}"}
        doc["url"] = url
        stages[stage] = doc
    return {"ok": bool(stages) and all(d["status"] == OK for d in stages.values()), "stages": stages}


def _seconds(value: Any) -> str:
    if value is None:
        return "-"
    value = float(value)
    if value >= 86400:
        return f"{value / 86400:.1f}d"
    if value >= 3600:
        return f"{value / 3600:.1f}h"
    if value >= 60:
        return f"{value / 60:.1f}m"
    return f"{value:.1f}s"


def _counters_text(counters: dict[str, Any]) -> str:
    parts = []
    for name, value in counters.items():
        if isinstance(value, dict):
            total = sum(value.values())
            if total:
                parts.append(f"{name}={total} (" + ", ".join(f"{k}={v}" for k, v in sorted(value.items())) + ")")
        elif value:
            parts.append(f"{name}={value}")
    return "; ".join(parts) or "-"


def format_table(report: dict[str, Any]) -> str:
    rows = [("STAGE", "STATUS", "UPTIME", "LAST MESSAGE", "AGE", "COUNTERS", "REASONS")]
    wan_lines: list[str] = []
    for stage, doc in report["stages"].items():
        if doc["status"] == UNREACHABLE:
            rows.append((stage, UNREACHABLE, "-", "-", "-", "-", doc["error"]))
            continue
        last = doc.get("last_message") or {}
        reasons = "; ".join(f"{k}: {v}" for k, v in (doc.get("reasons") or {}).items()) or "-"
        served_by = doc.get("stage", stage)  # actuator-noop answers on the actuator's port
        rows.append(
            (
                stage if served_by == stage else f"{stage} ({served_by})",
                doc["status"],
                _seconds(doc.get("uptime_s")),
                last.get("kind") or "-",
                _seconds(last.get("age_s")),
                _counters_text(doc.get("counters") or {}),
                reasons,
            )
        )
        details = doc.get("details") or {}
        rules = details.get("rules") or {}
        modes = details.get("modes") or {}  # the actuator's: live or dry_run, per WAN
        for wan in list(modes) + [w for w in rules if w not in modes]:
            rule = rules.get(wan) or {}
            mode = {"live": "live", "dry_run": "dry run"}.get(modes.get(wan) or rule.get("mode"), "?")
            error = f", error: {rule['error']}" if rule.get("error") else ""
            wan_lines.append(
                f"  {stage}/{wan}: {mode}, desired {rule.get('desired') or '-'}, observed {rule.get('observed') or '-'},"
                f" {rule.get('result') or '-'} (decision #{rule.get('decision_seq', '-')}){error}"
            )
        for wan, w in (details.get("wans") or {}).items():
            penalty = f"on, {_seconds(w.get('flap_penalty_remaining_s'))} left" if w.get("flap_penalty") else "off"
            wan_lines.append(
                f"  {stage}/{wan}: {w.get('state')} by {w.get('policy')}, confidence {w.get('confidence')}"
                f" (threshold {w.get('threshold')}), degrade {_seconds(w.get('degrade_remaining_s'))},"
                f" hold-down {_seconds(w.get('hold_down_remaining_s'))},"
                f" recovery {_seconds(w.get('recovery_remaining_s'))}, flap penalty {penalty},"
                f" fallbacks {w.get('fallbacks', 0)}"
            )
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    if not report["stages"]:
        lines.append("(every stage's health port is 0: nothing to query)")
    return "\n".join(lines + wan_lines)


app = cli.app(help=__doc__)


@app.command(cls=cli.Command)
def status(
    config: Optional[Path] = cli.config_option("the pipeline's config (its health: section)"),
    json_output: bool = typer.Option(False, "--json", help="print one JSON object"),
    timeout: float = typer.Option(2.0, "--timeout", min=0.1, metavar="SECONDS", help="seconds to wait for each stage"),
    version: bool = cli.version_option(),
) -> None:
    """Query every stage's health endpoint; exit 1 when any is not ok."""
    cfg = config_or_exit("wanctl-status", config)
    report = collect_status(cfg, timeout)
    print(json.dumps(report, indent=2) if json_output else format_table(report))
    raise typer.Exit(0 if report["ok"] else 1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
