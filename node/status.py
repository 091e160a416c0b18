"""``lungnode status``: series, jobs, deliveries and the last errors, from the state store.

Times are shown in UTC (``...Z``), whatever the host's time zone; the JSON keeps UTC epoch
seconds. ``destinations`` sums up each destination's deliveries and its last error, so a
peer that refuses the node (e.g. "Called AE title not recognised") is visible at a glance.
"""

from __future__ import annotations

from datetime import datetime, timezone
from dataclasses import asdict

from node.config import Settings
from node.store import DB_FILENAME, DELIVERY_FAILED, DELIVERY_PENDING, StateStore, DeliveryRecord


def collect_status(settings: Settings, limit: int = 20) -> dict:
    """A JSON-ready report of the node's state (no patient data: UIDs and states only)."""
    db_path = settings.storage_root / DB_FILENAME
    report: dict = {"storage_root": str(settings.storage_root), "database": str(db_path)}
    if not db_path.exists():
        report["note"] = "no state store yet: the node has not run with this storage root"
        report.update({"counts": {}, "series": [], "jobs": [], "deliveries": [], "errors": [],
                       "destinations": {}})
        return report
    store = StateStore(db_path)
    try:
        report["counts"] = store.state_counts()
        report["series"] = [asdict(s) for s in store.recent_series(limit)]
        jobs = store.recent_jobs(limit)
        report["jobs"] = [asdict(j) for j in jobs]
        open_deliveries = store.deliveries(state=DELIVERY_PENDING) + store.deliveries(
            state=DELIVERY_FAILED
        )
        report["deliveries"] = [asdict(d) for d in open_deliveries[-limit:]]
        report["destinations"] = _destinations(store.deliveries())
        errors = [
            {"what": f"job {j.id}", "series_uid": j.series_uid, "reason": j.reason, "at": j.finished_at}
            for j in jobs
            if j.state == "failed" and j.reason
        ]
        errors += [
            {"what": f"delivery {d.id} to {d.destination}"
                     + (f" ({d.failure_kind})" if d.failure_kind else ""),
             "series_uid": d.series_uid, "reason": d.last_error,
             "at": d.done_at or d.next_attempt_at}
            for d in open_deliveries
            if d.last_error
        ]
        errors += [
            {"what": "series skipped", "series_uid": s["series_uid"], "reason": s["reason"],
             "at": s["last_instance_at"]}
            for s in report["series"]
            if s["state"] == "skipped" and s["reason"]
        ]
        report["errors"] = sorted(errors, key=lambda e: e["at"] or 0, reverse=True)[:limit]
    finally:
        store.close()
    return report


def _destinations(deliveries: list[DeliveryRecord]) -> dict[str, dict]:
    """Per destination: deliveries by state and the newest error with its kind."""
    out: dict[str, dict] = {}
    for d in deliveries:
        entry = out.setdefault(d.destination, {"pending": 0, "done": 0, "failed": 0,
                                               "last_error": None, "failure_kind": None})
        entry[d.state] = entry.get(d.state, 0) + 1
        if d.last_error and d.state != "done":
            entry["last_error"], entry["failure_kind"] = d.last_error, d.failure_kind
    return out


def _when(epoch: float | None) -> str:
    if not epoch:
        return "-"
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def format_status(report: dict) -> str:
    """The report as text for a terminal."""
    lines = [f"storage: {report['storage_root']}"]
    if "note" in report:
        lines.append(report["note"])
        return "\n".join(lines)
    for table, counts in report["counts"].items():
        summary = ", ".join(f"{state} {n}" for state, n in sorted(counts.items())) or "none"
        lines.append(f"{table}: {summary}")
    lines.append("")
    lines.append("recent series (newest first):")
    for s in report["series"]:
        reason = f" ({s['reason']})" if s["reason"] else ""
        lines.append(
            f"  {s['series_uid']}  {s['state']}{reason}  {s['instance_count']} instances, "
            f"rev {s['revision']}, last {_when(s['last_instance_at'])}"
        )
    if report.get("destinations"):
        lines.append("")
        lines.append("destinations:")
        for dest, e in sorted(report["destinations"].items()):
            line = f"  {dest}: {e['done']} done, {e['pending']} pending, {e['failed']} failed"
            if e["last_error"]:
                line += f"; last error ({e['failure_kind'] or 'error'}): {e['last_error']}"
            lines.append(line)
    if report["deliveries"]:
        lines.append("")
        lines.append("open deliveries:")
        for d in report["deliveries"]:
            lines.append(
                f"  #{d['id']} {d['destination']} {d['state']} after {d['attempts']} attempt(s)"
                + (f": {d['last_error']}" if d["last_error"] else "")
            )
    if report["errors"]:
        lines.append("")
        lines.append("last errors:")
        for e in report["errors"]:
            lines.append(f"  {_when(e['at'])} {e['what']} (series {e['series_uid']}): {e['reason']}")
    return "\n".join(lines)
