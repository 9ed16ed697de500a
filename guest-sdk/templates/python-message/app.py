"""`{{name}}`: a message handler. Deployed with `hearth deploy IMAGE
--subscribe TOPIC` (or `[[function.subscribe]]` in hearthd's config), it
gets every message of TOPIC: it logs it (`wasi:logging`: hearthd's log and
the Pod's, `kubectl logs`) and counts it in its state. An exception hands
the message back to be delivered again."""

from wit_world import exports
from wit_world.imports import logging, state
from wit_world.imports.wasi_messaging_types import Message


class IncomingHandler(exports.IncomingHandler):
    def handle(self, message: Message) -> None:
        count = state.Store.open("").increment("messages", 1)
        text = message.data().decode("utf-8", "replace")
        logging.log(logging.Level.INFO, "{{name}}", f"message {count} on {message.topic()}: {text}")
