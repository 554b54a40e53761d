"""Benchmark: HideNseek at scale: 1000 simulated clients, 1% of them per round.

Runs the app in Flower's simulation with ``--num-supernodes`` nodes and
fraction-train = fraction-evaluate = 0.01 (10 clients a round) for a few rounds
of HideNseek on the small CNN. Once a second it samples the memory (PSS, so
pages shared between processes count once) of every process under the
SuperLink: the SuperLink, the simulation and ServerApp processes and the Ray
workers that run the ClientApps. It writes the seconds of every round and the
peak memory, in total and per process, to OUT.json.

Usage::

    .venv/bin/python benchmarks/scale.py --run-config data-root=../shared/data
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import psutil

from fedmask.launch import exit_on_sigterm, parse_pairs, run_simulation, simulation_superlink

MB = 1e6
SCALE_CONFIG = {"method": "hidenseek", "model": "cnn", "dataset": "fashion-mnist",
                "partition": "iid", "fraction-train": 0.01, "fraction-evaluate": 0.01,
                "num-server-rounds": 5}


def tree_memory(pid: int) -> Counter:
    """PSS bytes of `pid` and each of its descendants, summed per process name."""
    memory: Counter = Counter()
    root = psutil.Process(pid)
    for proc in [root, *root.children(recursive=True)]:
        try:
            memory[proc.name()] += proc.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue  # ended between listing and reading
    return memory


class PeakMemory(threading.Thread):
    """Samples :func:`tree_memory` every `interval` s until stopped; keeps the sample
    with the largest total."""

    def __init__(self, pid: int, interval: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak: Counter = Counter()
        self.samples = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            sample = tree_memory(self.pid)
            self.samples += 1
            if sample.total() > self.peak.total():
                self.peak = sample

    def stop(self) -> Counter:
        """Stop sampling; the peak sample."""
        self._halt.set()
        self.join()
        return self.peak


def report(results: dict, peak: Counter, nodes: int, samples: int) -> dict:
    """The scale figures: seconds per round and peak memory."""
    rounds = [{"round": r["round"], "wall_s": r["wall_s"], "accuracy": r["accuracy"],
               "clients": len(r["clients"]),
               "client_s_max": max((c["client_s"] for c in r["clients"]), default=0.0)}
              for r in results["rounds"]]
    later = [r["wall_s"] for r in rounds[1:]] or [rounds[0]["wall_s"]]
    return {"num_supernodes": nodes, "num_params": results["num_params"],
            "rounds": rounds, "mean_round_s_after_first": sum(later) / len(later),
            "peak_memory_mb": peak.total() / MB, "memory_samples": samples,
            "peak_memory_mb_by_process": {name: b / MB for name, b in peak.most_common()}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-supernodes", type=int, default=1000)
    parser.add_argument("--run-config", nargs="*", default=[],
                        help="key=value overrides of SCALE_CONFIG (JSON values)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/scale"),
                        help="writes OUT.json")
    args = parser.parse_args(argv)
    exit_on_sigterm()
    config = {**SCALE_CONFIG, **parse_pairs(args.run_config)}
    print(f"scale: {args.num_supernodes} clients, {config['num-server-rounds']} rounds of "
          f"{config['method']}, fraction-train {config['fraction-train']}", flush=True)
    with tempfile.TemporaryDirectory(prefix="fedmask-scale-") as work:
        home = Path(work) / "flwr-home"
        with simulation_superlink(home) as env:
            sampler = PeakMemory(int((home / "superlink.pid").read_text()))
            sampler.start()
            start = time.monotonic()
            try:
                results = run_simulation(env, {**config, "out-dir": f"{work}/out"},
                                         args.num_supernodes)
            finally:
                peak = sampler.stop()
    figures = {"run_config": config, "total_s": time.monotonic() - start,
               **report(results, peak, args.num_supernodes, sampler.samples)}
    for r in figures["rounds"]:
        print(f"round {r['round']}: {r['wall_s']:6.1f} s, {r['clients']} clients, "
              f"accuracy {r['accuracy']:.4f}")
    print(f"mean round after the first: {figures['mean_round_s_after_first']:.1f} s; peak "
          f"memory {figures['peak_memory_mb']:.0f} MB over {sampler.samples} samples")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(figures, indent=2))
    print(f"written: {args.out}.json")


if __name__ == "__main__":
    main()
