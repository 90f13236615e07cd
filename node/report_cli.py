"""`fedbus report RUN_DIR`: plots of one run from its event log and scores.

Reads the aggregator's JSON-lines event log (`events.jsonl`, see
fedbus.aggregator.event_log; found in the run folder or its
`aggregator-state/`) and, when present, the observer's `scores.csv` (test
metric per model version, written by `fedbus demo`), and draws into the run
folder:

    report_accuracy_time.png     test metric against wall time
    report_accuracy_updates.png  test metric against updates applied
    report_staleness.png         staleness of accepted updates (histogram)
    report_bytes.png             bytes per update as the run went on
    report_contributions.png     accepted and rejected updates per node

and prints a short summary (`--json` for a machine-readable one). Without a
scores.csv the two accuracy plots are skipped: the event log holds no test
metric.
"""

from __future__ import annotations

import argparse
import csv
import json
from collections import Counter
from pathlib import Path
from typing import Any

from fedbus.aggregator.event_log import EVENT_LOG_FILE, read_events
from fedbus.broker.cli_common import command_main
from fedbus.broker.errors import ConfigError

SCORES_FILE = "scores.csv"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, help="a run folder (fedbus demo writes one)")
    parser.add_argument(
        "--events", type=Path, default=None, help="event log (default: found in RUN_DIR)"
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def find_event_log(run_dir: Path) -> Path:
    for candidate in (run_dir / EVENT_LOG_FILE, run_dir / "aggregator-state" / EVENT_LOG_FILE):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"no {EVENT_LOG_FILE} in {run_dir} or {run_dir / 'aggregator-state'}")


def read_scores(path: Path) -> list[dict[str, Any]]:
    """version, seconds, the metric's value and name, per row of a demo's scores.csv."""
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        names = [n for n in (reader.fieldnames or []) if n not in ("version", "seconds", "loss")]
        if not names:
            raise ConfigError(f"{path}: no metric column")
        return [
            {
                "version": int(row["version"]),
                "seconds": float(row["seconds"]),
                "score": float(row[names[0]]),
                "metric": names[0],
            }
            for row in reader
        ]


def summarize(events: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts from the event log: verdicts, staleness, bytes, per-node contributions."""
    updates = [e for e in events if e["event"] == "update" and not e.get("duplicate")]
    accepted = [e for e in updates if e["accepted"]]
    models = [e for e in events if e["event"] == "model"]
    sizes = [e["bytes"] for e in updates]
    return {
        "updates": len(updates),
        "accepted": len(accepted),
        "rejected": len(updates) - len(accepted),
        "rejected_by_reason": dict(Counter(e["reason"] for e in updates if not e["accepted"])),
        "staleness": dict(sorted(Counter(e["staleness"] for e in accepted).items())),
        "mean_bytes_per_update": round(sum(sizes) / len(sizes), 1) if sizes else None,
        "models_published": len(models),
        "final_version": models[-1]["version"] if models else None,
        "checkpoints": sum(e["event"] == "checkpoint" for e in events),
        "per_node_accepted": dict(sorted(Counter(e["node"] for e in accepted).items())),
        "per_node_rejected": dict(
            sorted(Counter(e["node"] for e in updates if not e["accepted"]).items())
        ),
    }


def _applied_by_version(events: list[dict[str, Any]]) -> dict[int, int]:
    return {e["version"]: e["applied"] for e in events if e["event"] == "model"}


def draw(
    run_dir: Path,
    events: list[dict[str, Any]],
    scores: list[dict[str, Any]],
    summary: dict[str, Any],
) -> list[Path]:
    """Write the report's PNGs from the events, the scores and `summarize(events)`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        path = run_dir / name
        fig.savefig(path)
        plt.close(fig)
        written.append(path)

    if scores:
        metric = scores[0]["metric"]
        label = "test accuracy" if metric == "accuracy" else f"test {metric}"
        fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
        ax.step([s["seconds"] for s in scores], [s["score"] for s in scores], where="post")
        ax.set(xlabel="seconds since first model", ylabel=label, title=f"{label} against time")
        ax.grid(alpha=0.3)
        save(fig, "report_accuracy_time.png")
        applied = _applied_by_version(events)
        points = [(applied[s["version"]], s["score"]) for s in scores if s["version"] in applied]
        fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
        ax.step([p[0] for p in points], [p[1] for p in points], where="post")
        ax.set(xlabel="updates applied", ylabel=label, title=f"{label} against updates")
        ax.grid(alpha=0.3)
        save(fig, "report_accuracy_updates.png")
    staleness = summary["staleness"]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    ax.bar([str(k) for k in staleness], list(staleness.values()))
    ax.set(
        xlabel="staleness (versions behind)",
        ylabel="accepted updates",
        title="staleness of accepted updates",
    )
    save(fig, "report_staleness.png")
    updates = [e for e in events if e["event"] == "update"]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    ax.plot(range(len(updates)), [e["bytes"] for e in updates], ".", markersize=2)
    ax.set(xlabel="update (in arrival order)", ylabel="bytes", title="bytes per update")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    save(fig, "report_bytes.png")
    nodes = sorted(set(summary["per_node_accepted"]) | set(summary["per_node_rejected"]))
    fig, ax = plt.subplots(figsize=(max(7, 0.3 * len(nodes)), 4.2), dpi=110)
    ax.bar(nodes, [summary["per_node_accepted"].get(n, 0) for n in nodes], label="accepted")
    ax.bar(
        nodes,
        [summary["per_node_rejected"].get(n, 0) for n in nodes],
        bottom=[summary["per_node_accepted"].get(n, 0) for n in nodes],
        label="rejected",
    )
    ax.set(ylabel="updates", title="contributions per node")
    ax.tick_params(axis="x", labelrotation=90, labelsize=7)
    ax.legend()
    save(fig, "report_contributions.png")
    return written


def report(run_dir: Path, events_path: Path | None = None) -> dict[str, Any]:
    """Draw the plots of `run_dir` and return the summary (with the files written)."""
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir} is not a folder")
    events = read_events(events_path or find_event_log(run_dir))
    scores_path = run_dir / SCORES_FILE
    scores = read_scores(scores_path) if scores_path.is_file() else []
    summary = summarize(events)
    summary["plots"] = [str(p) for p in draw(run_dir, events, scores, summary)]
    return summary


def run(args: argparse.Namespace) -> int:
    summary = report(args.run_dir, args.events)
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"{summary['updates']} updates ({summary['accepted']} accepted, "
            f"{summary['rejected']} rejected {summary['rejected_by_reason']}), "
            f"{summary['models_published']} models, final version {summary['final_version']}, "
            f"{summary['mean_bytes_per_update']} bytes per update"
        )
        for path in summary["plots"]:
            print(f"  {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return command_main("fedbus report", __doc__, configure_parser, run, argv)
