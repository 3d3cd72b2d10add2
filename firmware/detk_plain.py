# The detector's kernels (detk.py) as plain bytecode, for ports without the native emitter
# and for CPython (the host's scorer runs the board's detector): detk.py's source compiled
# again without its viper decorators, as kernels_plain.py does for kernels.py. Here the
# reading's float bits come through fbits (a viper kernel sees an array('f') as words).
# Needs detk.py as source next to this file.
import struct


def fbits(src, dst, n):
    """float32 bits of src[:n] (array('f')) into dst (array('I'))."""
    for i in range(n):
        dst[i] = struct.unpack("<I", struct.pack("<f", src[i]))[0]


def _load():
    here = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
    try:
        with open(here + "/detk.py") as fh:
            src = fh.read()
    except OSError:
        raise ImportError("detk_plain needs detk.py as source next to it")
    g = globals()
    g["ptr32"] = g["ptr8"] = None  # the annotations CPython evaluates
    g["const"] = lambda x: x
    # line for line, so tracebacks point at detk.py's lines
    src = src.replace("@micropython.viper", "").replace("import micropython", "pass")
    src = src.replace("from micropython import const", "pass")
    exec(src, g)


_load()
