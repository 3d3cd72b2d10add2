"""The services' bare peers for `make bench` (tools/bench_host.py): the least a process can do
with the same messages, so the collector and the bridge are measured against what their
parts cost on this machine, in the same run.

    python -m tools.bare_peers subscribe --port P --count N [--user U]   # env BARE_PASSWORD
    python -m tools.bare_peers post --port P --count N --sms URL --sid SID   # env BARE_TOKEN

- subscribe: a paho subscriber to ``edgewatch/+/telemetry`` at QoS 1 (the broker's PUBACK
  flow, as the collector's), that does nothing with a message but count it;
- post: a paho subscriber to ``edgewatch/+/alert`` that POSTs, for each alert, the request
  the bridge makes (Twilio's Messages API form: To, From, Body with the alert's text), one
  at a time, on the same thread, over one kept-alive connection.

Each prints ``ready`` once subscribed and ``done <cpu seconds>`` (its own process CPU time
from its CONNACK to the N-th message) when N messages were handled, then exits (or, with
``--stay``, waits to be killed, so its CPU time can be read from outside).
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import sys
import threading
import time
from urllib.parse import urlencode, urlparse

import paho.mqtt.client as mqtt


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("role", choices=("subscribe", "post"))
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--user", default="edgewatch")
    p.add_argument("--sms", help="base URL of the Messages API (post)")
    p.add_argument("--sid", help="account SID (post)")
    p.add_argument("--stay", action="store_true",
                   help="after `done`, stay connected until killed (CPU read from outside)")
    a = p.parse_args(argv)
    done = threading.Event()
    state = {"n": 0, "cpu0": 0.0}
    conn = None
    if a.role == "post":
        u = urlparse(a.sms)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
        auth = base64.b64encode(f"{a.sid}:{os.environ['BARE_TOKEN']}".encode()).decode()
        path = f"{u.path.rstrip('/')}/2010-04-01/Accounts/{a.sid}/Messages.json"
        headers = {"Authorization": f"Basic {auth}",
                   "Content-Type": "application/x-www-form-urlencoded"}

    def on_message(_c, _u, msg):
        if a.role == "post":
            m = json.loads(msg.payload)
            lo, hi = m["band"] or (None, None)
            body = urlencode({"To": "+15551230001", "From": "+15005550006",
                              "Body": f"edgewatch {m['device']}: {m['channel']} {m['value']:.4g} "
                                      f"outside {lo}..{hi}"})
            conn.request("POST", path, body, headers)
            conn.getresponse().read()
        state["n"] += 1
        if state["n"] == a.count:
            print(f"done {time.process_time() - state['cpu0']:.3f}", flush=True)
            done.set()

    def on_subscribe(*_a):
        print("ready", flush=True)

    def on_connect(cl, *_a):
        state["cpu0"] = time.process_time()
        cl.subscribe(topic, qos=1)

    topic = "edgewatch/+/telemetry" if a.role == "subscribe" else "edgewatch/+/alert"
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                    client_id=f"bare-{a.role}-{os.getpid()}")
    c.username_pw_set(a.user, os.environ.get("BARE_PASSWORD"))
    c.on_message = on_message
    c.on_subscribe = on_subscribe
    c.on_connect = on_connect
    c.connect("127.0.0.1", a.port, keepalive=60)
    c.loop_start()
    done.wait()
    if a.stay:
        threading.Event().wait()
    c.disconnect()
    c.loop_stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
