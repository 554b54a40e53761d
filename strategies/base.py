"""What every fedmask strategy adds to Flower's FedAvg: one shape for all six.

:class:`MethodStrategy` is mixed in before Flower's ``FedAvg``. It gives every
strategy its initial arrays, its method's default train and evaluate config
(values the caller passes win), ``global_model(arrays)`` as a plain module, a
``start()`` that behaves like Flower's (a method's steps before round 1 run
inside it), the check of the model against ``input_shape``, and reply
validation (:mod:`fedmask.server.validation`) and checkpointing.
"""

from __future__ import annotations

import copy
from abc import abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy
from torch import nn

from fedmask.methods import METHOD_KEY, Method, get_method
from fedmask.nn.model_file import architecture_name, write_model_file
from fedmask.nn.models import INITS, has_output_bias, num_prunable
from fedmask.nn.seeded import SeededNet
from fedmask.nn.supermask import fold
from fedmask.nn.training import MIN_LOCAL_STEPS
from fedmask.server.checkpoint import Checkpointable
from fedmask.server.validation import ValidatedStrategy

MODEL_INIT = "model"  # init value: start from the model instance's own weights
EvaluateFn = Callable[[int, ArrayRecord], MetricRecord | None]


def query_messages(content: RecordDict, nodes: list[int]) -> list[Message]:
    """A query message with `content` for each of `nodes` (an exchange of a
    strategy's own: SSFL's saliency, HideNseek's class report)."""
    return [Message(content=content, message_type=MessageType.QUERY, dst_node_id=node)
            for node in nodes]


def check_input_shape(model: nn.Module, input_shape: tuple[int, ...] | None) -> None:
    """Raise ValueError naming ``input_shape`` if `model` cannot take one batch of it."""
    if input_shape is None:
        return
    training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(2, *input_shape))
    except Exception as err:  # noqa: BLE001 - any failure means the shape does not fit
        raise ValueError(f"input_shape: the model does not take inputs of shape "
                         f"{tuple(input_shape)}: {err}") from err
    finally:
        model.train(training)


