"""The trained model as a file (model.safetensors): written by every run, loaded in
a fresh process, exported to ONNX and a state dict, refused when damaged."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord

import strategies
from fedmask.__main__ import export
from fedmask.methods import METHOD_KEY
from fedmask.nn.model_file import (
    ModelFileError,
    build_architecture,
    load_model,
    read_model_file,
    write_model_file,
)
from fedmask.nn.models import build_model

from conftest import DATA_ROOT, ROOT

HEADER = 2048  # bound on the safetensors header (tensor index, method config, header JSON)


def _file(results) -> str:
    return os.path.join(results["config"]["out-dir"], "model.safetensors")


def test_a_new_process_loads_every_runs_model_to_its_last_rounds_accuracy(smoke):
    files = {entry: _file(results) for entry, results in smoke.results.items()}
    limit = next(iter(smoke.results.values()))["config"]["test-limit"]
    code = ("import json, sys\n"
            "from fedmask.nn.model_file import load_model\n"
            "from fedmask.data.datasets import central_test\n"
            "from fedmask.nn.training import evaluate\n"
            f"test = central_test('fashion-mnist', {DATA_ROOT!r}, 256, {limit})\n"
            f"files = {files!r}\n"
            "print(json.dumps({e: evaluate(load_model(f), test)[1] for e, f in files.items()}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, cwd=ROOT)
    accuracy = json.loads(done.stdout.strip().splitlines()[-1])
    assert accuracy == {e: r["rounds"][-1]["accuracy"] for e, r in smoke.results.items()}


def test_results_record_the_measured_size_of_the_file_and_of_a_float32_state_dict(smoke):
    for entry, results in smoke.results.items():
        size = os.path.getsize(_file(results))
        assert results["model_file_bytes"] == size, entry
        assert results["float32_state_dict_bytes"] >= 4 * results["num_params"], entry
    hidenseek, fedpm = smoke.results["hidenseek"], smoke.results["fedpm"]
    n, kept = hidenseek["num_params"], round(hidenseek["density"] * hidenseek["num_params"])
    assert hidenseek["model_file_bytes"] <= math.ceil(n / 8) + math.ceil(kept / 8) + HEADER
    assert fedpm["model_file_bytes"] <= math.ceil(n / 8) + HEADER
    assert hidenseek["model_file_bytes"] * 20 < hidenseek["float32_state_dict_bytes"]


def test_onnx_export_gives_the_modules_logits_in_a_process_without_torch(smoke, tmp_path):
    inputs = torch.randn(5, 1, 28, 28)
    expected, paths = {}, {}
    for entry, results in smoke.results.items():
        paths[entry] = str(tmp_path / f"{entry}.onnx")
        export(_file(results), paths[entry], tmp_path / f"{entry}.safetensors")
        with torch.no_grad():
            expected[entry] = load_model(_file(results))(inputs).numpy()
        # the state dict loads into a fresh model of the file's architecture (HideNseek's
        # cnn with a bias in its output layer: the per-class offsets)
        plain = build_architecture(read_model_file(_file(results))[1])
        from safetensors.torch import load_file
        plain.load_state_dict(load_file(tmp_path / f"{entry}.safetensors"))
        assert np.allclose(plain.eval()(inputs).detach().numpy(), expected[entry], atol=1e-6)
    np.save(tmp_path / "inputs.npy", inputs.numpy())
    code = ("import json, sys, numpy as np, onnxruntime as ort\n"
            f"x = np.load({str(tmp_path / 'inputs.npy')!r})\n"
            f"out = {{e: ort.InferenceSession(p).run(None, {{'input': x}})[0].tolist() "
            f"for e, p in {paths!r}.items()}}\n"
            "assert 'torch' not in sys.modules and not any(m.startswith('fedmask') "
            "for m in sys.modules)\n"
            "print(json.dumps(out))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, cwd=tmp_path)
    logits = json.loads(done.stdout)
    for entry, values in logits.items():
        assert np.abs(np.asarray(values) - expected[entry]).max() < 1e-4, entry


def test_predict_prints_the_class_of_each_image(smoke, tmp_path):
    from PIL import Image
    model_path = _file(smoke.results["hidenseek"])
    images = []
    for i in range(3):
        pixels = (np.random.default_rng(i).random((28, 28)) * 255).astype(np.uint8)
        images.append(tmp_path / f"{i}.png")
        Image.fromarray(pixels).save(images[-1])
    done = subprocess.run([sys.executable, "-m", "fedmask", "predict", model_path,
                           *map(str, images)], capture_output=True, text=True, check=True,
                          cwd=ROOT)
    lines = done.stdout.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(p) for p in images]
    assert all(0 <= int(line.split("\t")[1]) < 10 for line in lines)


@pytest.fixture
def saved(tmp_path):
    """A HideNseek model file written in-process through the strategy's one call."""
    strategy = strategies.HideNseek(model=build_model("cnn", 10, 1, 12), input_shape=(1, 12, 12),
                                    seed=4, synflow_iterations=2)
    path = tmp_path / "model.safetensors"
    strategy.save_model(path, strategy.initial_arrays(), architecture="cnn",
                        dataset={"num_classes": 10, "in_channels": 1, "image_size": 12,
                                 "mean": [0.5], "std": [0.5]})
    return strategy, path


