"""Turn samples into results.json, markdown tables (stdout and results.md) and a PNG."""

from __future__ import annotations

import datetime as dt
import json
import statistics
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from pailfs.bench.dataset import MIB, Dataset

if TYPE_CHECKING:
    from pailfs.bench.runner import BenchConfig, Sample
    from pailfs.bench.systems import System
    from pailfs.bench.workloads import Workload

PHASES = ("cold", "warm")


def _title(wl: "Workload", ds: Dataset | None) -> str:
    if ds is None:
        return wl.title
    from pailfs.bench.workloads import creates

    return wl.title.format(files=f"{ds.spec.files:,}", big=f"{ds.spec.big_bytes // MIB} MiB",
                           creates=f"{creates(ds):,}")


def _stats(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def _na_reason(wl: "Workload", system: "System") -> str:
    if wl.kind == "write" and not system.writable:
        return "read-only system"
    if system.kind == "sdk" and wl.on_sdk is None:
        return wl.sdk_note or "not applicable"
    if system.kind != "sdk" and wl.on_fs is None:
        return "SDK only"
    if system.only is not None and wl.name not in system.only:
        return "a variant for " + ", ".join(system.only)
    return "not run"


def build(*, cfg: "BenchConfig", systems: Sequence["System"], workloads: Sequence["Workload"], ds: Dataset | None,
          samples: list["Sample"], checkpoint: dict | None, soak: dict | None, machine: dict,
          started: dt.datetime, caches_dropped: bool, verified: dict[str, str]) -> dict[str, Any]:
    rows = []
    for wl in workloads:
        for phase in PHASES:
            for system in systems:
                mine = [s for s in samples if s.system == system.name and s.workload == wl.name and s.phase == phase]
                secs = _stats([s.seconds for s in mine])
                row: dict[str, Any] = {"workload": wl.name, "phase": phase, "system": system.name}
                if secs is None:
                    row.update(status="n/a", note=_na_reason(wl, system))
                else:
                    fraction = min(s.fraction for s in mine)
                    # CPU of a pass stopped by the budget is scaled like its seconds
                    row.update(status="ok", seconds=secs, extrapolated=fraction < 1, fraction=fraction,
                               fs_cpu=statistics.median(s.fs_cpu / s.fraction for s in mine),
                               client_cpu=statistics.median(s.client_cpu / s.fraction for s in mine),
                               server_cpu=(statistics.median(s.server_cpu / s.fraction for s in mine)
                                           if all(s.server_cpu is not None for s in mine) else None),
                               proxy_cpu=(statistics.median(s.proxy_cpu / s.fraction for s in mine)
                                          if all(s.proxy_cpu is not None for s in mine) else None))
                    stores = [s.store for s in mine if s.store is not None]
                    if stores:  # the system's own count: the median pass by bytes fetched
                        row["store"] = sorted(stores, key=lambda st: st.get("bytes_down", 0))[len(stores) // 2]
                rows.append(row)
    memory = []
    for system in systems:
        walks = [s for s in samples if s.system == system.name and s.workload == "walk" and s.phase == "cold"
                 and s.rss_before is not None and s.rss_after is not None and s.ops]
        if walks:
            per = [(s.rss_after - s.rss_before) / s.ops for s in walks]
            memory.append({"system": system.name, "entries": walks[0].ops,
                           "rss_before": statistics.median(s.rss_before for s in walks),
                           "rss_after": statistics.median(s.rss_after for s in walks),
                           "bytes_per_entry": statistics.median(per)})
    ckpt = None
    if checkpoint is not None:
        ckpt = {"available": checkpoint.get("available", False), "reason": checkpoint.get("reason", ""),
                "bytes": checkpoint.get("bytes")}
        for key in ("stall", "total", "sync"):
            ckpt[key] = _stats(checkpoint.get(key, []))
    return {
        "version": 1,
        "started": started.isoformat(timespec="seconds"),
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["pailfs", *sys.argv[1:]]) if sys.argv and sys.argv[0].endswith("pailfs") else "pailfs bench",
        "config": {"quick": cfg.quick, "repeat": cfg.repeats, "pass_budget_s": cfg.pass_budget, "latency_ms": cfg.latency_ms,
                   "endpoint": "embedded SeaweedFS" if not cfg.endpoint else cfg.endpoint, "bucket": cfg.bucket,
                   "caches_dropped": caches_dropped},
        "dataset": None if ds is None else {**asdict(ds.spec), "bytes": ds.total_bytes, "objects": len(ds.sizes)},
        "machine": machine,
        "systems": [{"name": s.name, "kind": s.kind, "description": s.description,
                     "verified": verified.get(s.name, "no")} for s in systems],
        "workloads": [{"name": w.name, "title": _title(w, ds), "kind": w.kind} for w in workloads],
        "results": rows,
        "memory": memory,
        "checkpoint": ckpt,
        "soak": soak,
        "samples": [asdict(s) for s in samples],
    }


# --- markdown ----------------------------------------------------------------------
def fmt_s(v: float | None) -> str:
    if v is None:
        return "—"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    if v >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def fmt_ratio(v: float | None) -> str:
    if v is None:
        return "—"
    if 0 < v < 0.01:  # "0.00×" would hide how small
        return f"1/{1 / v:,.0f}"
    return f"{v:.1f}×" if v >= 10 else f"{v:.2f}×"


def _cell(results: dict, workload: str, phase: str, system: str) -> dict | None:
    for row in results["results"]:
        if row["workload"] == workload and row["phase"] == phase and row["system"] == system:
            return row
    return None


def _median(results: dict, workload: str, phase: str, system: str) -> float | None:
    row = _cell(results, workload, phase, system)
    return row["seconds"]["median"] if row and row["status"] == "ok" else None


def _approx(row: dict | None) -> str:
    return "~" if row and row.get("extrapolated") else ""


def _table(results: dict, value) -> list[str]:
    names = [s["name"] for s in results["systems"]]
    lines = ["| workload | pass | " + " | ".join(names) + " |", "| --- | --- |" + " ---: |" * len(names)]
    for wl in results["workloads"]:
        for phase in PHASES:
            cells = [value(wl["name"], phase, n) for n in names]
            if all(c == "—" for c in cells):
                continue
            lines.append(f"| {wl['title']} | {phase} | " + " | ".join(cells) + " |")
    return lines


def markdown(results: dict, full: bool = True) -> str:
    names = [s["name"] for s in results["systems"]]
    out: list[str] = []
    ds = results["dataset"] or {}
    cfg = results["config"]
    budget = cfg.get("pass_budget_s")
    out.append(f"Data set: {ds.get('objects', 0):,} objects, {ds.get('bytes', 0) / MIB:,.0f} MiB; "
               f"{cfg['repeat']} repeat(s), median shown; added latency {cfg['latency_ms']:g} ms each way"
               + (f"; ~ = stopped at the {budget:g} s budget of a pass and extrapolated (not repeated)"
                  if budget else "")
               + ("" if cfg["caches_dropped"] else "; WARNING: page cache NOT dropped (not root): cold = warm")
               + ("; INTERRUPTED: partial results" if cfg.get("interrupted") else "")
               + ".")
    out += ["", "Systems: " + "; ".join(f"**{s['name']}**: {s['description']}" for s in results["systems"]) + "."]
    out += ["", "### Seconds (median; lower is better)", ""]

    def secs(w: str, p: str, n: str) -> str:
        row = _cell(results, w, p, n)
        if row is None:
            return "—"
        return _approx(row) + fmt_s(row["seconds"]["median"]) if row["status"] == "ok" else "n/a"

    out += _table(results, secs)
    for ref, label in (("s3fs", "s3fs-fuse"), ("local", "local disk")):
        if ref not in names:
            continue

        def ratio(w: str, p: str, n: str, ref: str = ref) -> str:
            v, base = _median(results, w, p, n), _median(results, w, p, ref)
            if v is None or not base:
                return "—"
            approx = _approx(_cell(results, w, p, n)) or _approx(_cell(results, w, p, ref))
            return approx + fmt_ratio(v / base)

        out += ["", f"### Ratio to {label} (< 1 is faster than {label})", ""]
        out += _table(results, ratio)

    def cpu(w: str, p: str, n: str) -> str:
        row = _cell(results, w, p, n)
        return _approx(row) + fmt_s(row["fs_cpu"]) if row and row["status"] == "ok" else "—"

    out += ["", "### CPU seconds (user+sys) of the file-system process (sdk, local: the bench process)", ""]
    out += _table(results, cpu)
    if full:
        def spread(w: str, p: str, n: str) -> str:
            row = _cell(results, w, p, n)
            if not row or row["status"] != "ok":
                return "—"
            s = row["seconds"]
            return f"{fmt_s(s['min'])}–{fmt_s(s['max'])} (n={s['n']})"

        out += ["", "### Spread: min–max seconds", ""]
        out += _table(results, spread)

        def server(w: str, p: str, n: str) -> str:
            row = _cell(results, w, p, n)
            if not row or row["status"] != "ok" or row.get("server_cpu") is None:
                return "—"
            return _approx(row) + fmt_s(row["server_cpu"])

        if any(r.get("server_cpu") is not None for r in results["results"]):
            out += ["", "### CPU seconds of the object store (SeaweedFS) during the pass", ""]
            out += _table(results, server)
    if any(r.get("proxy_cpu") is not None for r in results["results"]):
        def proxy(w: str, p: str, n: str) -> str:
            row = _cell(results, w, p, n)
            if not row or row["status"] != "ok" or row.get("proxy_cpu") is None:
                return "—"
            return _approx(row) + fmt_s(row["proxy_cpu"])

        out += ["", "### CPU seconds of the latency proxy during the pass (it shares the cores)", ""]
        out += _table(results, proxy)
    stores = [r for r in results["results"] if r.get("store")]
    if stores:
        titles = {w["name"]: w["title"] for w in results["workloads"]}
        out += ["", "### pailfs's store requests per pass (median pass; bytes include LIST responses)", "",
                "| workload | pass | system | LIST | HEAD | GET | MiB fetched |", "| --- | --- | --- | ---: | ---: | ---: | ---: |"]
        for r in stores:
            st = r["store"]
            out.append(f"| {titles.get(r['workload'], r['workload'])} | {r['phase']} | {r['system']} | "
                       f"{st.get('list', 0):,} | {st.get('head', 0):,} | {st.get('get', 0):,} | "
                       f"{st.get('bytes_down', 0) / MIB:,.1f} |")
    if results["memory"]:
        out += ["", "### Metadata memory: RSS of the mount process around a cold walk + stat", "",
                "| system | entries stat-ed | RSS before | RSS after | bytes per entry |", "| --- | ---: | ---: | ---: | ---: |"]
        for m in results["memory"]:
            out.append(f"| {m['system']} | {m['entries']:,} | {m['rss_before'] / MIB:.1f} MiB | "
                       f"{m['rss_after'] / MIB:.1f} MiB | {m['bytes_per_entry']:,.0f} |")
    ck = results.get("checkpoint")
    if ck is not None:
        size = f"{(ck.get('bytes') or 0) // MIB} MiB"
        out += ["", f"### Checkpoint ({size}): training-loop stall", "",
                "| what | seconds (median) | min–max |", "| --- | ---: | ---: |"]
        if not ck["available"]:
            out.append(f"| Checkpointer.save() async | {ck['reason']} | — |")
        for key, label in (("stall", "Checkpointer.save() async: stall (returns)"),
                           ("total", "Checkpointer: save() until wait() returns"),
                           ("sync", "synchronous upload (obstore put, 20 parts in flight)")):
            s = ck.get(key)
            if s:
                out.append(f"| {label} | {fmt_s(s['median'])} | {fmt_s(s['min'])}–{fmt_s(s['max'])} |")
        if ck.get("stall") and ck.get("sync"):
            out.append(f"| stall ratio async / sync | {fmt_ratio(ck['stall']['median'] / ck['sync']['median'])} | |")
    soak = results.get("soak")
    if soak:
        out += ["", "### Soak", "", soak_summary(soak)]
    m = results["machine"]
    out += ["", f"Machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory_bytes'] / 2**30:.1f} GiB, kernel {m['kernel']}; "
            f"load average before {m['loadavg_before'][0]:.2f}, after {m['loadavg_after'][0]:.2f}. "
            "Versions: " + ", ".join(f"{k}: {v}" for k, v in m["versions"].items()) + "."]
    return "\n".join(out) + "\n"


def soak_summary(soak: dict) -> str:
    return (f"{soak['threads']} reader threads for {soak['seconds']:.0f} s on {soak['system']}: "
            f"{soak['ops']:,} reads, {soak['errors']} errors; RSS {soak['rss_first'] / MIB:.1f} → "
            f"{soak['rss_last'] / MIB:.1f} MiB (max {soak['rss_max'] / MIB:.1f} MiB, growth "
            f"{soak['rss_growth'] / MIB:+.1f} MiB)" + (f"; first error: {soak['first_error']}" if soak.get("first_error") else ""))


# --- files -------------------------------------------------------------------------
def soak_chart(soak: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [x["t"] for x in soak["samples"]]
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.plot(t, [x["rss"] / MIB for x in soak["samples"]], color="#4878d0", label="RSS (MiB)")
    ax.set_xlabel("seconds")
    ax.set_ylabel("RSS of the mount process (MiB)")
    ax.set_ylim(bottom=0)
    other = ax.twinx()
    other.plot(t, [x["errors"] for x in soak["samples"]], color="#d65f5f", label="errors")
    other.set_ylabel("errors (cumulative)")
    other.set_ylim(0, max(1, soak["errors"]) * 1.1)
    ax.set_title(f"pailfs bench --soak: {soak['threads']} readers on {soak['system']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def chart(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if results.get("soak") and not any(r["status"] == "ok" for r in results["results"]):
        soak_chart(results["soak"], path)
        return

    workloads = results["workloads"]
    names = [s["name"] for s in results["systems"]]
    cols = 2
    rows = max(1, (len(workloads) + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(12, 2.2 + 2.1 * rows), squeeze=False)
    for ax, wl in zip(axes.flat, workloads):
        ys = range(len(names))
        for offset, phase, color in ((-0.2, "cold", "#4878d0"), (0.2, "warm", "#ee854a")):
            bars = [(y + offset, v) for y, n in zip(ys, names)
                    if (v := _median(results, wl["name"], phase, n))]  # n/a cells get no bar
            if bars:
                ax.barh([b[0] for b in bars], [b[1] for b in bars], height=0.4, color=color, label=phase)
        ax.set_yticks(list(ys), names, fontsize=8)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_title(wl["title"], fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
        ax.set_xlabel("seconds (log)", fontsize=8)
    for ax in list(axes.flat)[len(workloads):]:
        ax.axis("off")
    if axes.flat[0].get_legend_handles_labels()[0]:
        axes.flat[0].legend(fontsize=8)
    fig.suptitle("pailfs bench: seconds, median (lower is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text("# pailfs bench results\n\n" + markdown(results, full=True))
    chart(results, out / "chart.png")
