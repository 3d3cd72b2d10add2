"""Board entry point: start the app; never crash-loop.

A bad or missing config is printed as one line on the REPL, the LED blinks, and
the file is read again after a growing pause (2 s .. 60 s) - no reset, so a user
can fix it over the REPL or `make deploy`. An unexpected error in the app is
printed and, after a growing pause (2 s .. 60 s, feeding the watchdog), a board resets:
the app starts on a heap as at power-on, its queue on flash. Built again in the heap its
first run left, the app does not fit the C3's 80 KB (measured on RV32 for the models
swapped over the air: every rebuild failed), and the board would retry for ever without
sampling. The pause it grew to is kept in a file across the reset, so an error at every
start cannot loop fast; an app that ran 10 minutes before failing starts again at 2 s.
The unix port (the host's stand-in) builds the app again in-process. The watchdog resets
a board that hangs. A model received over the air resets the board once: its set-up loads
the model on a heap as at boot (app.App.apply_blob).
"""

import gc
import sys
import time

_MAX_WAIT_MS = 60000
_WAIT_FILE = "main.wait"  # the pause before the next start after an error, ms, across resets
_HEALTHY_MS = 600000  # an app that ran this long before failing: the pause starts at 2 s again
_RESET = sys.platform != "linux"  # a board resets after an error; the unix port cannot


def _saved_wait():
    try:
        with open(_WAIT_FILE) as f:
            return min(max(int(f.read()), 2000), _MAX_WAIT_MS)
    except (OSError, ValueError):
        return 2000


def _reset(wait):
    # keep the grown pause for the next start, then a heap as at power-on
    try:
        with open(_WAIT_FILE, "w") as f:
            f.write(str(wait))
    except OSError:
        pass
    import machine

    machine.reset()


def _led(config):
    try:
        import machine

        pin = config.load_board()["pins"].get("led")
        return None if pin is None else machine.Pin(pin, machine.Pin.OUT)
    except Exception:
        return None


def _wait(ms, led=None):
    # sleep in small steps, blinking and feeding a watchdog the app may have started
    app = sys.modules.get("app")
    end = time.ticks_add(time.ticks_ms(), ms)
    on = 0
    while time.ticks_diff(end, time.ticks_ms()) > 0:
        if app is not None:
            app.feed()
        if led is not None:
            on ^= 1
            led.value(on)
        time.sleep_ms(250)


def main():
    """Load the config (waiting until it is valid) and run the app, restarting it on errors."""
    wait = 2000
    app_wait = _saved_wait()
    started = None
    while True:
        gc.collect()
        try:
            # the app (and the engine) first, while the heap is in one piece; the config
            # checker after, and it is dropped once the config is good. Before them a hole
            # for the sampling loop's call frames, low in the heap (app.py, _FRAMES); not on
            # a 64-bit port (the unix port, the host's stand-in), whose set-up has no KB
            # to spare for it
            frames = bytearray(1024) if sys.maxsize < 1 << 32 else None
            import app

            app._FRAMES = frames
            frames = None
            import config

            try:
                cfg = config.load()
            except config.ConfigError as e:
                print("edgewatch: config error: %s (retrying in %d s)" % (e, wait // 1000))
                _wait(wait, _led(config))
                wait = min(wait * 2, _MAX_WAIT_MS)
                continue
            wait = 2000
            # the checker is not needed while running: give its ~10 KB back to the heap
            del sys.modules["config"]
            config = None
            gc.collect()
            started = time.ticks_ms()
            if app.run(cfg):  # the unix port, after a model was received (App.run)
                continue
            return  # only a simulation (stop_after) ends
        except KeyboardInterrupt:
            raise
        except Exception as e:
            if started is not None and time.ticks_diff(time.ticks_ms(), started) > _HEALTHY_MS:
                app_wait = 2000  # it ran a good while: not an error of every start
            started = None
            print("edgewatch: app stopped:")
            sys.print_exception(e)
            print("edgewatch: %s in %d s" % ("resetting" if _RESET else "restarting the app",
                                             app_wait // 1000))
            _wait(app_wait)
            app_wait = min(app_wait * 2, _MAX_WAIT_MS)
            if _RESET:
                _reset(app_wait)


main()