def _rewrite(path, header=None, config=None, drop_header=None, drop_config=None):
    content, old = read_model_file(path)
    new = {**old, **(header or {})}
    if drop_header:
        del new[drop_header]
    new.pop("format")
    merged = {**dict(content.config_records["config"]), **(config or {})}
    merged.pop(drop_config, None)
    content["config"] = ConfigRecord(merged)
    write_model_file(path, content, new)


def test_a_saved_model_loads_as_the_strategys_global_model(saved):
    strategy, path = saved
    x = torch.randn(4, 1, 12, 12)
    expected = strategy.global_model(strategy.initial_arrays())(x)
    assert torch.equal(load_model(path)(x), expected)


@pytest.mark.parametrize("damage, field", [
    (lambda p: _rewrite(p, config={"weight-hash": "0" * 16}), "weight-hash"),
    (lambda p: _rewrite(p, config={"weight-generator": "philox-acklam-0"}),
     "weight-generator: 'philox-acklam-0' is not known"),
    (lambda p: _rewrite(p, drop_config="weight-generator"),  # written before 2026-12
     r"weight-generator: missing: .* \(torch's generator"),
    (lambda p: _rewrite(p, config={METHOD_KEY: "bogus"}), "method"),
    (lambda p: _rewrite(p, drop_header="density"), "density"),
    (lambda p: _rewrite(p, header={"architecture": "nosuchmodule:Net"}), "architecture"),
    (lambda p: p.write_bytes(p.read_bytes()[:-40]), "safetensors"),
    (lambda p: p.write_bytes(b"\0" * 64), "safetensors"),
])
def test_a_damaged_or_foreign_file_is_refused_naming_what_is_wrong(saved, damage, field):
    _, path = saved
    damage(path)
    with pytest.raises(ModelFileError, match=field):
        load_model(path)


def test_a_model_of_other_code_is_refused(saved):
    _, path = saved
    with pytest.raises(ModelFileError, match="weight-hash"):
        load_model(path, model=build_model("conv4", 10, 1, 12))


def test_hidenseek_files_range_code_a_mask_only_where_that_is_smaller():
    from fedmask.methods.hidenseek import wire
    rng = np.random.default_rng(0)
    prune = rng.random(8000) < 0.5  # about 1 bit of entropy per position: packed is smaller
    signs = rng.random(int(prune.sum())) < 0.9  # skewed: coded is smaller
    record = wire.encode_masks(prune, signs, compact=True)
    assert set(record) == {wire.PRUNE_MASK, wire.SIGN_MASK + wire.CODED}
    assert record[wire.SIGN_MASK + wire.CODED].numpy().size < (signs.size + 7) // 8
    config = ConfigRecord({"num-params": prune.size, "num-kept": int(prune.sum())})
    got_prune, got_signs = wire.decode_masks(record, config)
    assert np.array_equal(got_prune, prune) and np.array_equal(got_signs, signs)


def test_fedpm_keeps_theta_in_the_file_on_request(tmp_path):
    sizes = {}
    for keep_theta in (False, True):
        strategy = strategies.FedPM(model=build_model("cnn", 10, 1, 12), seed=2,
                                    model_theta=keep_theta)
        strategy.wire_theta = np.random.default_rng(0).integers(0, 256, strategy.num_params,
                                                                dtype=np.uint8)
        arrays, path = strategy.global_arrays(), tmp_path / f"{keep_theta}.safetensors"
        sizes[keep_theta] = strategy.save_model(path, arrays, architecture="cnn",
                                                dataset={"num_classes": 10, "in_channels": 1,
                                                         "image_size": 12})
        x = torch.randn(3, 1, 12, 12)
        assert torch.equal(load_model(path)(x), strategy.global_model(arrays)(x))
    n = strategy.num_params
    assert sizes[False] <= math.ceil(n / 8) + HEADER < n < sizes[True] <= n + HEADER


def test_masked_methods_store_kept_values_as_float16_on_request(tmp_path):
    outputs, sizes = {}, {}
    x = torch.randn(3, 1, 12, 12)
    for value_format in ("float32", "float16"):
        strategy = strategies.SSFL(model=build_model("cnn", 10, 1, 12), seed=2, init="auto",
                                   model_value_format=value_format)
        strategy.mask = np.random.default_rng(0).random(strategy.mask.size) < 0.3
        strategy.keep = int(strategy.mask.sum())
        strategy.start_from_mask()
        arrays, path = strategy.global_arrays(), tmp_path / f"{value_format}.safetensors"
        sizes[value_format] = strategy.save_model(path, arrays, architecture="cnn",
                                                  dataset={"num_classes": 10, "in_channels": 1,
                                                           "image_size": 12})
        outputs[value_format] = load_model(path)(x)
        if value_format == "float32":  # exact
            assert torch.equal(outputs["float32"], strategy.global_model(arrays)(x))
    assert sizes["float32"] - sizes["float16"] >= 2 * strategy.keep - HEADER
    assert torch.allclose(outputs["float16"], outputs["float32"], atol=1e-2)
