"""Micro-benchmarks, each a ratio against a baseline measured in the same run.

- codec: fedmask's pack/unpack against ``numpy.packbits``/``unpackbits`` on the same
  masks, and the range coder's throughput;
- server aggregation of K bit-packed masks (HideNseek's vote and FedPM's count:
  the real ``aggregate_train`` on K reply Messages: validation, canonical
  ordering, decoding, sum) in seconds and peak traced memory, against the time to
  read (deserialize) the K packed masks once;
- client step time of sign-mask (HideNseek) and binary-mask (FedPM) training
  against dense training of the same model (goal: at most 1.5x);
- Flower's round overhead, from a comparison JSON (``benchmarks/compare.py``):
  round wall time minus the slowest client's seconds, as a share of the round.

Usage::

    .venv/bin/python benchmarks/micro.py --out benchmarks/results/micro.json \\
        [--overhead-from benchmarks/results/smoke.json] [--sizes 1000000 11000000]
"""

from __future__ import annotations

import argparse
import copy
import json
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Metadata, MetricRecord, RecordDict
from flwr.app.message.message import make_message
from flwr.supercore.task_identity import TaskIdentity
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedmask.client.settings import LocalSettings
from fedmask.methods.fedpm import wire as fedpm
from fedmask.methods.hidenseek import wire as hidenseek
from fedmask.nn.models import build_model
from fedmask.wire import entropy
from fedmask.wire.bits import pack_mask, unpack_mask
from strategies import FedPM, HideNseek

MB_POSITIONS = 8_000_000  # one MB of packed mask


def _best(fn: Callable[[], Any], repeats: int = 5) -> float:
    """Fastest of `repeats` timings of `fn` (seconds)."""
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        timings.append(time.perf_counter() - start)
    return min(timings)


def codec(size: int) -> dict[str, float]:
    """Pack/unpack against numpy's, and range-coder MB/s, on `size` random bits."""
    bits = np.random.default_rng(0).random(size) < 0.5
    packed = np.packbits(bits)
    pack, np_pack = _best(lambda: pack_mask(bits)), _best(lambda: np.packbits(bits))
    unpack = _best(lambda: unpack_mask(packed, size))
    np_unpack = _best(lambda: np.unpackbits(packed, count=size))
    sample = bits[:MB_POSITIONS]
    payload = entropy.encode(sample, None)
    encode = _best(lambda: entropy.encode(sample, None), 2)
    decode = _best(lambda: entropy.decode(payload, sample.size, None), 2)
    mb, sample_mb = size / MB_POSITIONS, sample.size / MB_POSITIONS
    return {"positions": size, "pack_mb_s": mb / pack, "numpy_pack_mb_s": mb / np_pack,
            "pack_vs_numpy": pack / np_pack, "unpack_mb_s": mb / unpack,
            "numpy_unpack_mb_s": mb / np_unpack, "unpack_vs_numpy": unpack / np_unpack,
            "entropy_encode_mb_s": sample_mb / encode, "entropy_decode_mb_s": sample_mb / decode,
            "entropy_encode_vs_pack": encode / (pack * sample.size / size)}


def _replies(k: int, packed_size: int, record: str, key: str) -> list:
    """K train replies carrying random packed masks under `record`/`key`."""
    rng = np.random.default_rng(1)
    replies = []
    for node in range(1, k + 1):
        meta = Metadata(run_id=1, message_id=f"m{node}", src_node_id=node, dst_node_id=0,
                        reply_to_message_id="", group_id="1", created_at=time.time(),
                        ttl=3600.0, message_type="train")
        content = RecordDict({
            record: ArrayRecord({key: Array(rng.integers(0, 256, packed_size, dtype=np.uint8))}),
            "metrics": MetricRecord({"num-examples": 10, "train-loss": 1.0})})
        replies.append(make_message(meta, content=content))
    return replies


