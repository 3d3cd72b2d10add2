"""Detectors: each rule does what its docstring says on real data with known faults."""

import numpy as np
import pytest
from edgewatch.training.evaluation import detectors, skab
from edgewatch.training.export import shiftcal
from edgewatch.training.forecast.data import load_skab, shared_data


@pytest.fixture(scope="module")
def free():
    """SKAB's anomaly-free run: real 8-channel process data with no anomaly.

    A stretch without operating-point drift (elsewhere the run drifts, and the
    level-based views fire there too: docs/benchmarks.md says so).
    """
    s = load_skab(shared_data() / "skab" / "anomaly-free" / "anomaly-free.csv")
    return s.values[3000:4200].astype(np.float64)


def test_rolling_mean_is_causal():
    x = np.arange(10, dtype=float)[:, None]
    m = shiftcal.rolling_mean(x, 3)
    assert m[0, 0] == 0 and m[1, 0] == 0.5 and m[5, 0] == 4.0
    y = x.copy()
    y[7:] = 100.0  # the future must not change the past
    np.testing.assert_array_equal(shiftcal.rolling_mean(y, 3)[:7], m[:7])


def test_hold_keeps_an_alert_up_after_its_last_trigger():
    a = np.zeros(12, bool)
    a[[2, 3, 9]] = True
    np.testing.assert_array_equal(np.flatnonzero(detectors.hold_alerts(a, 2)), [2, 3, 4, 5, 9, 10, 11])
    np.testing.assert_array_equal(detectors.hold_alerts(a, 0), a)


def test_fill_missing_carries_the_last_reading():
    v = np.array([[np.nan, 1.0], [2.0, np.nan], [np.nan, np.nan], [5.0, 6.0]])
    np.testing.assert_array_equal(detectors.fill_missing(v),
                                  [[2.0, 1.0], [2.0, 1.0], [2.0, 1.0], [5.0, 6.0]])


def test_band_rule_is_the_seeds_strict_band():
    win = np.zeros((3, 4, 1))
    win[:, :, 0] = [0.0, 0.0, 0.0, 0.0]          # sigma 0 -> half-width 3*0.01
    pred = np.zeros((3, 1))
    actual = np.array([[0.0299], [0.03], [-0.031]])
    np.testing.assert_array_equal(detectors.band_rule(win, actual, pred)[:, 0], [False, True, True])


def test_ms_ensemble_flags_a_sustained_shift_not_the_clean_run(free):
    v = free.copy()
    clean = detectors.MultiscaleEnsemble().run(v, 400)
    assert clean[400:].mean() < 0.05
    shifted = v.copy()
    sd = v[:400].std(axis=0)
    shifted[800:1100, 7] += 4 * sd[7]       # one channel sits 4 sigma off for 5 minutes
    shifted[800:1100, 4] += 4 * sd[4]
    hit = detectors.MultiscaleEnsemble().run(shifted, 400)
    assert hit[850:1100].mean() > 0.8
    assert hit[400:790].mean() < 0.05


def test_best_detector_views(free):
    v = free[:1000].copy()
    v[600] += 10 * v[:400].std(axis=0)       # a spike
    v[700:760] = v[699]                      # stuck: every channel frozen for a minute
    v[800] = np.nan                          # a failed read
    missed = np.zeros(len(v))
    missed[850] = 3                          # three periods lost before row 850
    det = detectors.BestDetector()
    out = det.run(v, 400, missed=missed)
    assert det.views["spike"][600] and det.views["device"][800] and det.views["device"][850]
    assert det.views["stuck"][700:760].any() and not det.views["stuck"][:700].any()
    quiet = np.ones(len(v), bool)
    quiet[[600, 601, 800, 801, 850]] = False
    quiet[700:765] = False
    assert out[400:][quiet[400:]].mean() < 0.05


def test_isolation_forest_contamination(free):
    out = detectors.IsolationForestDetector().run(free, 400)
    assert 0.02 < out[:400].mean() < 0.08   # 5 % of the fit rows by construction


def test_pca_t2q_limits_are_fit_percentiles(free):
    out = detectors.PcaT2QDetector().run(free, 400)
    assert out[:400].mean() < 0.03


