"""host/core/schema.py holds every message of docs/messages.md: good ones parse, bad ones get a reason."""

import json

import pytest
from edgewatch.core import schema
from edgewatch.core.schema import SchemaError, parse

TELEMETRY = {"v": 1, "device": "gh-01", "seq": 1042, "t": 1732372000,
             "values": {"temperature": 21.5, "humidity": 48.2},
             "pred": {"temperature": 21.4, "humidity": 48.6},
             "band": {"temperature": [21.1, 21.7], "humidity": [47.9, 49.3]},
             "anomaly": False, "faults": [], "model": "3f2a9c1e"}
ALERT = {"v": 1, "device": "gh-01", "seq": 1043, "t": 1732372000, "sample": 1042,
         "rule": "band", "channel": "temperature", "value": 35.2, "band": [21.1, 21.7],
         "pred": 21.4, "model": "3f2a9c1e"}
STATUS = {"v": 1, "device": "gh-01", "seq": 1043, "t": None, "state": "online",
          "fw": "0.1.0", "model": "3f2a9c1e", "heap_free": 61234, "outbox": 0,
          "dropped": 0, "uptime": 3605}
WILL = {"v": 1, "device": "gh-01", "state": "offline"}


def _b(obj):
    return json.dumps(obj).encode()


def test_documented_examples_parse_to_typed_records():
    t = parse("edgewatch/gh-01/telemetry", _b(TELEMETRY))
    assert isinstance(t, schema.Telemetry)
    assert (t.device, t.seq, t.t, t.model) == ("gh-01", 1042, 1732372000.0, "3f2a9c1e")
    assert t.values == {"temperature": 21.5, "humidity": 48.2}
    assert t.band["humidity"] == (47.9, 49.3) and t.anomaly is False and t.faults == ()
    a = parse("edgewatch/gh-01/alert", _b(ALERT))
    assert (a.rule, a.channel, a.value, a.band, a.sample) == ("band", "temperature", 35.2,
                                                               (21.1, 21.7), 1042)
    s = parse("edgewatch/gh-01/status", _b(STATUS))
    assert (s.state, s.outbox, s.model, s.uptime) == ("online", 0, "3f2a9c1e", 3605)
    w = parse("edgewatch/gh-01/status", _b(WILL))
    assert w.state == "offline" and w.seq is None and w.model is None


def test_round_trip_through_to_json():
    for topic, msg in (("telemetry", TELEMETRY), ("alert", ALERT), ("status", STATUS),
                       ("status", WILL)):
        rec = parse(f"edgewatch/gh-01/{topic}", _b(msg))
        assert parse(f"edgewatch/gh-01/{topic}", _b(schema.to_json(rec))) == rec


def test_failed_read_is_null_and_filling_window_has_no_pred():
    msg = dict(TELEMETRY, values={"temperature": None, "humidity": 40}, pred=None, band=None,
               faults=["read"], anomaly=True, t=None, model=None)
    t = parse("edgewatch/gh-01/telemetry", _b(msg))
    assert t.values == {"temperature": None, "humidity": 40.0}
    assert t.pred is None and t.band is None and t.t is None and t.faults == ("read",)


def test_custom_prefix():
    assert parse("site/a/edgewatch/gh-01/alert", _b(ALERT), prefix="site/a/edgewatch").seq == 1043
    with pytest.raises(SchemaError, match="not site"):
        parse("edgewatch/gh-01/alert", _b(ALERT), prefix="site")


BAD = [
    (b"{not json", "not JSON"),
    (b"\xff\xfe{}", "not UTF-8"),
    (b"[1, 2]", "not a JSON object"),
    (b'{"v": 1, "device": "gh-01", "seq": 1, "t": NaN, "values": {"a": 1}}', "NaN"),
    (b'{"v": 1, "device": "gh-01", "seq": 1, "t": 1, "values": {"a": Infinity}}', "Infinity"),
    (b'{"v": 1, "device": "gh-01", "seq": 1, "t": 1, "values": {"a": 1e400}}', "not finite"),
    (_b(dict(TELEMETRY, v=2)), "version"),
    (_b(dict(TELEMETRY, seq="5")), "seq: expected an integer"),
    (_b(dict(TELEMETRY, seq=True)), "seq: expected an integer"),
    (_b(dict(TELEMETRY, seq=-1)), "out of range"),
    (_b(dict(TELEMETRY, seq=2**64)), "out of range"),
    (_b(dict(TELEMETRY, device="gh-02")), "does not match"),
    (_b(dict(TELEMETRY, values={"temperature": "21"})), "expected a number"),
    (_b(dict(TELEMETRY, values={})), "non-empty"),
    (_b(dict(TELEMETRY, values={"bad name": 1})), "channel name"),
    (_b(dict(TELEMETRY, values={"seq": 1})), "reserved"),
    (_b(dict(TELEMETRY, anomaly=1)), "anomaly"),
    (_b(dict(TELEMETRY, faults=["melted"])), "faults"),
    (_b(dict(TELEMETRY, model="xyz")), "model"),
    (_b(dict(TELEMETRY, band={"temperature": [22, 21]})), "lo"),
    (_b(dict(TELEMETRY, t=-5)), "negative"),
    (_b(dict(TELEMETRY, t=1e20)), "after 9999-12-31"),
    (_b(dict(TELEMETRY, t=1.7e12)), "after 9999-12-31"),  # milliseconds, not seconds
    (_b(dict(TELEMETRY, junk="x" * 5000)), "oversized"),
]


