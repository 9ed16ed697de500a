// `{{name}}`: a message handler. Deployed with `hearth deploy IMAGE
// --subscribe TOPIC` (or `[[function.subscribe]]` in hearthd's config), it
// gets every message of TOPIC: it logs it (`wasi:logging`: hearthd's log and
// the Pod's, `kubectl logs`) and counts it in its state. A thrown error hands
// the message back to be delivered again.
import { Store } from "hearth:function/state@0.1.0";
import { log } from "wasi:logging/logging@0.1.0-draft";

const decoder = new TextDecoder();

export const incomingHandler = {
  handle(message) {
    const count = Store.open("").increment("messages", 1n);
    const text = decoder.decode(message.data());
    log("info", "{{name}}", `message ${count} on ${message.topic()}: ${text}`);
  },
};
