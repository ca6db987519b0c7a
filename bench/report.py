#!/usr/bin/env python3
"""Turns bench/run.sh's per-run lines into the table on stdout and
bench/results/latest.{md,json}. Input lines (tab-separated):
image phase tool run seconds|NA|FAIL peak_rss_kib|NA
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess

PHASE_TITLES = {
    "pull": "pull (content only, cold)",
    "slow": "pull through a slow link",
    "unpack": "pull + unpack (cold)",
    "warm": "rootfs from a warm cache",
    "start": "cvmd run (cold)",
    "restart": "cvmd run (image present)",
}
LABELS = {
    ("pull", "cvmd"): "cvmd pull",
    ("pull", "skopeo"): "skopeo copy",
    ("pull", "cvmdtls"): "cvmd pull, HTTPS",
    ("pull", "skopeotls"): "skopeo copy, HTTPS",
    ("slow", "cvmd"): "cvmd pull",
    ("slow", "skopeo"): "skopeo copy",
    ("unpack", "curltar"): "curl | tar -xz, layer by layer",
    ("unpack", "umoci"): "skopeo copy + umoci unpack",
    ("unpack", "ctr"): "ctr images pull (containerd)",
    ("unpack", "cvmd"): "cvmd rootfs (cold)",
    ("warm", "ctr"): "ctr snapshots prepare + mount",
    ("warm", "cvmd"): "cvmd rootfs (warm)",
    ("start", "native"): "cvmd run, native backend",
    ("start", "containerd"): "cvmd run, containerd backend (content)",
    ("start", "transfer"): "cvmd run, containerd backend (transfer)",
    ("restart", "native"): "cvmd run, native (cached)",
    ("restart", "containerd"): "cvmd run, containerd (has it)",
}
# Ratios printed per phase: (numerator tool, denominator tool); < 1 means the first is faster.
RATIOS = {
    "pull": [("cvmd", "skopeo"), ("cvmdtls", "skopeotls"), ("cvmdtls", "cvmd"), ("skopeotls", "skopeo")],
    "slow": [("cvmd", "skopeo")],
    "unpack": [("cvmd", "umoci"), ("cvmd", "ctr"), ("cvmd", "curltar"), ("umoci", "ctr")],
    "warm": [("cvmd", "ctr")],
    "start": [("containerd", "native"), ("transfer", "native"), ("transfer", "containerd")],
    "restart": [("containerd", "native")],
}
RSS_NOTES = {
    ("unpack", "ctr"): "containerd daemon's peak (fresh daemon per run)",
    ("warm", "ctr"): "ctr client (the daemon does the work)",
    ("unpack", "umoci"): "max of skopeo and umoci",
    ("unpack", "curltar"): "tar only",
    ("start", "containerd"): "cvmd only (containerd unpacks)",
    ("start", "transfer"): "cvmd only (containerd pulls and unpacks)",
    ("restart", "containerd"): "cvmd only",
}


def sh(*cmd, cwd=None):
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception:
        return ""


def load(path):
    runs = {}
    with open(path) as f:
        for line in f:
            img, phase, tool, run, secs, rss, load1 = line.rstrip("\n").split("\t")
            r = runs.setdefault((img, phase, tool), {"times": [], "rss": [], "loads": [], "status": "ok"})
            if secs == "NA":
                r["status"] = "not yet available"
            elif secs == "FAIL":
                r["status"] = "failed"
            else:
                r["times"].append(float(secs))
                r["loads"].append(load1)
                if rss != "NA":
                    r["rss"].append(int(rss))
    return runs


def fmt_s(x):
    return "-" if x is None else (f"{x:.3f}" if x < 10 else f"{x:.2f}")


def fmt_mib(kib):
    return "-" if kib is None else f"{kib / 1024:.0f} MiB"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", required=True)
    ap.add_argument("--images", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--runs", type=int, required=True)
    ap.add_argument("--elapsed", type=int, required=True)
    ap.add_argument("--cvmd", required=True)
    ap.add_argument("--root", required=True)
    ap.add_argument("--selected", required=True)
    ap.add_argument("--load", default="")
    ap.add_argument("--slow", default="")
    a = ap.parse_args()

    runs = load(a.results)
    images = a.selected.split()
    stats = {}
    for img in images:
        with open(os.path.join(a.images, img, "bench-stats.json")) as f:
            stats[img] = json.load(f)

    commit = sh("git", "rev-parse", "--short", "HEAD", cwd=a.root)
    if sh("git", "status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock", cwd=a.root):
        commit += " (+ uncommitted changes in src/)"
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "host": f"{platform.system()} {platform.release()}, {os.cpu_count()} cores, "
                f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') // 2**30} GiB",
        "cvmd": f"{sh(a.cvmd, '--version')} at {commit}",
        "skopeo": sh("skopeo", "--version"),
        "umoci": sh("umoci", "--version"),
        "containerd": sh(os.path.join(os.environ.get("CTRD_BIN", "/usr/bin"), "containerd"), "--version"),
        "load_average": a.load,
        "slow_link": a.slow,
        "runs": a.runs,
        "elapsed_s": a.elapsed,
    }

    doc = {"env": env, "images": {}, "summary": {}}
    for img in images:
        st = stats[img]
        entry = {"image": {k: st[k] for k in ("layers", "files", "compressed_bytes", "uncompressed_bytes", "manifest")},
                 "phases": {}}
        for phase in PHASE_TITLES:
            tools = {}
            for (i, p, t), r in runs.items():
                if i != img or p != phase:
                    continue
                med = statistics.median(r["times"]) if r["times"] and r["status"] == "ok" else None
                tools[t] = {
                    "label": LABELS.get((p, t), t),
                    "status": r["status"],
                    "median_s": med,
                    "runs_s": r["times"],
                    "loads": r["loads"],
                    "peak_rss_kib": max(r["rss"]) if r["rss"] else None,
                }
                if (p, t) in RSS_NOTES:
                    tools[t]["rss_note"] = RSS_NOTES[(p, t)]
            ratios = {}
            for num, den in RATIOS[phase]:
                n, d = tools.get(num, {}).get("median_s"), tools.get(den, {}).get("median_s")
                ratios[f"{num}/{den}"] = (n / d) if n and d else None
            if tools:
                entry["phases"][phase] = {"tools": tools, "ratios": ratios}
        doc["images"][img] = entry

    # ----- text table (stdout) and markdown
    lines_txt, lines_md = [], []
    lines_md += ["# cvmd benchmark: latest results", "",
                 "Made by `bench/run.sh` on this machine; medians of "
                 f"{a.runs} cold runs, the tools interleaved (each run starts from an empty cache/store "
                 "at a new path after an untimed `sync`; page cache kept).", ""]
    lines_md += [f"- {k}: {v}" for k, v in env.items()] + [""]
    lines_md += ["Ratios are cvmd's median time over the peer's: below 1 means cvmd is faster.", ""]

    hdr = f"{'image':<7} {'phase':<26} {'tool':<31} {'median s':>9} {'peak RSS':>9}  runs"
    lines_txt += ["", "=" * len(hdr), hdr, "-" * len(hdr)]
    lines_md += ["| image | phase | tool | median s | peak RSS | runs (s) | load (1 min) before each run |",
                 "|---|---|---|---:|---:|---|---|"]
    ratio_txt, ratio_md = [], ["", "## Ratios", "", "| image | phase | ratio | value |", "|---|---|---|---:|"]
    for img in images:
        for phase, ph in doc["images"][img]["phases"].items():
            for t, r in ph["tools"].items():
                loads = " ".join(r["loads"]) if r["status"] == "ok" else ""
                if r["status"] != "ok":
                    med, rss, rs = r["status"], "", ""
                else:
                    med, rss = fmt_s(r["median_s"]), fmt_mib(r["peak_rss_kib"])
                    rs = " ".join(fmt_s(x) for x in r["runs_s"])
                note = f" ({r['rss_note']})" if r.get("rss_note") and r["status"] == "ok" else ""
                lines_txt.append(f"{img:<7} {PHASE_TITLES[phase]:<26} {r['label']:<31} {med:>9} {rss:>9}  {rs}")
                lines_md.append(f"| {img} | {PHASE_TITLES[phase]} | {r['label']} | {med} | {rss}{note} | {rs} | {loads} |")
            for name, v in ph["ratios"].items():
                val = f"{v:.2f}" if v is not None else "n/a"
                ratio_txt.append(f"{img:<7} {PHASE_TITLES[phase]:<26} {name:<14} {val:>6}")
                ratio_md.append(f"| {img} | {PHASE_TITLES[phase]} | {name} | {val} |")
    lines_txt += ["", "ratios (time of first / time of second; < 1: first is faster)"] + ratio_txt
    lines_txt += ["", f"load average {a.load}",
                  f"{a.runs} cold runs each; whole run took {a.elapsed} s; "
                  f"results in {os.path.relpath(a.out, os.getcwd())}/latest.md and latest.json"]

    lines_md += ratio_md
    lines_md += ["", "## Images", "", "| image | layers | files | gzip MB | unpacked MB |", "|---|---:|---:|---:|---:|"]
    for img in images:
        st = stats[img]
        lines_md.append(f"| {img} | {st['layers']} | {st['files']} | {st['compressed_bytes'] / 1e6:.0f} | "
                        f"{st['uncompressed_bytes'] / 1e6:.0f} |")
    lines_md += ["", "RSS notes: cvmd's and skopeo's are the process's own peak (GNU time %M); "
                 "for containerd's pull the daemon's VmHWM (a fresh daemon each run); "
                 "for `ctr snapshots prepare` only the client.", "",
                 "Full data: `latest.json` beside this file."]

    print("\n".join(lines_txt))
    with open(os.path.join(a.out, "latest.md"), "w") as f:
        f.write("\n".join(lines_md) + "\n")
    with open(os.path.join(a.out, "latest.json"), "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
