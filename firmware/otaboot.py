"""The set-up's part of a model update over the air (app.py, App._load_model): imported
only when a model was received (model.new) or the last one refused (model.err), and
dropped after, so none of it stays in memory on the board.

A received model is verified with the board's OTA key (signature, key version, newer than
any before: blob.py) and parsed here, after a reset (App.apply_blob): the heap as at boot,
the rules' kernels loaded for it (App._rule_kernels). It is stored over the old model only
once the set-up is through with it (commit, at the end of App.__init__): a model that
verifies but leaves the rest of the set-up no room (or a reset during it) must not become
the model the board boots with, into the same MemoryError at every restart and never
online again. So before its set-up its _tag goes to model.err with the reason it is
refused if the set-up never ends; a model.new found with its own _tag in model.err is
that case, refused without another try (blob.py wrote ota.ver: a second try would be
refused as a rollback anyway).

Refused, its _tag and the reason go to model.err, it is removed, and the app is built
again (App.restart: App.run returns, main.py resets), which loads the old model as at
any boot: the heap the new one's parse left, and the kernels loaded for it, may not hold
the old one. The reason is in the board's status until the next reboot, and a retained
copy of the refused blob, delivered again at each connect, is dropped without a reset
(app._REFUSED), also after reboots. The _tag is taken from the file in pieces, before the
blob is read whole: a blob that does not fit in memory is known by it too (without it,
its retained copy reset the board at every connect).
"""

import os
import sys
from binascii import crc32, hexlify, unhexlify

import app

_UNFIT = "model: the board did not start with it (out of memory or reset during its set-up)"


def load(a):
    """True when done: the received model is set up (a.pending: commit stores it once the
    set-up is through), or a restart is asked (a.restart)."""
    new = a.new_file
    if not app._exists(new):
        _refused(a)
        return False
    try:
        tag = _tag(new)
    except OSError:
        tag = None
    last = _read(a)
    if tag is not None and last is not None and last[0] == tag:
        err = last[1] or _UNFIT  # its set-up never ended (or it was refused, then the cut)
    else:
        _write(a, tag, _UNFIT)  # what the next set-up says if this one never ends
        try:
            blob = app._read_blob(new)
            m, err = a._verify(blob, a.cfg["ota_key"])
        except MemoryError:
            m, err = None, "model: does not fit in memory"
        except OSError as e:
            m, err = None, "model: cannot read it (%s)" % e
        blob = None
        if not err:
            a.model, a.blob_tag, a.pending = m, tag, 1
            return True
    a.det.set_model(None)
    a.log("app: new model refused: %s" % err)
    _write(a, tag, err)  # before the removal: a cut between them refuses it at the next boot
    app._remove(new)
    a.restart = True
    return True


def commit(a):
    """The set-up with the received model is through (App.__init__): store it over the old
    one. Drops this module from memory again."""
    a.pending = None
    _write(a, a.blob_tag, "")  # a cut from here on: no reason to show at the next boot
    try:
        _store(a.new_file, a.cfg["model_file"])
    except OSError as e:
        err = "model: cannot store (%s)" % e
        a.log("app: new model refused: %s" % err)
        _write(a, a.blob_tag, err)
        app._remove(a.new_file)
        a.restart = True
    else:
        app._remove(_err(a))
        app._REFUSED = None
        a.log("app: model %s in use" % a.model_id())
    del sys.modules["otaboot"]


def _refused(a):
    # the reason the last received model was refused, for the status of this boot (the
    # one after the refusal's reset; the file keeps only the _tag after it, as a refusal
    # held in RAM was forgotten at the next reboot); its _tag, to drop a retained copy of
    # the blob without a reset
    r = _read(a)
    if r is not None:
        app._REFUSED = r[0]
        if r[1]:
            a.model_error = r[1]
        if r[0] is None:  # nothing left to keep
            app._remove(_err(a))
        elif r[1]:
            _write(a, r[0], "")


def _read(a):
    # model.err -> (_tag or None, reason); None when there is none. One that is not ours
    # (torn, corrupted) is removed: otherwise otaboot is imported at every boot for it
    try:
        with open(_err(a), "rb") as f:
            n, c, t, err = f.read(240).decode().split(" ", 3)
        return ((int(n), int(c), unhexlify(t)) if t != "-" else None), err[:120]
    except OSError:
        return None
    except ValueError:  # UnicodeError too
        app._remove(_err(a))
        return None


def _write(a, tag, err):
    try:
        with open(_err(a), "w") as f:
            f.write("%d %d %s %s" % (tag[0], tag[1], hexlify(tag[2]).decode(), err) if tag
                    else "0 0 - " + err)
    except OSError:
        pass


def _tag(path):
    # App.blob_tag's (size, CRC32 of the file, last 8 bytes), read in pieces
    n = os.stat(path)[6]
    b = bytearray(128)
    mv = memoryview(b)
    c = 0
    with open(path, "rb") as f:
        while True:
            k = f.readinto(b)
            if not k:
                break
            c = crc32(mv[:k], c)
        f.seek(n - 8 if n > 8 else 0)
        return n, c, f.read(8)


def _err(a):
    return a.new_file[:-4] + ".err"


def _store(new, path):
    # new -> path, atomically where the file system renames over a file
    try:
        os.rename(new, path)
    except OSError:  # FAT cannot rename onto an existing file
        app._remove(path)
        os.rename(new, path)