def test_one_configuration_for_every_file():
    a, b = detectors.make("best"), detectors.make("best")
    assert vars(a.shift) == vars(b.shift) and a.spike_k == b.spike_k
    with pytest.raises(ValueError, match="unknown detector"):
        detectors.make("oracle")


def test_float_forecaster_with_the_seed_rule():
    f = skab.load_files(limit=1)[0]
    det = detectors.ForecastDetector("gru", window=10, epochs=2)
    out = det.run(f.values[:600], 400)
    assert out.shape == (600,) and not out[:10].any()
    assert det.trained["window"] == 10 and det.trained["epochs"] == 2
    # It learned something: its forecast is not the last value (where an untrained one starts).
    x, _ = det.windows(f.values[:600], det.trained["scaler"])
    pred = det.model().predict(x, verbose=0)
    assert np.abs(pred - x[:, -1, :]).mean() > 1e-3


def test_reused_model_trains_like_a_fresh_one():
    """The shared compiled model is reset to its seeded start: file order does not matter."""
    a, b = skab.load_files(limit=2)
    detectors._MODELS.clear()
    detectors._TRAINED.clear()
    first = detectors.ForecastDetector("tcn", epochs=1)
    first.fit(a.values[:400])
    again = detectors.ForecastDetector("tcn", epochs=1)
    again.fit(b.values[:400])
    detectors._MODELS.clear()
    detectors._TRAINED.clear()
    fresh = detectors.ForecastDetector("tcn", epochs=1)
    fresh.fit(b.values[:400])
    for w1, w2 in zip(again.trained["weights"], fresh.trained["weights"], strict=True):
        np.testing.assert_allclose(w1, w2, atol=1e-5)


def test_board_detector_is_the_firmware_and_matches_the_tflm_reference():
    """The board's verdicts come from firmware/engine.py + detector.py under MicroPython; its
    predictions equal the TFLite Micro reference's int8 outputs, and its band alerts equal the
    seed's rule applied to those predictions."""
    from edgewatch.training.export.convert import _io_quant, dequantize, quantize, tflm_run

    f = skab.load_files(limit=1)[0]
    values = f.values  # ~1,150 rows: the anomaly gives the shift rule something to find
    det = detectors.BoardDetector(epochs=1)
    det.fit(values[:400], f.channels)
    sc = det.trained["scaler"]
    x_fit, _ = det.windows(values[:400], sc)
    raw, tfl = detectors.fit_board_blob(det.model(), sc, f.channels, x_fit, with_tflite=True,
                                    fit_rows=values[:400])
    bv = detectors.run_firmware(raw, f.channels, values)
    # the shift rule on the board is the host's ms-ensemble test, row for row
    shift = np.array([any(a[0] == "shift" for a in al) for al in bv.alerts])
    np.testing.assert_array_equal(shift, detectors.MultiscaleEnsemble().run(values, 400))
    x, y = det.windows(values, sc)
    s_in, z_in, s_out, z_out = _io_quant(tfl)
    # The int8 net predicts the change from the newest reading; the board adds that back in float.
    ref = dequantize(tflm_run(tfl, quantize(x, s_in, z_in)), s_out, z_out) + x[:, -1, :]
    w = det.window  # the board predicts once its history holds a window
    got = (bv.pred[w:] - sc.offset) / sc.scale
    assert np.isfinite(got).all() and not np.isfinite(bv.pred[:w]).any()
    # The board normalises and quantises in fixed point (firmware/detk.py, Q16): an input
    # on a rounding half-point may land one int8 step from the host's float quantisation,
    # which moves that row's prediction a little; every other row agrees to float32.
    close = np.abs(got - ref) <= 1e-4
    assert close.mean() > 0.99, close.mean()
    np.testing.assert_allclose(got, ref, atol=1e-3)
    want = detectors.band_rule(x.astype(np.float64), y, ref).any(axis=1)
    fired = np.array([any(a[0] == "band" for a in al) for al in bv.alerts[w:]])
    assert shift.any() and (shift[w:] != fired).any()  # both rules had something to say
    assert (fired == want).mean() > 0.99   # ties at the band edge may differ in the last bit
    assert fired.any()
