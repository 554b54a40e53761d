"""fedmask ServerApp: reads the run config and runs the chosen method."""

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedmask.server.app import run

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the method named by the run config and write results.json."""
    run(grid, context)
