"""Server-side fedmask strategies (``flwr.serverapp.strategy.Strategy`` subclasses).

Every strategy takes keyword arguments only: ``model``, ``seed``, ``init``,
``input_shape`` and its method's options (snake-cased run-config keys), plus
Flower FedAvg's sampling keywords; :func:`make` builds one by method name.
"""

from typing import Any

from fedmask.methods import get_method
from strategies.base import MethodStrategy
from strategies.fedavg import FedAvg
from strategies.fedpm import FedPM
from strategies.fedsparsify import FedSparsify
from strategies.hidenseek import HideNseek
from strategies.mpfl import MPFL
from strategies.ssfl import SSFL


def make(method: str, **kwargs: Any) -> MethodStrategy:
    """The strategy of `method` (``"hidenseek"``, ``"fedpm"``, ``"mpfl"``, ``"ssfl"``,
    ``"fedsparsify"``, ``"fedavg"``) built with `kwargs`."""
    strategy: MethodStrategy = get_method(method).strategy_class()(**kwargs)
    return strategy


__all__ = ["MPFL", "SSFL", "FedAvg", "FedPM", "FedSparsify", "HideNseek", "MethodStrategy",
           "make"]
