"""quickstart_fedmask: A Flower / PyTorch app."""

import json
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

import strategies

from quickstart_fedmask.task import Net, load_centralized_dataset
from quickstart_fedmask.task import test as test_fn

# Create ServerApp
app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Main entry point for the ServerApp."""

    # Read run config
    fraction_train: float = context.run_config["fraction-train"]
    num_rounds: int = context.run_config["num-server-rounds"]
    lr: float = context.run_config["lr"]
    out_dir = Path(context.run_config["out-dir"] or ".").expanduser()
    testloader = load_centralized_dataset(context.run_config["data-path"])
    history = []

    # Initialize the strategy (any fedmask method) and load its global model
    strategy = strategies.make(context.run_config["strategy"], model=Net(),
                               input_shape=(1, 28, 28), fraction_train=fraction_train,
                               fraction_evaluate=context.run_config["fraction-evaluate"])
    arrays = strategy.initial_arrays()

    def global_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        """Evaluate the global model on the central test set."""
        model = strategy.global_model(arrays)
        loss, accuracy = test_fn(model, testloader, torch.device("cpu"))
        history.append({"round": server_round, "loss": loss, "accuracy": accuracy})
        return MetricRecord({"accuracy": accuracy, "loss": loss})

    # Start strategy, run FedAvg for `num_rounds`
    result = strategy.start(
        grid=grid,
        initial_arrays=arrays,
        train_config=ConfigRecord({"lr": lr}),
        num_rounds=num_rounds,
        evaluate_fn=global_evaluate,
    )

    # Save final model to disk
    print("\nSaving final model to disk...")
    out_dir.mkdir(parents=True, exist_ok=True)
    state_dict = strategy.global_model(result.arrays).state_dict()
    torch.save(state_dict, out_dir / "final_model.pt")
    (out_dir / "results.json").write_text(json.dumps({"rounds": history}))
