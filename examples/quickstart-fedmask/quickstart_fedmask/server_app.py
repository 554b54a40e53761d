"""quickstart_fedmask: A Flower / PyTorch app."""

import json
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

import strategies

from quickstart_fedmask.task import Net, load_centralized_dataset, test

# Create ServerApp
app = ServerApp()
history = []  # each round's central loss and accuracy, for results.json


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Main entry point for the ServerApp."""

    # Read run config
    fraction_evaluate: float = context.run_config["fraction-evaluate"]
    num_rounds: int = context.run_config["num-server-rounds"]
    lr: float = context.run_config["learning-rate"]
    out_dir = Path(context.run_config["out-dir"] or ".").expanduser()
    history.clear()

    # Load global model
    global_model = Net()

    # Initialize the strategy (any fedmask method) and its global arrays
    strategy = strategies.make(context.run_config["strategy"], model=global_model,
                               input_shape=(1, 28, 28), fraction_evaluate=fraction_evaluate)
    arrays = strategy.initial_arrays()

    # Start strategy, run FedAvg for `num_rounds`
    result = strategy.start(
        grid=grid,
        initial_arrays=arrays,
        train_config=ConfigRecord({"lr": lr}),
        num_rounds=num_rounds,
        evaluate_fn=strategy.plain_evaluate(global_evaluate),
    )

    # Save final model to disk
    print("\nSaving final model to disk...")
    out_dir.mkdir(parents=True, exist_ok=True)
    state_dict = strategy.global_model(result.arrays).state_dict()
    torch.save(state_dict, out_dir / "final_model.pt")
    (out_dir / "results.json").write_text(json.dumps({"rounds": history}))


def global_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
    """Evaluate model on central data."""

    # Load the model and initialize it with the received weights
    model = Net()
    model.load_state_dict(arrays.to_torch_state_dict())
    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    model.to(device)

    # Load entire test set
    test_dataloader = load_centralized_dataset()

    # Evaluate the global model on the test set
    test_loss, test_acc = test(model, test_dataloader, device)
    history.append({"round": server_round, "loss": test_loss, "accuracy": test_acc})

    # Return the evaluation metrics
    return MetricRecord({"accuracy": test_acc, "loss": test_loss})
