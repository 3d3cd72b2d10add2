# The engine's kernels as plain bytecode, for ports without the native emitter
# (and for the test that proves the fallback gives the same bits).
#
# There is one implementation, kernels.py; this module compiles its source
# again with the @micropython.viper decorators removed. Type annotations such
# as `p: ptr32` are ignored by the bytecode compiler, and kernels.py is written
# so that every operation gives the same result in both worlds. Its pointer
# arithmetic (ptr8(int(buf) + n)) runs here on _Addr, a buffer and an offset.
# Needs kernels.py as source next to this file (not only a frozen .mpy).


import gc


class _Addr:
    # What viper's int(buffer) and ptr8(address) give, for bytecode: a buffer and an
    # offset into it, moved by + and read by index (slow; the fallback only).
    def __init__(self, buf, off):
        self.b = buf
        self.o = off

    def __add__(self, n):
        return _Addr(self.b, self.o + n)

    def __getitem__(self, i):
        return self.b[self.o + i]

    def __setitem__(self, i, v):
        self.b[self.o + i] = v


_int = int


def int(v):  # noqa: A001 (viper's int() of a pointer is its address)
    if isinstance(v, _Addr):
        return v
    if isinstance(v, _Words):
        return v.a
    if isinstance(v, (bytes, bytearray, memoryview)):
        return _Addr(v, 0)
    return _int(v)


def ptr8(a):
    return a


class _Words:
    # viper's ptr32 for bytecode: little-endian 32-bit words at an _Addr
    def __init__(self, a):
        self.a = a

    def __getitem__(self, i):
        b, o = self.a.b, self.a.o + 4 * i
        return b[o] | b[o + 1] << 8 | b[o + 2] << 16 | b[o + 3] << 24

    def __setitem__(self, i, v):
        b, o = self.a.b, self.a.o + 4 * i
        b[o] = v & 0xFF
        b[o + 1] = (v >> 8) & 0xFF
        b[o + 2] = (v >> 16) & 0xFF
        b[o + 3] = (v >> 24) & 0xFF


def ptr32(a):
    return _Words(a)


def _squeeze(line):
    # The same code in fewer bytes: indentation as tabs (4 spaces -> 1 tab, the same
    # blocks), no trailing comment (kernels.py has no string literals).
    body = line.lstrip(" ")
    ind = "\t" * ((len(line) - len(body)) // 4)
    i = body.find("  #")
    if i >= 0:
        body = body[:i] + "\n"
    return ind + body


def _run(start, part):
    src = "\n" * start + "".join(part)
    part.clear()
    gc.collect()  # the compiler needs a few KB in one block
    exec(src, globals())


def _load():
    here = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
    try:
        fh = open(here + "/kernels.py")
    except OSError:
        raise ImportError("kernels_plain needs kernels.py as source next to it")
    # One function at a time, squeezed (a heap may have no block for the whole
    # source); blank lines in front keep tracebacks pointing at kernels.py's lines.
    with fh:
        start = 0
        n = 0
        part = []
        for line in fh:
            if line.startswith("@micropython.viper"):
                if part:
                    _run(start, part)
                start = n + 1
            elif line.lstrip().startswith("#"):
                part.append("\n")  # comments: only their line
            else:
                part.append(_squeeze(line))
            n += 1
        _run(start, part)


_load()
