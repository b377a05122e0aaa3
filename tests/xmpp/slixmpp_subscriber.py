#!/usr/bin/env python3
"""Interoperability check with an independent XMPP client library (slixmpp).

Subscribes to a tagpoll results node (waiting for the bridge to create it),
reads the node's current item, and waits for a `<results
xmlns='urn:tagpoll:results:1'>` payload whose total is at least MIN_TOTAL.

Usage: slixmpp_subscriber.py JID PASSWORD HOST PORT SERVICE NODE MIN_TOTAL TIMEOUT_S

Prints `SUBSCRIBED` once subscribed, then `RESULT {json}` with the parsed
payload and exits 0; prints `TIMEOUT` and exits 1 if nothing matched in time.
Plaintext (loopback test servers only).
"""

import asyncio
import json
import sys

import slixmpp
from slixmpp.exceptions import IqError, IqTimeout

NS = "urn:tagpoll:results:1"


def parse_results(el):
    """The payload as plain data, read with ElementTree only."""
    question = el.find("{%s}question" % NS)
    total = el.get("total")
    return {
        "poll": el.get("poll"),
        "event": el.get("event"),
        "state": el.get("state"),
        "run": el.get("run"),
        "hidden": el.get("hidden") == "true",
        "total": int(total) if total is not None else None,
        "updated": el.get("updated"),
        "question": question.text if question is not None else None,
        "answers": [
            {"id": a.get("id"), "label": a.text or "", "votes": int(a.get("votes"))}
            for a in el.findall("{%s}answer" % NS)
        ],
    }


class Subscriber(slixmpp.ClientXMPP):
    def __init__(self, jid, password, service, node, min_total, result):
        # Loopback test servers only: SCRAM without TLS.
        super().__init__(
            jid, password, plugin_config={"feature_mechanisms": {"unencrypted_scram": True}}
        )
        self.enable_plaintext = True
        self.enable_starttls = False
        self.enable_direct_tls = False
        self.service = service
        self.node = node
        self.min_total = min_total
        self.result = result
        self.register_plugin("xep_0030")
        self.register_plugin("xep_0060")
        self.add_event_handler("session_start", self.start)
        self.add_event_handler("pubsub_publish", self.published)

    async def start(self, _event):
        self.send_presence()
        for _ in range(150):
            try:
                await self.plugin["xep_0060"].subscribe(self.service, self.node)
                break
            except (IqError, IqTimeout):
                await asyncio.sleep(0.2)
        else:
            print("NO NODE", flush=True)
            return
        print("SUBSCRIBED", flush=True)
        try:
            items = await self.plugin["xep_0060"].get_items(self.service, self.node)
            for item in items["pubsub"]["items"]:
                self.check(item)
        except (IqError, IqTimeout) as e:
            print("items request failed: %s" % e, file=sys.stderr, flush=True)

    def published(self, msg):
        # slixmpp raises this event once per item while it iterates over the
        # items itself; iterating again here would reset its iterator.
        items = msg["pubsub_event"]["items"]
        if items["node"] == self.node:
            self.check(items["item"])

    def check(self, item):
        payload = item["payload"]
        if payload is None or payload.tag != "{%s}results" % NS:
            return
        data = parse_results(payload)
        data["item_id"] = item["id"]
        if data["total"] is not None and data["total"] >= self.min_total and not self.result.done():
            self.result.set_result(data)


async def main(argv):
    jid, password, host, port, service, node, min_total, timeout = argv[1:9]
    result = asyncio.get_running_loop().create_future()
    xmpp = Subscriber(jid, password, service, node, int(min_total), result)
    xmpp.connect(host, int(port))
    try:
        data = await asyncio.wait_for(result, float(timeout))
    except asyncio.TimeoutError:
        print("TIMEOUT", flush=True)
        return 1
    print("RESULT " + json.dumps(data), flush=True)
    xmpp.disconnect()
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 9:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(asyncio.run(main(sys.argv)))
