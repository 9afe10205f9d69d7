"""The comparison as the README shows it: each server's requests/s, p50 and p99 per concurrency, then
hostd over each peer, as Markdown tables; peers not measured are listed with the reason."""

from __future__ import annotations

from typing import Any

from benchmarks.common import Result


def markdown(results: list[Result], ratios: list[dict[str, Any]], skipped: list[dict[str, str]],
             names: dict[str, str], concurrency: list[int]) -> str:
    """``names`` gives a server's label (name and version); a server not in it is shown as recorded."""
    header = "| {} | " + " | ".join(f"{c} connection{'s' if c != 1 else ''}" for c in concurrency) + " |"
    rule = "|---|" + "---:|" * len(concurrency)
    runs = {(r.server, r.concurrency): r for r in results}
    servers = list(dict.fromkeys(r.server for r in results))
    lines = [header.format("server"), rule]
    lines += [_row(names.get(s, s), [_run(runs.get((s, c))) for c in concurrency]) for s in servers]
    by_peer = {(r["server"], r["vs"], r["concurrency"]): r for r in ratios}
    pairs = list(dict.fromkeys((r["server"], r["vs"]) for r in ratios))
    if pairs:
        lines += ["", header.format("hostd / peer (req/s, p50, p99)"), rule]
        lines += [_row(_pair(hostd, peer, names), [_ratio(by_peer.get((hostd, peer, c))) for c in concurrency])
                  for hostd, peer in pairs]
    if skipped:
        lines += [""] + [f"- {names.get(s['peer'], s['peer'])}: not measured, {_short(s['skipped'])}" for s in skipped]
    return "\n".join(lines) + "\n"


def ratio_line(ratio: dict[str, Any]) -> str:
    """One ratio as a sentence, for the console."""
    verdict = "hostd ahead" if ratio["hostd_ahead"] else "hostd NOT ahead"
    return (f"{ratio['server']} / {ratio['vs']}, {ratio['transport']}, {ratio['concurrency']} concurrent: "
            f"{ratio['rps_ratio']}x requests/s, p50 {ratio['p50_ratio']}x, p99 {ratio['p99_ratio']}x ({verdict})")


def _row(label: str, cells: list[str]) -> str:
    return f"| {label} | " + " | ".join(cells) + " |"


def _run(run: Result | None) -> str:
    if run is None:
        return "-"
    cell = f"{run.rps:,.0f} req/s, p50 {_ms(run.p50_ms)}, p99 {_ms(run.p99_ms)}"
    return cell + (f", **{run.errors:,} errors**" if run.errors else "")


def _ratio(ratio: dict[str, Any] | None) -> str:
    if ratio is None:
        return "-"
    cell = f"{ratio['rps_ratio']}x, {ratio['p50_ratio']}x, {ratio['p99_ratio']}x"
    return cell if ratio["hostd_ahead"] else f"**{cell}**"  # bold: the project's target is missed here


def _pair(hostd: str, peer: str, names: dict[str, str]) -> str:
    label = names.get(peer, peer)
    return label if hostd == "hostd" else f"{label} (vs {hostd})"


def _short(reason: str) -> str:
    """A reason's first line and, when it goes on (a server's log), its last: usually the error."""
    lines = [line.strip() for line in reason.splitlines() if line.strip()]
    return lines[0] if len(lines) < 2 else f"{lines[0]} ... {lines[-1]}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} ms"
