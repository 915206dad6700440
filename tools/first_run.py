"""Measure README Quickstart line 1 as a newcomer meets it: a fresh clone, an empty cache, then
`python -m pip install -e ".[export,bench]" && bort-bench`, timed end to end, with the peak memory of the
whole process tree (the sum of every process's resident set, sampled every 0.2 s) and the CPU time.

The clone, a virtual environment (with the system's site-packages, so that third-party wheels already
installed are reused, as on a developer machine that has them) and HOME / XDG_CACHE_HOME all live in a
temporary directory: nobody's pip or bort-infer cache is read or destroyed. Phases are split at the lines
bort-bench prints (its banner, its first measuring group) and reported with the machine's load, so a
figure taken on a shared machine says so.

    python tools/first_run.py --json first-run.json [-- BORT-BENCH ARGS]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
QUICKSTART = 'python -m pip install -e ".[export,bench]" && bort-bench'


def _tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, i = [root], 0
    while i < len(out):
        out += children.get(out[i], [])
        i += 1
    return out


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return 0


class TreeSampler(threading.Thread):
    """Peak of the summed resident set of a process tree, and the mean 1-minute load average."""

    def __init__(self, pid: int, period: float = 0.2):
        super().__init__(daemon=True)
        self.pid, self.period, self.peak, self.loads, self.done = pid, period, 0, [], threading.Event()

    def run(self) -> None:
        last_load = 0.0
        while not self.done.is_set():
            self.peak = max(self.peak, sum(_rss_bytes(p) for p in _tree(self.pid)))
            if time.monotonic() - last_load >= 5:
                with open("/proc/loadavg") as f:
                    self.loads.append(float(f.read().split()[0]))
                last_load = time.monotonic()
            self.done.wait(self.period)


def cpu_model() -> str:
    with open("/proc/cpuinfo") as f:
        return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", default=str(REPO), help="the repository to clone (its committed HEAD)")
    p.add_argument("--json", metavar="PATH", help="write the figures as JSON")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (clone, venv, cache)")
    p.add_argument("bench_args", nargs="*", help="extra bort-bench arguments (after --)")
    args = p.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bort-first-run-"))
    try:
        clone, venv, home = work / "clone", work / "venv", work / "home"
        subprocess.run(["git", "clone", "--quiet", args.repo, str(clone)], check=True)
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
        home.mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BORT_", "VIRTUAL_ENV", "PYTHON"))}
        env.update(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"), VIRTUAL_ENV=str(venv),
                   PATH=f"{venv / 'bin'}:{env.get('PATH', '')}", BORT_INFER_PROGRESS="0")
        command = QUICKSTART + "".join(f" {a}" for a in args.bench_args)
        command += f" --json {work / 'bench.json'} --markdown {work / 'bench.md'}"
        marks: dict[str, float] = {}
        t0 = time.monotonic()
        proc = subprocess.Popen(["/usr/bin/time", "-v", "sh", "-c", command], cwd=clone, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        sampler = TreeSampler(proc.pid)
        sampler.start()
        log = []
        for line in proc.stdout:
            log.append(line)
            sys.stdout.write(line)
            now = time.monotonic() - t0
            if line.startswith("bort-bench ") and "install" not in marks:
                marks["install"] = now
            elif line.startswith("measuring group 1/") and "build" not in marks:
                marks["build"] = now
        status = proc.wait()
        total = time.monotonic() - t0
        sampler.done.set()
        sampler.join()
        usage = {}
        for line in log:
            key, _, value = line.strip().partition(": ")
            if key in ("User time (seconds)", "System time (seconds)", "Maximum resident set size (kbytes)"):
                usage[key] = float(value)
        install = marks.get("install", total)
        build_end = marks.get("build", total)
        result = {
            "cpu": cpu_model(), "cores": os.cpu_count(), "command": command.split(" --json ")[0], "status": status,
            "total_s": round(total, 1), "install_s": round(install, 1), "build_s": round(build_end - install, 1),
            "measure_s": round(total - build_end, 1),
            "peak_tree_rss_gib": round(sampler.peak / 2**30, 2),
            "max_single_process_rss_gib": round(usage.get("Maximum resident set size (kbytes)", 0) / 2**20, 2),
            "cpu_s": round(usage.get("User time (seconds)", 0) + usage.get("System time (seconds)", 0), 1),
            "load_average_mean": round(sum(sampler.loads) / max(len(sampler.loads), 1), 2),
            "load_average_max": max(sampler.loads, default=0.0), "date": time.strftime("%Y-%m-%d %H:%M"),
        }
        print(json.dumps(result, indent=2))
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        return status
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
