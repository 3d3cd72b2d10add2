# The engine's kernels as plain bytecode, for ports without the native emitter
# (and for the test that proves the fallback gives the same bits).
#
# There is one implementation, kernels.py; this module compiles its source
# again with the @micropython.viper decorators removed. Type annotations such
# as `p: ptr32` are ignored by the bytecode compiler, and kernels.py is written
# so that every operation gives the same result in both worlds.
# Needs kernels.py as source next to this file (not only a frozen .mpy).


def _load():
    here = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
    try:
        with open(here + "/kernels.py") as fh:
            src = fh.read()
    except OSError:
        raise ImportError("kernels_plain needs kernels.py as source next to it")
    # Line-for-line replacement keeps tracebacks pointing at kernels.py's lines.
    exec(src.replace("@micropython.viper", ""), globals())


_load()
