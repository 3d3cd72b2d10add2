"""firmware/main.py after an unexpected error in the app, inside MicroPython: a board resets
(machine.reset: a heap as at power-on; an app built again in the heap its first run left
does not fit the C3) after a pause that grows across the resets, kept in main.wait, so an
error at every start cannot loop fast; an app that ran a good while starts at 2 s again.
The unix port's main.py builds the app in-process; here it runs with a board's _RESET."""

from edgewatch.core import mpy

MAIN = mpy.FIRMWARE / "main.py"

# A board whose app fails: fake app and config modules, main.py's own code with a board's
# _RESET; the stand-in machine.reset() prints and exits 5 (a board starting again).
DRIVER = """
import sys, time
FAIL_AFTER_MS = %d


class App:
    _FRAMES = None

    @staticmethod
    def feed():
        pass

    @staticmethod
    def run(cfg):
        time.sleep_ms(FAIL_AFTER_MS)
        raise RuntimeError('boom')


class Config:
    class ConfigError(Exception):
        pass

    @staticmethod
    def load():
        return {}


sys.modules['app'] = App
sys.modules['config'] = Config
src = open(%r).read()
g = {'__name__': 'main'}
exec(src[:src.rindex('main()')], g)
g['_RESET'] = True
g['_HEALTHY_MS'] = %d
g['main']()
"""


def _boot(tmp_path, fail_after_ms=0, healthy_ms=600000):
    r = mpy.run(code=DRIVER % (fail_after_ms, str(MAIN), healthy_ms), cwd=tmp_path, check=False,
                timeout=30)
    return r.returncode, r.stdout


def test_an_app_error_resets_the_board_after_a_pause_that_grows_across_resets(tmp_path):
    rc, out = _boot(tmp_path)
    assert rc == 5 and "RuntimeError: boom" in out and "resetting in 2 s" in out, out
    assert "machine.reset()" in out
    assert (tmp_path / "main.wait").read_text() == "4000"  # the next start's pause
    rc, out = _boot(tmp_path)  # the error again at the next start: a longer pause
    assert rc == 5 and "resetting in 4 s" in out, out
    assert (tmp_path / "main.wait").read_text() == "8000"
    (tmp_path / "main.wait").write_text("999999")  # out of range: capped
    rc, out = _boot(tmp_path, fail_after_ms=100, healthy_ms=50)
    # the app ran longer than _HEALTHY_MS before it failed: a fresh error, 2 s
    assert rc == 5 and "resetting in 2 s" in out, out
    (tmp_path / "main.wait").write_text("junk")
    rc, out = _boot(tmp_path)
    assert rc == 5 and "resetting in 2 s" in out, out
