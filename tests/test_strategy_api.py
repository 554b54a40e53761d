"""The server API: one shape for all six strategies, declared once in the registry."""

import inspect
import subprocess
import sys
import tomllib

import pytest
import torch
from flwr.app import ConfigRecord
from torch import nn

import strategies
from fedmask import config as run_config
from fedmask.methods import REGISTRY
from fedmask.nn.model_file import load_model
from fedmask.nn.models import build_model

from conftest import ROOT

METHODS = list(REGISTRY)


def _make(method: str, **kwargs):
    own = {"hidenseek": {"synflow_iterations": 3}, "fedsparsify": {"num_server_rounds": 3}}
    return strategies.make(method, **{"model": build_model("cnn", 10, 1, 12),
                                      "input_shape": (1, 12, 12), **own.get(method, {}),
                                      **kwargs})


@pytest.mark.parametrize("method", METHODS)
def test_constructors_are_keyword_only_with_shared_names_and_defaults(method):
    cls = REGISTRY[method].strategy_class()
    params = inspect.signature(cls.__init__).parameters
    assert all(p.kind in (p.KEYWORD_ONLY, p.VAR_KEYWORD) for n, p in params.items() if n != "self")
    own_weights = method not in ("hidenseek", "fedpm")  # w0 can travel: the model's weights
    assert params["seed"].default == 0
    assert params["init"].default == ("model" if own_weights else "auto")
    assert params["input_shape"].default is None
    for name, default in (("density", 0.5), ("mask_coding", "entropy")):
        if name in params:
            assert params[name].default == default
    for key in REGISTRY[method].arguments:  # every run-config key maps to an argument
        assert key.replace("-", "_") in params, key
    with pytest.raises(TypeError):
        cls(build_model("cnn", 10, 1, 12))  # no positional arguments


@pytest.mark.parametrize("method", ["fedavg", "fedsparsify", "mpfl", "ssfl"])
def test_the_model_keeps_its_own_weights_by_default(method, tmp_path):
    model = build_model("cnn", 10, 1, 12)
    own = {k: v.clone() for k, v in model.state_dict().items()}
    strategy = _make(method, model=model)
    start = strategy.global_model(strategy.initial_arrays()).state_dict()
    assert all(torch.equal(start[k], own[k]) for k in own)
    seeded = _make(method, init="auto")
    assert not torch.equal(seeded.global_model(seeded.initial_arrays()).state_dict()["0.weight"],
                           own["0.weight"])
    strategy.save_model(tmp_path / "m.safetensors", strategy.initial_arrays())
    loaded = load_model(tmp_path / "m.safetensors", model=build_model("cnn", 10, 1, 12))
    assert all(torch.equal(loaded.state_dict()[k], own[k]) for k in own)


@pytest.mark.parametrize("method", ["hidenseek", "fedpm"])
def test_init_model_is_refused_where_clients_rebuild_the_start(method):
    with pytest.raises(ValueError, match=f"init: 'model' is not available for {method}"):
        _make(method, init="model")


@pytest.mark.parametrize("method", METHODS)
def test_default_config_is_the_methods_and_the_callers_values_win(method):
    strategy = _make(method)
    defaults = REGISTRY[method].defaults
    config = strategy.default_config()
    assert (config["lr"], config["optimizer"]) == (defaults["lr"], defaults["optimizer"])
    mine = strategy.default_config(ConfigRecord({"lr": 0.5, "local-epochs": 3}))
    assert (mine["lr"], mine["local-epochs"]) == (0.5, 3)


@pytest.mark.parametrize("method", METHODS)
def test_global_model_is_plain_in_eval_mode_and_loads_into_a_fresh_instance(method):
    strategy = _make(method)
    arrays = strategy.initial_arrays() if method != "ssfl" else strategy.global_arrays()
    model = strategy.global_model(arrays)
    assert not model.training
    assert type(model) is type(build_model("cnn", 10, 1, 12))
    fresh = build_model("cnn", 10, 1, 12)
    fresh.load_state_dict(model.state_dict())  # strict: same keys, plain weights
    x = torch.randn(4, 1, 12, 12)
    assert torch.allclose(fresh.eval()(x), strategy.evaluation_model(arrays).eval()(x))


def test_a_model_that_does_not_fit_the_input_shape_is_refused_naming_it():
    with pytest.raises(ValueError, match="input_shape"):
        _make("fedpm", input_shape=(3, 12, 12))
    with pytest.raises(ValueError, match="input_shape"):
        strategies.HideNseek(model=build_model("cnn", 10, 1, 12))  # SynFlow needs it


def test_hidenseek_infers_the_input_shape_of_a_model_that_starts_with_a_linear_layer():
    model = nn.Sequential(nn.Linear(20, 8, bias=False), nn.ReLU(), nn.Linear(8, 3, bias=False))
    strategy = strategies.HideNseek(model=model, synflow_iterations=2)
    assert strategy.prune.size == 20 * 8 + 8 * 3


def test_unknown_method_names_the_known_ones():
    with pytest.raises(ValueError, match="hidenseek"):
        strategies.make("fedprox", model=build_model("cnn", 10, 1, 12))


def test_fedsparsify_schedule_ends_at_start_num_rounds_or_refuses_a_different_one():
    strategy = _make("fedsparsify", num_server_rounds=5)
    with pytest.raises(ValueError, match="num_rounds"):
        strategy.start(grid=None, num_rounds=3)


@pytest.mark.parametrize("method", METHODS)
def test_each_method_is_declared_once_and_everything_derives_from_it(method):
    declared = REGISTRY[method]
    assert declared.strategy_class().METHOD == method
    hooks = declared.client_module()
    assert callable(hooks.train_module) and callable(hooks.eval_module)
    assert declared.stateful == (method in ("mpfl", "ssfl", "fedsparsify"))
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    app_config = pyproject["tool"]["flwr"]["app"]["config"]
    for key, option in declared.options.items():
        assert run_config.OPTIONS[key] is option and app_config[key] == option.default


def test_the_client_app_imports_no_server_code_and_fedmask_no_strategies():
    code = ("import sys, client_app; "
            "print(sorted(m for m in sys.modules if m.startswith(('strategies', "
            "'fedmask.server'))))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, check=True)
    assert done.stdout.strip() == "[]"
    imports = [line for path in (ROOT / "fedmask").rglob("*.py")
               for line in path.read_text().splitlines()
               if line.startswith(("from strategies", "import strategies"))]
    assert imports == []


@pytest.mark.parametrize("method", [m for m in REGISTRY if m != "hidenseek"])  # its own test
def test_a_model_with_lazy_layers_needs_input_shape(method):
    with pytest.raises(ValueError, match="model: its lazy layers have no shape yet; pass input_"):
        strategies.make(method, model=nn.Sequential(nn.Flatten(), nn.LazyLinear(10)))
    lazy = nn.Sequential(nn.Flatten(), nn.LazyLinear(10))  # shaped by a batch of input_shape
    strategy = strategies.make(method, model=lazy, input_shape=(1, 12, 12))
    assert strategy.global_model(strategy.initial_arrays())[1].weight.shape == (10, 144)
