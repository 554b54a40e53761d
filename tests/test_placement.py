"""The device and precision options (fedmask.nn.placement)."""

from __future__ import annotations

import math
import os

import pytest
import torch
from loopback import run_federation
from torch.utils.data import DataLoader, TensorDataset

from fedmask import config as run_config
from fedmask.nn import training
from fedmask.nn.models import build_model
from fedmask.nn.placement import Placement, resolve_device
from fedmask.server.app import placement

from conftest import SMALL, SMALL_NODES

CUDA = torch.cuda.is_available()


def _auto() -> torch.device:
    if CUDA:
        return torch.device("cuda")
    return torch.device("mps" if torch.backends.mps.is_available() else "cpu")


def test_auto_picks_what_the_process_sees_and_cpu_is_the_cpu():
    assert resolve_device("auto") == _auto()
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(CUDA, reason="checks the refusal on a machine without CUDA")
@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_cuda_fails_naming_the_key(name):
    with pytest.raises(ValueError, match=r"^device: .*not available"):
        resolve_device(name)
    cfg = run_config.parse({"device": name})
    with pytest.raises(run_config.ConfigError, match="^device"):
        placement(cfg)  # what the ServerApp calls before it waits for nodes


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "CPU", ""])
def test_a_device_name_not_allowed_fails_at_parse(name):
    with pytest.raises(run_config.ConfigError, match="^device: .*auto, cpu, cuda, cuda:N or mps"):
        run_config.parse({"device": name})


def test_a_node_config_device_wins_over_the_run_config():
    cfg = run_config.parse({"device": "auto"})
    assert Placement.from_config(cfg, {"device": "cpu"}).device == torch.device("cpu")
    assert Placement.from_config(cfg).device == _auto()


def _tiny_loader() -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 1, 12, 12, generator=generator), torch.randint(0, 10, (64,))
    return DataLoader(TensorDataset(x, y), batch_size=16)


def test_bf16_autocast_trains_and_evaluates():
    model = build_model("cnn", 10, 1, 12)
    loss = training.train(model, _tiny_loader(), 1, 0.05, precision="bf16")
    assert math.isfinite(loss)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # weights stay float32
    assert 0.0 <= training.evaluate(model, _tiny_loader(), precision="bf16")[1] <= 1.0


def test_deterministic_switches_the_process_setting_both_ways():
    try:
        Placement.from_config(run_config.parse({"deterministic": True}))
        assert torch.are_deterministic_algorithms_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"]
    finally:
        Placement.from_config(run_config.parse({}))
    assert not torch.are_deterministic_algorithms_enabled()


# One round of the suite's small run: enough to compare final states.
TINY = {**SMALL, "num-server-rounds": 1, "train-limit": 128, "test-limit": 256,
        "fraction-evaluate": 0.0, "synflow-iterations": 5}


@pytest.mark.integration  # a whole federated run, in-process
def test_cpu_and_auto_give_the_same_global_state_on_this_machine():
    """The CPU path is today's: same seed, same final global state (deterministic
    algorithms too, which the CPU path already is)."""
    runs = {"cpu": {"device": "cpu"}, "auto": {"device": "auto"},
            "deterministic": {"device": "cpu", "deterministic": True}}
    try:
        results = {name: run_federation({**TINY, "method": "hidenseek", **extra}, SMALL_NODES)
                   for name, extra in runs.items()}
    finally:
        torch.use_deterministic_algorithms(False)
    if _auto().type == "cpu":
        assert results["cpu"]["final_arrays_sha256"] == results["auto"]["final_arrays_sha256"]
    assert (results["cpu"]["final_arrays_sha256"]
            == results["deterministic"]["final_arrays_sha256"])
    assert results["cpu"]["config"]["device"] == "cpu"


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_training_on_cuda_leaves_the_masks_exact():
    model = build_model("cnn", 10, 1, 12)
    loss = training.train(model, _tiny_loader(), 1, 0.05, device=torch.device("cuda"))
    assert math.isfinite(loss)
    assert next(model.parameters()).device.type == "cuda"
