"""Shared fixtures: Flower message plumbing for strategy tests, a simulation SuperLink."""

import os
import time
from pathlib import Path

import pytest
from flwr.app import Error, Message, MessageType, Metadata, RecordDict
from flwr.app.message.message import make_message
from flwr.supercore.task_identity import TaskIdentity

from fedmask.launch import simulation_superlink

ROOT = Path(__file__).resolve().parents[1]
DATA_ROOT = os.environ.get("FEDMASK_TEST_DATA", str(ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def superlink(tmp_path_factory):
    """Env of a simulation SuperLink shared by every real `flwr run` test; stopped at the end."""
    with simulation_superlink(tmp_path_factory.mktemp("flwr-home")) as env:
        yield env


@pytest.fixture(autouse=True)
def task_identity():
    """Let code under test create Messages as a ServerApp would."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = None, None, None


def _metadata(node: int, message_type: str) -> Metadata:
    return Metadata(run_id=1, message_id=f"m{node}", src_node_id=node, dst_node_id=0,
                    reply_to_message_id="", group_id="1", created_at=time.time(),
                    ttl=3600.0, message_type=message_type)


@pytest.fixture
def client_reply():
    """Factory: a reply from `node` carrying `content` (or an error if content is None)."""
    def make(content: RecordDict | None, node: int = 1,
             message_type: str = MessageType.TRAIN) -> Message:
        if content is None:
            return make_message(_metadata(node, message_type), error=Error(1, "boom"))
        return make_message(_metadata(node, message_type), content=content)
    return make
