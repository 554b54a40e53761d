"""The methods fedmask implements, each declared once.

A :class:`Method` names everything the rest of the code derives from: the
run-config options it reads (with defaults and checks), its strategy class (by
import path, so that a ClientApp never imports server code), its client-side
module, whether its nodes keep state between rounds, and what ``optimizer =
"auto"``, ``lr = 0``, ``init = "auto"`` and ``loss = "auto"`` resolve to. Each method package
(``fedmask/methods/<name>/``) declares ``METHOD``; :data:`REGISTRY` lists them.
Adding a method: its package, its strategy module, one line here, and its
options in ``pyproject.toml``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from fedmask.options import Option, argument_name


@dataclass(frozen=True)
class Method:
    """One method: its name, options, strategy, client side and defaults.

    Attributes
    ----------
    name : str
        The ``method`` run-config value.
    strategy : str
        ``"module:Class"`` of its Flower strategy.
    client : str
        Module with the client hooks (``train_module``, ``eval_module``, and
        ``query`` when the strategy sends query messages).
    options : dict[str, Option]
        Run-config keys only this method reads.
    arguments : tuple[str, ...]
        Run-config keys passed to the strategy's constructor (snake-cased):
        its own options and the common ones it uses (``density``, ``mask-coding``).
    defaults : dict[str, Any]
        ``optimizer``, ``lr``, ``init`` and ``loss`` for the ``auto`` settings.
    stateful : bool
        Its nodes keep state between rounds in ``context.state``.
    personalised : bool
        Its client evaluation also fine-tunes for ``personal-epochs``.
    """

    name: str
    strategy: str
    client: str
    options: dict[str, Option] = field(default_factory=dict)
    arguments: tuple[str, ...] = ()
    defaults: dict[str, Any] = field(default_factory=dict)
    stateful: bool = False
    personalised: bool = False

    def strategy_class(self) -> type:
        """The strategy class (imported on first use: server side only)."""
        module, _, name = self.strategy.partition(":")
        return getattr(importlib.import_module(module), name)

    def client_module(self) -> ModuleType:
        """The module with this method's client hooks."""
        return importlib.import_module(self.client)

    def strategy_arguments(self, config: dict[str, Any]) -> dict[str, Any]:
        """The constructor arguments this method takes from a parsed run `config`."""
        return {argument_name(key): config[key] for key in self.arguments}


def _registry() -> dict[str, Method]:
    from fedmask.methods import fedavg, fedpm, fedsparsify, hidenseek, mpfl, ssfl
    methods = (hidenseek, fedpm, mpfl, ssfl, fedsparsify, fedavg)
    return {package.METHOD.name: package.METHOD for package in methods}


REGISTRY: dict[str, Method] = _registry()
METHOD_KEY = "fedmask-method"  # config key naming the method in every message


def get_method(name: str) -> Method:
    """The method called `name`; ValueError naming the known ones otherwise."""
    if name not in REGISTRY:
        raise ValueError(f"method: unknown method {name!r}; allowed: {sorted(REGISTRY)}")
    return REGISTRY[name]