@pytest.mark.parametrize("payload,reason", BAD)
def test_bad_telemetry_is_refused_with_a_reason(payload, reason):
    with pytest.raises(SchemaError) as exc:
        parse("edgewatch/gh-01/telemetry", payload)
    assert reason in exc.value.reason
    assert "\n" not in exc.value.reason


@pytest.mark.parametrize("change,reason", [
    ({"rule": "fire"}, "rule"), ({"sample": None}, "sample"), ({"band": [1]}, "band"),
    ({"value": "hot"}, "value"), ({"channel": 5}, "channel"),
])
def test_bad_alert(change, reason):
    with pytest.raises(SchemaError, match=reason):
        parse("edgewatch/gh-01/alert", _b(dict(ALERT, **change)))


@pytest.mark.parametrize("change,reason", [
    ({"state": "asleep"}, "state"), ({"outbox": -1}, "outbox"), ({"fw": 1}, "fw"),
])
def test_bad_status(change, reason):
    with pytest.raises(SchemaError, match=reason):
        parse("edgewatch/gh-01/status", _b(dict(STATUS, **change)))


@pytest.mark.parametrize("topic", ["edgewatch/gh-01", "edgewatch/gh 01/alert",
                                   "edgewatch/" + "x" * 33 + "/alert", "edgewatch/gh-01/model",
                                   "other/gh-01/alert", "edgewatch/a/b/alert"])
def test_bad_topics(topic):
    with pytest.raises(SchemaError):
        parse(topic, _b(ALERT))


def test_fast_paths_after_a_good_message_still_reject_the_same_bad_input():
    """The memos (topic, device, channel set) skip only checks already passed, never others."""
    good = dict(TELEMETRY, pred=None, band=None, model=None, t=1732372000.5)
    topic = "edgewatch/gh-01/telemetry"
    for _ in range(2):  # the second time every memo is warm
        t = parse(topic, _b(good))
        assert t == schema.Telemetry("gh-01", 1042, 1732372000.5,
                                     {"temperature": 21.5, "humidity": 48.2})
        assert vars(t) == vars(schema.Telemetry("gh-01", 1042, 1732372000.5,
                                                {"temperature": 21.5, "humidity": 48.2}))
        with pytest.raises(AttributeError):  # still frozen
            t.seq = 1
    bad = {
        "values.humidity: expected a number, got str": {"values": {"temperature": 21.5,
                                                                   "humidity": "48"}},
        "values.temperature: expected a number, got bool": {"values": {"temperature": True,
                                                                       "humidity": 1.0}},
        "seq: -1 out of range": {"seq": -1},
        "seq: expected an integer, got bool": {"seq": True},
        "seq: expected an integer, got float": {"seq": 1042.0},
        f"seq: {2**63} out of range": {"seq": 2**63},
        "t: -1.0 is negative": {"t": -1.0},
        "t: 1e+20 is after 9999-12-31": {"t": 1e20},
        "t: expected a number, got str": {"t": "now"},
        "device: 'gh-02' does not match": {"device": "gh-02"},
        "device: expected a string, got list": {"device": ["gh-01"]},
        "model: '3f2a9c1' is not valid": {"model": "3f2a9c1"},
        "faults: expected a list": {"faults": ["band", "band"]},
        "faults: expected a list of distinct": {"faults": "band"},
    }
    for reason, change in bad.items():
        with pytest.raises(SchemaError) as e:
            parse(topic, _b(dict(good, **change)))
        assert e.value.reason.startswith(reason), (change, e.value.reason)
    for payload in (b'{"v":1,"device":"gh-01","seq":1,"values":{"temperature":NaN,"humidity":1.0}}',
                    b'{"v":1,"device":"gh-01","seq":1,"values":{"temperature":1e400,"humidity":1.0}}'):
        with pytest.raises(SchemaError, match="temperature|NaN"):
            parse(topic, payload)
    # an int reading still becomes a float, as in the full check
    assert parse(topic, _b(dict(good, values={"temperature": 21, "humidity": 48.2}))
                 ).values["temperature"] == 21.0
    assert type(parse(topic, _b(dict(good, t=5))).t) is float
    # a known topic under another prefix is checked against that prefix
    with pytest.raises(SchemaError, match="topic"):
        parse(topic, _b(good), prefix="site")


