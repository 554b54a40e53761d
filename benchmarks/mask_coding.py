"""Benchmark: uplink bits per prunable parameter, packed vs entropy-coded masks.

Runs HideNseek and FedPM with ``mask-coding = "packed"`` and ``"entropy"`` on one
run configuration (real ``flwr run`` simulations), and prints per round the
measured uplink (mean bytes of a client's train reply, framing included, x 8 / N)
next to the empirical entropy of the masks the server received
(``mask-entropy-bpp``: ideal code length under the coder's model;
``mask-iid-entropy-bpp``: zero-order entropy). It then times encode + decode of
both codings per MB of packed mask (8e6 positions) on i.i.d. masks, and writes
every figure to JSON. ``--share-of-round RESULTS.json ...`` instead times, for
each finished run, encode + decode of masks of the size and entropy its clients
sent in its last round, against the seconds a client spent on a training
message (``client_s``): the share of a client's round the coding costs.

Usage::

    .venv/bin/python benchmarks/mask_coding.py --rounds 10 \\
        --run-config data-root=../shared/data --out benchmarks/results/mask_coding.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from fedmask.launch import parse_pairs, run_simulation, simulation_superlink
from fedmask.wire.coding import CODINGS, decode_mask, encode_mask
from fedmask.wire.entropy import binary_entropy

METHODS = ("hidenseek", "fedpm")
MB_POSITIONS = 8_000_000  # one MB of packed mask


def _per_round(results: dict[str, Any]) -> list[dict[str, float]]:
    """Measured uplink bpp and the received masks' entropy, per round."""
    n = results["num_params"]
    rows = []
    for record in results["rounds"]:
        train = record["train_metrics"]
        rows.append({
            "round": record["round"], "accuracy": record["accuracy"],
            "uplink_bpp": 8 * record["bytes_up"] / record["num_clients"] / n,
            "entropy_bpp": train["mask-entropy-bpp"],
            "iid_entropy_bpp": train["mask-iid-entropy-bpp"],
        })
    return rows


def run_all(rounds: int, num_supernodes: int, run_config: dict[str, Any],
            work: Path) -> dict[str, dict[str, list[dict[str, float]]]]:
    """Every (method, coding) run on one simulation SuperLink."""
    figures: dict[str, dict[str, list[dict[str, float]]]] = {}
    with simulation_superlink(work / "flwr-home") as env:
        for method in METHODS:
            for coding in CODINGS:
                out = work / f"{method}-{coding}"
                config = {**run_config, "method": method, "mask-coding": coding,
                          "num-server-rounds": rounds, "out-dir": str(out)}
                start = time.monotonic()
                results = run_simulation(env, config, num_supernodes)
                figures.setdefault(method, {})[coding] = _per_round(results)
                print(f"{method:9s} {coding:7s} done in {time.monotonic() - start:.0f} s",
                      flush=True)
    return figures


def codec_speed(probabilities: tuple[float, ...] = (0.5, 0.9, 0.99), repeats: int = 3
                ) -> list[dict[str, float]]:
    """Encode + decode seconds per MB of packed mask, both codings, i.i.d. masks."""
    rows = []
    rng = np.random.default_rng(0)
    for p in probabilities:
        bits = rng.random(MB_POSITIONS) < p
        for coding in CODINGS:
            probs = np.full(bits.size, p) if coding == "entropy" else None
            timings = []
            for _ in range(repeats):
                start = time.perf_counter()
                payload = encode_mask(bits, coding, probs)
                middle = time.perf_counter()
                decoded = decode_mask(payload, bits.size, coding, probs)
                timings.append((middle - start, time.perf_counter() - middle))
            assert np.array_equal(decoded, bits)
            encode_s, decode_s = np.median(np.array(timings), axis=0)
            rows.append({"p": p, "coding": coding, "encode_s_per_mb": float(encode_s),
                         "decode_s_per_mb": float(decode_s),
                         "coded_bits_per_position": 8 * payload.size / bits.size})
    return rows


