"""Server-side fedmask strategies (``flwr.serverapp.strategy.Strategy`` subclasses)."""

from strategies.fedavg import FedAvg
from strategies.fedpm import FedPM
from strategies.fedsparsify import FedSparsify
from strategies.hidenseek import HideNseek
from strategies.mpfl import MPFL
from strategies.ssfl import SSFL

__all__ = ["MPFL", "SSFL", "FedAvg", "FedPM", "FedSparsify", "HideNseek"]