def test_a_reading_beyond_float32_is_refused_wherever_it_sits():
    """A board's numbers are float32 (what does not fit, the firmware sends as null): 1e300
    in values, pred, band or an alert is no reading, and became an infinity in the float32
    arrays of detect and train. Refused on the fast paths (warm memos) as on the first
    message, counted as nonfinite; the largest float32 still passes. An integer too large
    for a float is a reason too, not an OverflowError."""
    from edgewatch.services.metrics import reason_label

    topic = "edgewatch/gh-01/telemetry"
    hum = {"humidity": 48.2}
    bad = {
        "values.temperature: 1e+300 is beyond the float32 range": {
            "values": {"temperature": 1e300, **hum}},
        "values.humidity: -3.5e+38 is beyond the float32 range": {
            "values": {"temperature": 21.5, "humidity": -3.5e38}},
        "pred.temperature: 1e+39 is beyond the float32 range": {
            "pred": {"temperature": 1e39, "humidity": 48.6}},
        "band.temperature.hi: 1e+300 is beyond the float32 range": {
            "band": {"temperature": [21.1, 1e300], "humidity": [47.9, 49.3]}},
        "values.temperature: not finite (an integer beyond the float range)": {
            "values": {"temperature": 10**400, **hum}},
    }
    for _ in range(2):  # the second time every memo is warm: the fast paths
        for reason, change in bad.items():
            with pytest.raises(SchemaError) as e:
                parse(topic, _b(dict(TELEMETRY, **change)))
            assert e.value.reason.startswith(reason), (change, e.value.reason)
            assert reason_label(e.value.reason) == "nonfinite"
        top = schema.FLOAT32_MAX
        t = parse(topic, _b(dict(TELEMETRY, values={"temperature": top, "humidity": -top},
                                 band={"temperature": [-top, top], "humidity": None})))
        assert t.values == {"temperature": top, "humidity": -top}
    for field in ({"value": 1e300}, {"pred": -1e300}, {"band": [0.0, 1e39]}):
        with pytest.raises(SchemaError, match="beyond the float32 range"):
            parse("edgewatch/gh-01/alert", _b(dict(ALERT, **field)))


def test_memos_stay_bounded_under_a_flood_of_distinct_names():
    for i in range(schema._MEMO_MAX + 50):
        parse(f"edgewatch/d{i}/telemetry", _b(dict(TELEMETRY, device=f"d{i}",
                                                     values={f"c{i}": 1.0})))
    assert len(schema._GOOD_DEVICES) <= schema._MEMO_MAX
    assert len(schema._GOOD_KEYSETS) <= schema._MEMO_MAX
    assert len(schema._GOOD_CHANNELS) <= schema._MEMO_MAX
    assert len(schema._TOPICS) <= 16 * schema._MEMO_MAX
    # past the bound the full checks still run and still refuse
    with pytest.raises(SchemaError, match="channel name"):
        parse("edgewatch/zz/telemetry", _b(dict(TELEMETRY, device="zz", values={"9x": 1.0})))


def test_a_sample_without_a_clock_is_stored_at_its_measurement_time():
    """`t` null + `age` (ms from the reading to its send): t = received - age."""
    msg = {"v": 1, "device": "gh-01", "epoch": 5, "seq": 7, "t": None, "age": 61500,
           "values": {"temperature": 21.0}, "pred": None, "band": None, "anomaly": False,
           "faults": [], "model": None}
    topic = "edgewatch/gh-01/telemetry"
    assert parse(topic, json.dumps(msg), received=1_800_000_100.0).t == 1_800_000_038.5
    assert parse(topic, json.dumps(msg)).t is None  # no arrival time known: none made up
    alert = {"v": 1, "device": "gh-01", "epoch": 5, "seq": 8, "t": None, "age": 2000,
             "sample": 7, "rule": "band", "channel": "temperature", "value": 30.0,
             "band": [20.0, 22.0], "pred": 21.0, "model": None}
    assert parse("edgewatch/gh-01/alert", json.dumps(alert), received=100.0).t == 98.0
    clocked = dict(msg, t=1_800_000_000.0)  # a board with a clock: its own time wins
    assert parse(topic, json.dumps(clocked), received=1_800_000_100.0).t == 1_800_000_000.0
    for bad in (-1, 2**31, 1.5, "60", True):
        with pytest.raises(SchemaError, match="age"):
            parse(topic, json.dumps(dict(msg, age=bad)), received=1.0)