class MethodStrategy(ValidatedStrategy, Checkpointable, Strategy):
    """Mixin of every fedmask strategy; a subclass names its method in ``METHOD``."""

    METHOD = ""
    # Whether every message down carries the float weights, so that the model's own
    # weights can be the start (init="model"); where False, clients rebuild the
    # start from the seed.
    OWN_WEIGHTS = False
    model: nn.Module  # the architecture, seeded (set by every strategy's constructor)
    # Seconds an exchange waits for replies: the round timeout :meth:`start` (or
    # fedmask's server app) is given; for an exchange a strategy starts itself.
    round_timeout = 3600.0

    @property
    def method(self) -> Method:
        """This strategy's method declaration (:mod:`fedmask.methods`)."""
        return get_method(self.METHOD)

    def resolve_init(self, init: str) -> str:
        """`init`, with ``auto`` resolved to the method's default scheme."""
        return str(self.method.defaults["init"]) if init == "auto" else init

    def announce(self, model: nn.Module, seed: int, init: str) -> SeededNet:
        """Initialise `model` from (seed, init) and describe it. With ``init="model"``
        (only where every message carries the weights) `model` keeps its own weights,
        and a seeded copy under the method's default scheme names the architecture
        (the hash clients and model files check). A model with lazy layers whose shapes
        are still unknown is refused (ValueError naming ``model``)."""
        if any(isinstance(p, nn.parameter.UninitializedParameter) for p in model.parameters()):
            raise ValueError("model: its lazy layers have no shape yet; pass input_shape (one "
                             "example's shape) or run one batch through it first")
        if init != MODEL_INIT:
            return SeededNet.announce(model, seed, self.resolve_init(init))
        if not self.OWN_WEIGHTS:
            raise ValueError(f"init: {MODEL_INIT!r} is not available for {self.METHOD}, whose "
                             f"clients rebuild the start from the seed; allowed: "
                             f"{['auto', *INITS]}")
        return SeededNet.announce(copy.deepcopy(model), seed, self.resolve_init("auto"))

    def with_method(self, config: ConfigRecord | None) -> ConfigRecord:
        """A copy of `config` naming this strategy's method, for the client API."""
        return ConfigRecord({**dict(config or {}), METHOD_KEY: self.METHOD})

    # --- what a subclass provides ------------------------------------------------------
    @abstractmethod
    def initial_arrays(self) -> ArrayRecord:
        """The global arrays before round 1."""

    @abstractmethod
    def evaluation_model(self, arrays: ArrayRecord) -> nn.Module:
        """The global network `arrays` describe, as the method evaluates it
        (supermask parametrisations may still be attached)."""

    @property
    @abstractmethod
    def kept_fraction(self) -> float:
        """Fraction of the prunable weights the final model keeps."""

    @abstractmethod
    def model_content(self, arrays: ArrayRecord) -> RecordDict:
        """The records of a client's evaluation message for `arrays`, in the method's
        most compact exact form: what a model file holds (:mod:`fedmask.nn.model_file`)."""

    def method_config(self) -> dict[str, Any]:
        """Method-specific keys of the default train and evaluate config."""
        return {}

    def drain_resent_bytes(self) -> int:
        """Array bytes sent in full again, since the last call, to nodes that had been
        sent them before (a node that lost its state); 0 where every message carries
        the whole global state."""
        return 0

    def prepare(self, grid: Grid, timeout: float, initial_arrays: ArrayRecord | None
                ) -> ArrayRecord:
        """The step before round 1; return the arrays round 1 starts from
        (default: `initial_arrays`, else :meth:`initial_arrays`)."""
        del grid, timeout
        return self.initial_arrays() if initial_arrays is None else initial_arrays

    # --- shared ------------------------------------------------------------------------
    def default_config(self, config: ConfigRecord | None = None) -> ConfigRecord:
        """The method's default ``optimizer`` and ``lr``, ``min-local-steps`` and
        method_config(), then `config` (the caller's values win)."""
        defaults = {"optimizer": self.method.defaults["optimizer"],
                    "lr": self.method.defaults["lr"], "min-local-steps": MIN_LOCAL_STEPS,
                    **self.method_config()}
        return ConfigRecord({**defaults, **dict(config or {})})

    def global_model(self, arrays: ArrayRecord) -> nn.Module:
        """The global network `arrays` describe as a plain module of the model's
        class (masks folded into its weights), eval mode: a fresh instance of that
        class can ``load_state_dict`` its state dict."""
        return fold(self.evaluation_model(arrays))

    def plain_evaluate(self, evaluate_fn: EvaluateFn) -> EvaluateFn:
        """`evaluate_fn` written for Flower's FedAvg (its `arrays` the model's state
        dict), as an evaluate_fn of this strategy: it is given the global model's
        state dict (:meth:`global_model`), whatever the method's arrays hold."""
        def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
            return evaluate_fn(server_round, ArrayRecord(self.global_model(arrays).state_dict()))
        return evaluate

    def save_model(self, path: str | Path, arrays: ArrayRecord, *,
                   architecture: str | None = None,
                   dataset: dict[str, Any] | None = None) -> int:
        """Write the global model `arrays` describe to `path` (``model.safetensors``,
        read back by :func:`fedmask.nn.model_file.load_model`); return its size in
        bytes. `architecture`: a fedmask model name (default: the model's
        ``module:Class``); `dataset`: ``num_classes``, ``in_channels``,
        ``image_size``, ``mean``, ``std`` (what ``python -m fedmask predict`` needs)."""
        header = {"method": self.METHOD,
                  "architecture": architecture_name(self.model, architecture),
                  "dataset": dataset, "num_params": num_prunable(self.model),
                  "density": self.kept_fraction}
        if architecture is not None:  # a fedmask model: built with or without the bias
            header["output_bias"] = has_output_bias(self.model)
        return write_model_file(path, self.model_content(arrays), header)

    def start(self, grid: Grid, initial_arrays: ArrayRecord | None = None,
              num_rounds: int = 3, timeout: float = 3600,
              train_config: ConfigRecord | None = None,
              evaluate_config: ConfigRecord | None = None,
              evaluate_fn: EvaluateFn | None = None) -> Result:
        """Flower's ``Strategy.start``, after :meth:`prepare`; `initial_arrays`
        defaults to :meth:`initial_arrays`, the configs to :meth:`default_config`
        plus what the caller passes."""
        self.round_timeout = timeout
        arrays = self.prepare(grid, timeout, initial_arrays)
        return super().start(grid, arrays, num_rounds, timeout,
                             self.default_config(train_config),
                             self.default_config(evaluate_config), evaluate_fn)
