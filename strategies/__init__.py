"""Server-side fedmask strategies (``flwr.serverapp.strategy.Strategy`` subclasses)."""

from strategies.fedpm import FedPM
from strategies.hidenseek import HideNseek
from strategies.mpfl import MPFL

__all__ = ["MPFL", "FedPM", "HideNseek"]
