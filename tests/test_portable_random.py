"""Seeded weights alike on every machine (fedmask.nn.portable_random): the numbers'
distributions, golden hashes, and bit-identical weights under every CPU code path
torch and numpy can take here."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from numpy._core import _multiarray_umath as numpy_cpu

from fedmask.nn.models import INITS, MODELS, build_model, seeded_init, weight_hash
from fedmask.nn.portable_random import GENERATOR, PortableStream, log, normal_quantile

SHAPES = {"cnn": (10, 1, 28), "lenet": (10, 1, 28), "conv4": (10, 3, 32),
          "conv6": (10, 3, 32), "resnet18": (10, 3, 32)}
# Seed 0, GENERATOR "philox-acklam-1". A change here means other weights for every
# model file and every node: bump GENERATOR with it.
GOLDEN = {
    "cnn/kaiming-normal": "0ee14333b1d104fc", "cnn/kaiming-uniform": "3275c202698044ef",
    "cnn/signed-constant": "54992330d5e8a96f",
    "lenet/kaiming-normal": "5c13f76d8ca03e80", "lenet/kaiming-uniform": "070965d866816c65",
    "lenet/signed-constant": "e5dd31a9404b7320",
    "conv4/kaiming-normal": "34a34a1b20a0b1a8", "conv4/kaiming-uniform": "4779258fd081ad8b",
    "conv4/signed-constant": "b5aed3f260ea674b",
    "conv6/kaiming-normal": "a00d3fc447a455bd", "conv6/kaiming-uniform": "284060c77bf54d3c",
    "conv6/signed-constant": "6fe6e9d0c77e3811",
    "resnet18/kaiming-normal": "d3aa0c56c205a464",
    "resnet18/kaiming-uniform": "271330d1e44dc122",
    "resnet18/signed-constant": "8a1ddbbd80962194",
}
HASHES_SCRIPT = """
import json, sys, torch
from numpy._core import _multiarray_umath as numpy_cpu
from fedmask.nn.models import INITS, MODELS, build_model, seeded_init, weight_hash
shapes = json.loads(sys.argv[1])
torch.set_num_threads(int(sys.argv[2]))
hashes = {}
for name in MODELS:
    for init in INITS:
        model = build_model(name, *shapes[name])
        hashes[f"{name}/{init}"] = weight_hash(seeded_init(model, 0, init))
numpy = [f for f in numpy_cpu.__cpu_dispatch__ if numpy_cpu.__cpu_features__.get(f)]
print(json.dumps({"capability": torch.backends.cpu.get_cpu_capability(),
                  "threads": torch.get_num_threads(), "numpy": numpy, "hashes": hashes}))
"""


def seeded_hashes() -> dict[str, str]:
    """Every model x init's weight hash for seed 0, in this process."""
    return {f"{name}/{init}": weight_hash(seeded_init(build_model(name, *SHAPES[name]), 0, init))
            for name in MODELS for init in INITS}


def test_golden_hashes_of_every_model_and_init():
    assert GENERATOR == "philox-acklam-1"
    assert seeded_hashes() == GOLDEN


def test_the_normal_quantile_is_acklams_accuracy():
    p = np.concatenate([np.linspace(1e-12, 1 - 1e-12, 100_001), [1e-300, 0.02425, 0.97575]])
    exact = torch.special.ndtri(torch.from_numpy(p)).numpy()
    relative = np.abs(normal_quantile(p) - exact) / np.maximum(np.abs(exact), 1e-3)
    assert relative.max() < 1.2e-9


def test_the_logarithm_matches_the_math_library():
    x = np.exp(np.linspace(-700, 700, 100_001))
    assert np.allclose(log(x), np.log(x), rtol=1e-15, atol=2e-13)
    assert log(np.array([1.0]))[0] == 0.0


def _moments(values: np.ndarray) -> tuple[float, float, float]:
    centred = values - values.mean()
    variance = float(np.mean(centred**2))
    return float(values.mean()), variance, float(np.mean(centred**4) / variance**2)


@pytest.mark.parametrize("init", INITS)
def test_each_init_keeps_its_distribution(init):
    layer = torch.nn.Linear(1000, 1000, bias=False)  # fan_in 1000, 1e6 draws
    values = seeded_init(layer, 7, init).weight.detach().double().numpy().ravel()
    std = np.sqrt(2.0 / 1000)
    mean, variance, kurtosis = _moments(values)
    assert abs(mean) < 5 * std / 1000  # five standard errors
    assert variance == pytest.approx(std**2, rel=0.01)
    if init == "kaiming-normal":
        assert kurtosis == pytest.approx(3.0, abs=0.03)
        assert 4.5 < np.abs(values).max() / std < 6.5
    elif init == "kaiming-uniform":
        bound = np.sqrt(3.0) * std
        assert kurtosis == pytest.approx(1.8, abs=0.02)
        assert -bound <= values.min() and values.max() < bound
    else:
        assert np.allclose(np.abs(values), np.float32(std))


def test_streams_are_seeded_and_refuse_a_bad_seed():
    assert np.array_equal(PortableStream(3).integers(5), PortableStream(3).integers(5))
    assert not np.array_equal(PortableStream(3).integers(5), PortableStream(4).integers(5))
    uniform = PortableStream(3).open_uniform(100_000)
    assert 0.0 < uniform.min() and uniform.max() < 1.0
    for bad in (-1, 2**64):
        with pytest.raises(ValueError, match="seed"):
            PortableStream(bad)


def _capabilities() -> list[str]:
    """The torch CPU code paths this machine can run, worst first."""
    best = torch.backends.cpu.get_cpu_capability().lower()
    order = ["default", "avx2", "avx512"]
    return order[:order.index(best) + 1] if best in order else ["default"]


def _numpy_dispatch() -> str:
    """numpy's runtime-dispatched CPU features this machine has (to disable)."""
    return " ".join(f for f in numpy_cpu.__cpu_dispatch__ if numpy_cpu.__cpu_features__.get(f))


def _hashes_under(env: dict[str, str], threads: int) -> dict:
    out = subprocess.run([sys.executable, "-c", HASHES_SCRIPT, json.dumps(SHAPES), str(threads)],
                         env={**os.environ, **env}, capture_output=True, text=True,
                         timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.integration
@pytest.mark.parametrize("capability", _capabilities())
@pytest.mark.parametrize("threads", [1, 2])
def test_weights_are_bit_identical_under_every_cpu_code_path(capability, threads):
    env = {"ATEN_CPU_CAPABILITY": capability}
    if capability == "default" and _numpy_dispatch():
        env["NPY_DISABLE_CPU_FEATURES"] = _numpy_dispatch()  # numpy's baseline loops too
    got = _hashes_under(env, threads)
    print(env, got["capability"], got["threads"], got["numpy"])
    assert got["capability"].lower() == capability and got["threads"] == threads
    if "NPY_DISABLE_CPU_FEATURES" in env:
        assert got["numpy"] == []
    assert got["hashes"] == GOLDEN
