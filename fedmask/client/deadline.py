"""A ClientApp mod that answers with an error when the handler would miss the
message's deadline.

fedmask's server gives every message a TTL equal to its wait (``round-timeout-s``).
A SuperNode handles one message at a time and takes the next only once the
current one has a reply, so a ClientApp that hangs (a stuck data loader, a
deadlock in the user's code) would hold its node for the rest of the run. This
mod runs the handler in a worker thread; if it has not finished
:func:`margin_s` before the deadline, the mod logs an error and replies with an
:class:`~flwr.app.Error` (the server records the node as failed for the round),
and the process ends, leaving the hung thread behind; the node answers the next
round. It acts only in a ClientApp process of its own (``flwr-clientapp``, as a
SuperNode starts them); in a simulation the ClientApp shares its Ray actor and
the mod calls the handler as it is.
"""

from __future__ import annotations

import sys
import threading
import time
from logging import ERROR
from pathlib import Path
from typing import Any

from flwr.app import Context, Error, Message
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.constant import ErrorCode
from flwr.common.logger import log

CLIENTAPP_PROCESS = "flwr-clientapp"


def margin_s(ttl: float) -> float:
    """How long before the deadline the error reply goes: time for it to arrive."""
    return min(10.0, ttl / 10)


def _own_process() -> bool:
    return Path(sys.argv[0]).name == CLIENTAPP_PROCESS


def _late(msg: Message) -> Message:
    reason = (f"fedmask: the ClientApp did not answer this {msg.metadata.message_type} "
              f"message within its TTL of {msg.metadata.ttl:.0f} s (round-timeout-s)")
    log(ERROR, "[fedmask] %s; replying with an error so the node takes the next message",
        reason)
    return Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason), reply_to=msg)


def answer_by_deadline(msg: Message, context: Context, call_next: ClientAppCallable
                       ) -> Message:
    """Answer `msg` with `call_next`, or with an error just before its deadline."""
    if not _own_process():
        return call_next(msg, context)
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["reply"] = call_next(msg, context)
        except BaseException as error:  # noqa: BLE001 - re-raised in the caller's thread
            outcome["error"] = error

    worker = threading.Thread(target=work, name="fedmask-handler", daemon=True)
    worker.start()
    deadline = msg.metadata.created_at + msg.metadata.ttl - margin_s(msg.metadata.ttl)
    worker.join(max(0.0, deadline - time.time()))
    if worker.is_alive():
        return _late(msg)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["reply"]
