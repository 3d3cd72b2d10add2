# The detector's kernels as plain bytecode, for ports without the native emitter and for
# CPython (the host's scorer runs the board's detector): load(name) compiles firmware
# module `name` (detk, seedband, residual, shift, detset) again without its viper decorators, as
# kernels_plain.py does for kernels.py. The float bits a viper kernel reads from an
# array('f') come here through fbits into an array('I') (detk.pre is wrapped so).
# Needs the modules as source next to this file.
import struct
from array import array


def fbits(src, dst, n):
    """float32 bits of src[:n] (array('f')) into dst (array('I'))."""
    for i in range(n):
        dst[i] = struct.unpack("<I", struct.pack("<f", src[i]))[0]


class _Module:
    pass


def load(name):
    here = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
    path = here + "/" + name + ".py"
    try:
        with open(path) as fh:
            src = fh.read()
    except OSError:
        raise ImportError("detk_plain needs %s.py as source next to it" % name)
    # the annotations CPython evaluates, and micropython's const
    g = {"__name__": name, "__file__": path, "ptr32": None, "ptr8": None, "const": lambda x: x}
    # line for line, so tracebacks point at the module's lines
    src = src.replace("@micropython.viper", "").replace("from micropython import const", "pass")
    exec(compile(src.replace("import micropython", "pass"), path, "exec"), g)
    m = _Module()
    for k in g:
        setattr(m, k, g[k])
    if name == "detk":
        m.pre = _bits_first(m.pre)
    return m


def _bits_first(pre):
    # a viper kernel reads the reading's array('f') as words; plain code gets the words here
    def bits_pre(s, b, q, z):
        w = array("I", bytes(4 * len(b)))
        fbits(b, w, len(b))
        return pre(s, w, q, z)

    return bits_pre