def _flip_rate(bits_per_position: float) -> float:
    """The p <= 0.5 whose binary entropy is `bits_per_position` (bisection)."""
    low, high = 0.0, 0.5
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if binary_entropy(middle) < bits_per_position else (low, middle)
    return (low + high) / 2


def share_of_round(path: Path, repeats: int = 5) -> dict[str, Any]:
    """Encode + decode seconds of one of the run's masks (i.i.d. bits at its last
    round's measured entropy; HideNseek: K flips, FedPM: N bits against a model of
    the same rate) against a client's mean seconds per training message."""
    results = json.loads(path.read_text())
    last = results["rounds"][-1]
    n = results["num_params"]
    length = round(results["density"] * n) if results["method"] == "hidenseek" else n
    rate = _flip_rate(min(last["train_metrics"]["mask-iid-entropy-bpp"] * n / length, 1.0))
    bits = np.random.default_rng(0).random(length) < rate
    probs = None if results["method"] == "hidenseek" else np.full(length, rate)
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        decode_mask(encode_mask(bits, "entropy", probs), length, "entropy", probs)
        timings.append(time.perf_counter() - start)
    client_s = float(np.mean([c["client_s"] for c in last["clients"]]))
    row = {"run": str(path), "method": results["method"], "positions": length,
           "rate": rate, "coding_s": min(timings), "client_s": client_s,
           "share": min(timings) / client_s}
    print(f"{row['method']:9s} {length:>10,} positions  encode+decode {row['coding_s']*1e3:6.1f} ms"
          f"  client round {client_s:6.2f} s  share {100 * row['share']:.2f}%")
    return row


def _print(figures: dict[str, Any], speed: list[dict[str, float]]) -> None:
    print("\nuplink bits per prunable parameter (measured) vs entropy of the masks sent")
    print(f"{'method':9s} {'round':>5s} {'packed':>8s} {'entropy':>8s} "
          f"{'H model':>8s} {'H iid':>8s} {'acc(ent)':>8s}")
    for method, codings in figures.items():
        for packed, coded in zip(codings["packed"], codings["entropy"]):
            print(f"{method:9s} {coded['round']:5d} {packed['uplink_bpp']:8.4f} "
                  f"{coded['uplink_bpp']:8.4f} {coded['entropy_bpp']:8.4f} "
                  f"{coded['iid_entropy_bpp']:8.4f} {coded['accuracy']:8.4f}")
    print("\nencode + decode time per MB of packed mask (8e6 positions, i.i.d.)")
    print(f"{'p':>5s} {'coding':8s} {'encode s':>9s} {'decode s':>9s} {'bits/pos':>9s}")
    for row in speed:
        print(f"{row['p']:5.2f} {row['coding']:8s} {row['encode_s_per_mb']:9.3f} "
              f"{row['decode_s_per_mb']:9.3f} {row['coded_bits_per_position']:9.4f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--num-supernodes", type=int, default=10)
    parser.add_argument("--run-config", nargs="*", default=[],
                        help="key=value run-config overrides (JSON values)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/mask_coding.json"))
    parser.add_argument("--share-of-round", type=Path, nargs="+",
                        help="results.json of finished runs: the share of a client's "
                             "round that entropy coding its mask costs")
    args = parser.parse_args(argv)
    if args.share_of_round:
        rows = [share_of_round(path) for path in args.share_of_round]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"share_of_round": rows}, indent=2))
        print(f"\nwritten to {args.out}")
        return
    run_config = parse_pairs(args.run_config)
    with tempfile.TemporaryDirectory(prefix="fedmask-bench-") as work:
        figures = run_all(args.rounds, args.num_supernodes, run_config, Path(work))
    speed = codec_speed()
    _print(figures, speed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rounds": args.rounds, "num_supernodes": args.num_supernodes,
                                    "run_config": run_config, "uplink": figures,
                                    "codec_speed": speed}, indent=2))
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
