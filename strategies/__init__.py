"""Server-side fedmask strategies (``flwr.serverapp.strategy.Strategy`` subclasses)."""

from strategies.fedpm import FedPM
from strategies.hidenseek import HideNseek

__all__ = ["FedPM", "HideNseek"]
