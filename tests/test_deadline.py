"""fedmask.client.deadline: a hung handler in a ClientApp process answers with an error
just before its message's deadline; elsewhere the handler runs as it is."""

import time

import pytest
from flwr.app import Context, Message, RecordDict

from fedmask.client import deadline


def _message(ttl: float) -> Message:
    return Message(RecordDict(), dst_node_id=7, message_type="train", ttl=ttl)


def _context() -> Context:
    return Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})


def _reply(msg: Message, context: Context) -> Message:
    return Message(RecordDict(), reply_to=msg)


@pytest.fixture
def clientapp_process(monkeypatch):
    monkeypatch.setattr("sys.argv", ["/venv/bin/flwr-clientapp", "--token", "x"])


def test_a_hung_handler_gets_an_error_reply_before_the_deadline(clientapp_process):
    msg, start = _message(ttl=2.0), time.monotonic()
    answer = deadline.answer_by_deadline(msg, _context(), lambda m, c: time.sleep(30))
    waited = time.monotonic() - start
    assert answer.has_error() and "within its TTL of 2 s" in answer.error.reason
    assert 2.0 - deadline.margin_s(2.0) - 0.5 <= waited < 2.0


def test_a_prompt_handler_answers_and_its_errors_propagate(clientapp_process):
    msg = _message(ttl=30.0)
    assert not deadline.answer_by_deadline(msg, _context(), _reply).has_error()

    def broken(m: Message, c: Context) -> Message:
        raise KeyError("no data")

    with pytest.raises(KeyError, match="no data"):
        deadline.answer_by_deadline(msg, _context(), broken)


def test_outside_a_clientapp_process_the_handler_runs_as_it_is(monkeypatch):
    monkeypatch.setattr("sys.argv", ["pytest"])
    msg, start = _message(ttl=1.0), time.monotonic()
    answer = deadline.answer_by_deadline(msg, _context(),
                                         lambda m, c: (time.sleep(1.5), _reply(m, c))[1])
    assert not answer.has_error() and time.monotonic() - start >= 1.5
