"""An in-process federation for sweeps: fedmask's ServerApp body and its ClientApp
body in one Python process, each message answered as soon as it is pushed.

The server side (strategy, validation, accounting, results.json, model file) and
the client side (data partition, training loop, method hooks, per-message seeds)
are the code a ``flwr run`` executes; only the transport differs: no Ray, no
gRPC, no SuperLink, messages handed over in memory (their sizes are still
measured by serializing them). It runs a 20-client round in a fraction of a
simulation's time, which is what a hyper-parameter sweep needs; ``compare.py``
runs real Flower simulations unless told ``--in-process``, and the test suite runs
its smoke entries both ways (``tests/conftest.py``).

Usage::

    from loopback import run_federation
    results = run_federation({"method": "hidenseek", "data-root": ...}, num_nodes=20)
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from uuid import uuid4

from flwr.app import Context, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from fedmask.client import node
from fedmask.server import app

RUN_ID = 1
Answer = Callable[[Message, Context, str], Message]  # node.handle's signature


class LoopbackGrid(Grid):
    """A Grid whose `num_nodes` nodes answer in-process with fedmask's ClientApp
    body, each with its own partition (``partition-id``) and ``context.state``."""

    def __init__(self, run_config: dict[str, Any], num_nodes: int,
                 answer: Answer = node.handle) -> None:
        self.answer = answer
        self.contexts = {
            1000 + pid: Context(run_id=RUN_ID, node_id=1000 + pid, state=RecordDict(),
                                run_config=run_config,
                                node_config={"partition-id": pid, "num-partitions": num_nodes})
            for pid in range(num_nodes)}
        self.replies: dict[str, Message] = {}
        self._run = Run.create_empty(RUN_ID)

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int,
                       group_id: str, ttl: float | None = None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Answer each message at once (its reply waits for `pull_messages`)."""
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid4())
            context = self.contexts[msg.metadata.dst_node_id]
            self.replies[msg.metadata.message_id] = self.answer(
                msg, context, msg.metadata.message_type.split(".")[0])
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self.replies.pop(i) for i in message_ids if i in self.replies]

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        del timeout  # every reply is in once pushed
        return self.pull_messages(self.push_messages(messages))


def run_federation(run_config: dict[str, Any], num_nodes: int,
                   answer: Answer = node.handle) -> dict[str, Any]:
    """Run fedmask's ServerApp body on a :class:`LoopbackGrid` whose nodes reply with
    `answer` (fedmask's ClientApp body unless given); return results.json (written to
    `out-dir`, or to a temporary folder when the config names none)."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = RUN_ID, 0, 1
    with tempfile.TemporaryDirectory(prefix="fedmask-loopback-") as tmp:
        config = {"out-dir": tmp, "min-nodes": 1, **run_config}
        context = Context(run_id=RUN_ID, node_id=0, node_config={}, state=RecordDict(),
                          run_config=config)
        path = app.run(LoopbackGrid(config, num_nodes, answer), context)
        return dict(json.loads(Path(path).read_text()))
