"""Server-side fedmask strategies (``flwr.serverapp.strategy.Strategy`` subclasses)."""

from strategies.hidenseek import HideNseek

__all__ = ["HideNseek"]