def _strategies(n: int) -> dict[str, tuple[Any, str, str]]:
    """HideNseek (density 1: K = N sign bits) and FedPM (N mask bits) on a linear
    model of `n` weights, with the record and key of their packed replies."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(1000, n // 1000, bias=False))
    return {"hidenseek": (HideNseek(model=model, input_shape=(1000,), density=1.0,
                                    synflow_iterations=1, min_train_nodes=1,
                                    mask_coding="packed"),
                          hidenseek.SIGNS, hidenseek.UPLINK_KEYS["packed"]),
            "fedpm": (FedPM(model=copy.deepcopy(model), min_train_nodes=1,
                            mask_coding="packed"),
                      fedpm.MASK, fedpm.SAMPLED_MASK)}


def aggregation(n: int, ks: list[int]) -> list[dict[str, Any]]:
    """Seconds and peak traced memory of HideNseek's vote and FedPM's count
    (``aggregate_train``) for K replies, against reading the K masks once."""
    rows: list[dict[str, Any]] = []
    for method, (strategy, record, key) in _strategies(n).items():
        size = strategy.mask_length
        for k in ks:
            replies = _replies(k, (size + 7) // 8, record, key)
            arrays = [next(iter(r.content.array_records[record].values())) for r in replies]
            read = _best(lambda: [a.numpy() for a in arrays], 3)  # noqa: B023 - called here
            fresh = copy.deepcopy(strategy)
            tracemalloc.start()
            start = time.perf_counter()
            _, metrics = fresh.aggregate_train(1, replies)
            seconds = time.perf_counter() - start
            if metrics is None or fresh.rejected.get(1):
                raise RuntimeError(f"{method}: replies were dropped; nothing was aggregated")
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            rows.append({"method": method, "n": size, "k": k, "aggregate_s": seconds,
                         "read_s": read, "vs_read": seconds / read, "peak_mb": peak / 1e6,
                         "packed_input_mb": k * ((size + 7) // 8) / 1e6})
            print(f"  {method} aggregation N={size:,} K={k}: {seconds:.2f} s "
                  f"({seconds / read:.1f}x reading), peak {peak / 1e6:.0f} MB", flush=True)
    return rows


def client_steps(steps: int = 30) -> dict[str, float]:
    """Seconds per local step (batch 64, FashionMNIST-sized cnn) of dense, sign-mask
    and binary-mask training; ratios to dense."""
    torch.manual_seed(0)
    loader = DataLoader(TensorDataset(torch.randn(64 * steps, 1, 28, 28),
                                      torch.randint(0, 10, (64 * steps,))), batch_size=64)
    model = build_model("cnn", 10, 1, 28)
    n = sum(p.numel() for name, p in model.named_parameters() if name.endswith("weight"))
    nets = {
        "dense": (copy.deepcopy(model), LocalSettings(lr=0.05, optimizer="sgd")),
        "sign_mask": (hidenseek.sign_net(copy.deepcopy(model), np.ones(n, bool),
                                         np.ones(n, bool)),
                      LocalSettings(lr=0.01, optimizer="adam")),
        "binary_mask": (fedpm.mask_net(copy.deepcopy(model), np.full(n, 0.5)),
                        LocalSettings(lr=0.1, optimizer="adam")),
    }
    seconds = {name: median(_best(lambda: settings.fit(net, loader, 1), 1)  # noqa: B023
                            for _ in range(3))
               / steps for name, (net, settings) in nets.items()}
    return {**{f"{k}_step_s": v for k, v in seconds.items()},
            "sign_vs_dense": seconds["sign_mask"] / seconds["dense"],
            "binary_vs_dense": seconds["binary_mask"] / seconds["dense"]}


def overhead(path: Path) -> list[dict[str, float]]:
    """Mean overhead share per method of a compare.py JSON."""
    data = json.loads(path.read_text())
    return [{"entry": entry, "overhead_share": float(np.mean([r["overhead_share"] for r in rows])),
             "wall_s": float(np.mean([r["wall_s"] for r in rows])),
             "client_s_max": float(np.mean([r["client_s_max"] for r in rows]))}
            for entry, rows in data["per_round"].items()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 11_000_000])
    parser.add_argument("--ks", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--overhead-from", type=Path)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/micro.json"))
    args = parser.parse_args(argv)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    results: dict[str, Any] = {"codec": codec(max(args.sizes))}
    print(json.dumps(results["codec"], indent=1), flush=True)
    results["aggregation"] = [row for n in args.sizes for row in aggregation(n, args.ks)]
    results["client_steps"] = client_steps()
    print(json.dumps(results["client_steps"], indent=1), flush=True)
    if args.overhead_from:
        results["round_overhead"] = overhead(args.overhead_from)
        print(json.dumps(results["round_overhead"], indent=1), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
