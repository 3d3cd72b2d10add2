"""`edgewatch dashboard` over HTTP (no browser): binding and token, downsampling, models page."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from contextlib import contextmanager

from edgewatch.core.store import Store
from edgewatch.services.registry import Registry
from hostkit import edgewatch, service_env

from tests.services.test_dashboard import _get, start_dashboard
from tests.services.test_store_dashboard import tel

TOKEN = "a-long-dashboard-token-42"


@contextmanager
def serving(tmp_path, rows, *args, env=None):
    """A dashboard (`--no-live`) over a new database holding `rows`; yields its base URL."""
    db = f"sqlite:///{tmp_path}/ew.db"
    s = Store(db)
    s.write(rows, [])
    s.close()
    proc, url = start_dashboard(tmp_path, db, "--no-live", *args, env=env)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def test_other_addresses_need_a_token(tmp_path):
    Store(f"sqlite:///{tmp_path}/ew.db").close()
    r = subprocess.run(edgewatch("dashboard", "--db", f"sqlite:///{tmp_path}/ew.db", "--host",
                                 "0.0.0.0", "--no-live"), capture_output=True, text=True,
                       env=service_env(), timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "EDGEWATCH_DASHBOARD_TOKEN" in r.stderr
    r = subprocess.run(edgewatch("dashboard", "--db", f"sqlite:///{tmp_path}/none.db",
                                 "--no-live"), capture_output=True, text=True,
                       env=service_env(), timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "no such database" in r.stderr


def test_a_port_out_of_range_is_one_line(tmp_path):
    """bind() raised OverflowError: a traceback."""
    Store(f"sqlite:///{tmp_path}/ew.db").close()
    for extra, args, message in (
            ({"EDGEWATCH_DASHBOARD_PORT": "99999"}, [],
             "EDGEWATCH_DASHBOARD_PORT='99999': expected a TCP port 0-65535"),
            ({}, ["--port", "-1"], "--port -1: expected a TCP port 0-65535")):
        r = subprocess.run(edgewatch("dashboard", "--db", f"sqlite:///{tmp_path}/ew.db",
                                     "--no-live", *args), capture_output=True, text=True,
                           env=service_env(**extra), timeout=60)
        assert r.returncode == 2, r.stderr
        assert r.stderr.strip() == f"edgewatch dashboard: {message}"


def test_token_is_required_when_set_and_never_shown(tmp_path):
    with serving(tmp_path, [], env={"EDGEWATCH_DASHBOARD_TOKEN": TOKEN}) as url:
        assert _get(url + "api/fleet")[0] == 401
        assert _get(url, {"Authorization": "Bearer wrong-token-wrong-token"})[0] == 401
        code, body = _get(url, {"Authorization": f"Bearer {TOKEN}"})
        assert code == 200 and TOKEN not in body

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *a, **k):
                return None

        opener = urllib.request.build_opener(NoRedirect)
        try:
            opener.open(url + f"?token={TOKEN}", timeout=5)
            raise AssertionError("expected a redirect")
        except urllib.error.HTTPError as exc:
            assert exc.code == 303 and "token" not in exc.headers["location"]
            cookie = exc.headers["set-cookie"].split(";")[0]
            assert "HttpOnly" in exc.headers["set-cookie"]
        assert _get(url + "api/fleet", {"Cookie": cookie})[0] == 200


def test_a_chart_never_ships_more_than_the_points_asked_and_keeps_spikes(tmp_path):
    rows = [tel(i, 1000.0 + 60 * i, 20.0 + (i % 10) / 10) for i in range(20000)]
    rows[12345] = tel(12345, 1000.0 + 60 * 12345, 99.0)
    with serving(tmp_path, rows) as url:
        code, body = _get(url + "api/device/gh-01/series?start=0&end=1e10&points=500")
        s = json.loads(body)
        assert code == 200 and len(s["t"]) <= 500 and sum(s["n"]) == 20000
        assert max(s["temperature"]["max"]) == 99.0  # the spike survives downsampling
        assert max(x for x in s["temperature"]["hi"] if x is not None) == 101.0
        assert 1 in s["anomaly"]
        code, body = _get(url + "api/device/gh-01/series?points=100000")  # capped
        assert len(json.loads(body)["t"]) <= 4000
        # a zoomed range is exact: 60 one-minute samples, one per bucket
        code, body = _get(url + f"api/device/gh-01/series?start={1000 + 60 * 100}"
                          f"&end={1000 + 60 * 159}&points=1000")
        z = json.loads(body)
        assert z["n"] == [1] * 60 and z["temperature"]["avg"][0] == 20.0


def test_models_page_shows_the_registry_and_which_boards_run_it(tmp_path):
    reg = Registry(tmp_path / "registry")
    e = reg.add(b"blob-bytes", metrics={"rmse": 0.1234567}, model_id="3f2a9c1e", approved=True)
    reg.mark_deployed(e.id, "fleet")
    rows = [tel(1, 10.0, 20.0), tel(1, 10.0, 20.0, device="gh-02")]
    with serving(tmp_path, rows, "--registry", str(tmp_path / "registry")) as url:
        code, body = _get(url + "models")
        assert code == 200
        assert e.id in body and "3f2a9c1e" in body and "rmse=0.1235" in body
        assert "gh-01, gh-02" in body and "up to date" in body
