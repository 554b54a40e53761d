"""The ServerApp body in a real simulation: failing and garbage-sending clients;
resumption's config checks. (A run killed and resumed to the uninterrupted state:
test_rounds.py for every method in-process, test_lab.py deployed. That a run of the
same config and seed gives the same global state: test_deploy.py, whose deployed run
reaches the simulation's state, and test_loopback.py.)"""

import shutil

import pytest
from flwr.app import ArrayRecord

from fedmask.config import ConfigError, parse
from fedmask.launch import run_simulation
from fedmask.nn.models import build_model
from fedmask.nn.portable_random import GENERATOR
from fedmask.nn.seeded import GENERATOR_KEY
from fedmask.server import checkpoint
from fedmask.server.app import _resume, central_loader
from strategies import FedAvg

from conftest import ROOT, SMALL

FAULTY_CLIENT = '''"""fedmask's ClientApp with two broken nodes: partition 0 raises on every train
message, partition 1 answers with its real reply's arrays filled with NaN."""

import numpy as np
from flwr.app import Array, ArrayRecord, Message, RecordDict
from flwr.clientapp import ClientApp

from fedmask.client.node import handle

app = ClientApp()


@app.train()
def train(msg, context):
    partition = int(context.node_config["partition-id"])
    if partition == 0:
        raise RuntimeError("injected failure")
    reply = handle(msg, context, "train")
    if partition == 1:
        content = RecordDict({name: ArrayRecord({key: Array(np.full(a.numpy().shape, np.nan,
                                                                    np.float32))
                                                 for key, a in record.items()})
                              for name, record in reply.content.array_records.items()})
        content["metrics"] = reply.content.metric_records["metrics"]
        return Message(content, reply_to=msg)
    return reply


@app.evaluate()
def evaluate(msg, context):
    return handle(msg, context, "evaluate")
'''


def test_failing_and_garbage_clients_are_recorded_and_the_run_goes_on(superlink, tmp_path):
    app = tmp_path / "faulty-app"
    app.mkdir()
    pyproject = (ROOT / "pyproject.toml").read_text()
    (app / "pyproject.toml").write_text(pyproject.replace('clientapp = "client_app:app"',
                                                          'clientapp = "faulty_client:app"'))
    shutil.copy(ROOT / "server_app.py", app)
    (app / "faulty_client.py").write_text(FAULTY_CLIENT)  # a name the install cannot shadow
    config = {**SMALL, "method": "fedavg", "num-server-rounds": 2, "out-dir": str(tmp_path)}
    results = run_simulation(superlink, config, 4, app=app, timeout=600)
    for record in results["rounds"]:
        assert len(record["failed_clients"]) == 1  # partition 0 raised
        [rejected] = record["rejected_clients"]  # partition 1: NaN weights
        assert rejected["field"].endswith("weight") and "finite" in rejected["reason"]
        assert record["num_clients"] == 2 and record["aggregated"]
    assert results["rounds"][-1]["accuracy"] > 0.2


def test_resume_needs_out_dir():
    with pytest.raises(ConfigError, match="resume: needs out-dir"):
        parse({"resume": True})


def test_resume_refuses_a_missing_checkpoint_or_another_config(tmp_path):
    cfg = parse({"out-dir": str(tmp_path), "resume": True, "num-server-rounds": 4})
    strategy = FedAvg(model=build_model("cnn", 10, 1, 12))
    with pytest.raises(ConfigError, match="resume: no checkpoint"):
        _resume(tmp_path / checkpoint.CHECKPOINT, cfg, strategy, None)
    checkpoint.save(tmp_path / checkpoint.CHECKPOINT, 2, {}, ArrayRecord(),
                    {"config": {**cfg, "num-server-rounds": 5, "lr": 0.5, "resume": False},
                     GENERATOR_KEY: GENERATOR})
    with pytest.raises(ConfigError, match=r"other values of \['lr', 'num-server-rounds'\]"):
        _resume(tmp_path / checkpoint.CHECKPOINT, cfg, strategy, None)


@pytest.mark.parametrize("generator", [None, "philox-acklam-0"])
def test_resume_refuses_a_checkpoint_of_other_seeded_weights(tmp_path, generator):
    cfg = parse({"out-dir": str(tmp_path), "resume": True})
    document = {"config": cfg, **({GENERATOR_KEY: generator} if generator else {})}
    checkpoint.save(tmp_path / checkpoint.CHECKPOINT, 2, {}, ArrayRecord(), document)
    written = repr(generator) if generator else "torch generator"
    with pytest.raises(ConfigError, match=f"resume: weight-generator: .*{written}.*"
                                          f"'{GENERATOR}'"):
        _resume(tmp_path / checkpoint.CHECKPOINT, cfg, FedAvg(model=build_model(
            "cnn", 10, 1, 12)), None)


def test_a_validation_set_as_large_as_the_training_split_fails_naming_the_option():
    cfg = parse({"data-root": SMALL["data-root"], "validation-size": 60000})
    with pytest.raises(ConfigError, match="validation-size"):
        central_loader(cfg)
