# The move rule of firmware/detector.py (rule "drift"), loaded only when a model carries it
# (docs/model_blob.md, flag MOVE; training/export/bandcal.py `move_calibrate`).
#
# A drift too slow for the residual band and its CUSUM (a one-step forecaster takes each
# small step into its next prediction) still moves a channel away from where the other
# channels say it should be: temperature and relative humidity of the same air move
# together (at a steady dew point a warming lowers the humidity). Per model channel j, over
# the last H samples of the history: d = u_now - u_H_ago (normalised units), the move the
# other channels explain, sum_k B[j][k] d[k] (least squares on the fit rows' H-sample
# moves), and net_j = d_j - that. It fires when |net_j| passes the channel's limit: the
# level the fit rows' net moves exceed at the false-alarm budget (their tail extrapolated,
# as the stuck limits are). The history is the model's: a flagged reading did not enter it
# (the last good value did), so a spike moves nothing here. A lasting change is a bounded
# episode: H samples after a step the difference no longer spans it.
#
# In 32-bit integers, detk.py's state block and units: d in Q10 clamped to +-16 units, B in
# Q12, the limit in Q10; its words follow the ring in the state block (put copies them from
# the blob, which carries them in the board's units: training/export/blob.py move_section).
# Plain bytecode, not a viper kernel (whose ~790 bytes of native code the C3's heap had not
# for an update over the air, tests/firmware/test_rv32_ota.py); small ints throughout,
# nothing allocated per sample. Loaded only for a model that carries the rule (by
# Detector.set_model, once the model is read): other boards pay no byte for it.


def put(s, raw, c):
    """The rule's words from the blob's section ``raw`` (C channels; its length and horizon
    checked by blob.py) into the state block ``s`` after the ring, as they are."""
    b = 27 + 150 * c
    s[b] = raw[0] | raw[1] << 8
    for i in range(2, 4 * (c + c * c) + 2, 4):
        b += 1
        s[b] = raw[i] | raw[i + 1] << 8 | (raw[i + 2] | raw[i + 3] << 8) << 16


def judge(s):
    """1 + the model channel whose net move over the horizon passes its limit by the most
    (in Q10), else 0; 0 until the history spans the horizon. Row j of the coefficients
    holds -1 on the diagonal: sum_k c[j][k] d[k] = -net_j."""
    nc = s[1]
    mb = 27 + 150 * nc
    h = s[mb]
    if s[3] <= h:
        return 0
    pos = s[2] - 1
    new = 27 + 22 * nc + (pos & 127) * nc
    old = 27 + 22 * nc + ((pos - h) & 127) * nc
    worst = top = 0
    for j in range(nc):
        net = 0
        cb = mb + 1 + nc + j * nc
        for k in range(nc):
            x = (s[new + k] - s[old + k]) >> 6  # Q16 -> Q10 (both biased alike)
            if x > 16383:
                x = 16383
            elif x < -16383:
                x = -16383
            net += (x * (s[cb + k] - 536870912)) >> 12
        x = abs(net) - s[mb + 1 + j]
        if x > top:
            top = x
            worst = j + 1
    return worst
