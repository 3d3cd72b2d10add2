"""The set-up's part of a model update over the air (app.py, App._load_model): imported
only when a model was received (model.new) or the last one refused (model.err), and
dropped after, so none of it stays in memory on the board.

A received model is verified with the board's OTA key (signature, key version, newer than
any before: blob.py) and parsed here, after a reset (App.apply_blob): the heap as at boot,
the rules' kernels loaded for it (App._rule_kernels). It is stored over the old model only
once it runs. Refused, it is removed, its _tag and the reason go to model.err, and the app
is built again (App.restart: App.run returns, main.py resets), which loads the old model
as at any boot: the heap the new one's parse left, and the kernels loaded for it, may not
hold the old one. The reason is in the board's status until the next reboot, and a
retained copy of the refused blob, delivered again at each connect, is dropped without a
reset (app._REFUSED), also after reboots.
"""

import os
from binascii import crc32, hexlify, unhexlify

import app


def load(a):
    """True when done: the received model runs, or a restart is asked (a.restart)."""
    new = a.new_file
    if not app._exists(new):
        _refused(a)
        return False
    try:
        blob = app._read_blob(new)
        tag = (len(blob), crc32(blob), bytes(blob[len(blob) - 8:]))  # App.blob_tag's
        m, err = a._verify(blob, a.cfg["ota_key"])
    except MemoryError:
        m, tag, err = None, None, "model: does not fit in memory"
    blob = None
    if not err:
        try:
            _store(new, a.cfg["model_file"])
        except OSError as e:
            err = "model: cannot store (%s)" % e
    app._remove(new)
    if not err:
        app._remove(_err(a))
        app._REFUSED = None
        a.model, a.blob_tag = m, tag
        a.log("app: model %s in use" % m.model_id)
        return True
    a.det.set_model(None)
    a.log("app: new model refused: %s" % err)
    try:
        with open(_err(a), "w") as f:
            f.write("%d %d %s %s" % (tag[0], tag[1], hexlify(tag[2]).decode(), err) if tag
                    else "0 0 - " + err)
    except OSError:
        pass
    a.restart = True
    return True


def _refused(a):
    # the reason the last received model was refused, for the status of this boot (the
    # one after the refusal's reset; the file keeps only the _tag after it, as a refusal
    # held in RAM was forgotten at the next reboot); its _tag, to drop a retained copy of
    # the blob without a reset
    try:
        with open(_err(a), "rb") as f:
            n, c, t, err = f.read(240).decode().split(" ", 3)
        if t != "-":
            app._REFUSED = (int(n), int(c), unhexlify(t))
        if err:
            a.model_error = err
            with open(_err(a), "w") as f:
                f.write("%s %s %s " % (n, c, t))
    except (OSError, ValueError):
        pass


def _err(a):
    return a.new_file[:-4] + ".err"


def _store(new, path):
    # new -> path, atomically where the file system renames over a file
    try:
        os.rename(new, path)
    except OSError:  # FAT cannot rename onto an existing file
        app._remove(path)
        os.rename(new, path)
