"""quickstart_fedmask: a Flower / PyTorch ServerApp that can run a fedmask strategy."""

import json
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fedmask.config import METHOD_DEFAULTS  # fedmask: each method's optimiser and lr
from quickstart_fedmask.task import Net, load_centralized
from quickstart_fedmask.task import test as test_fn
from strategies import FedPM, HideNseek  # fedmask: the server side of each method

app = ServerApp()


def _strategy(method: str, context: Context):  # noqa: ANN202
    """The strategy, its initial arrays, its train config, and arrays -> model."""
    sampling = {"fraction_train": context.run_config["fraction-train"],
                "fraction_evaluate": context.run_config["fraction-evaluate"]}
    if method == "fedavg":
        def to_model(arrays: ArrayRecord) -> Net:
            model = Net()
            model.load_state_dict(arrays.to_torch_state_dict())
            return model
        train_config = ConfigRecord({"lr": context.run_config["learning-rate"]})
        return FedAvg(**sampling), ArrayRecord(Net().state_dict()), train_config, to_model
    # fedmask: a seeded random Net plus masks; clients rebuild it from the seed
    if method == "hidenseek":
        strategy = HideNseek(Net(), input_shape=(1, 28, 28), density=0.5, **sampling)
    else:
        strategy = FedPM(Net(), **sampling)
    defaults = METHOD_DEFAULTS[method]
    train_config = ConfigRecord({"lr": defaults["lr"], "optimizer": defaults["optimizer"],
                                 "local-epochs": context.run_config["local-epochs"]})
    return strategy, strategy.global_arrays(), train_config, strategy.global_model


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the configured strategy; write the central accuracy per round."""
    method = str(context.run_config["strategy"])
    strategy, arrays, train_config, to_model = _strategy(method, context)
    testloader = load_centralized(str(context.run_config["data-path"]))
    history: list[dict[str, float]] = []

    def global_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        loss, accuracy = test_fn(to_model(arrays), testloader)
        history.append({"round": server_round, "loss": loss, "accuracy": accuracy})
        return MetricRecord({"loss": loss, "accuracy": accuracy})

    strategy.start(grid=grid, initial_arrays=arrays, train_config=train_config,
                   evaluate_config=train_config,
                   num_rounds=int(context.run_config["num-server-rounds"]),
                   evaluate_fn=global_evaluate)
    out = Path(str(context.run_config["out-dir"]) or ".").expanduser()
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"strategy": method, "rounds": history}))
