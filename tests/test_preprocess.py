import numpy as np
import pytest

from ecgrisk.preprocess import Preprocessing, Scaler, bandpass, notch, resample


def _tone(freq, fs, seconds=10.0, leads=12):
    t = np.arange(int(fs * seconds)) / fs
    return np.tile(np.sin(2 * np.pi * freq * t), (leads, 1)).astype(np.float32)


def _amplitude(x, freq, fs):
    spec = np.abs(np.fft.rfft(x, axis=-1)) * 2 / x.shape[-1]
    f = np.fft.rfftfreq(x.shape[-1], 1 / fs)
    return spec[..., np.argmin(np.abs(f - freq))].mean()


def test_resample_rational_ratios_keep_length_and_tones():
    x = _tone(5.0, 500)
    y = resample(x, 500, 100)
    assert y.shape == (12, 1000) and y.dtype == np.float32
    np.testing.assert_allclose(y[0, 100:900], _tone(5.0, 100)[0, 100:900], atol=0.01)
    assert resample(_tone(5.0, 360, 2.0), 360, 100).shape == (12, 200)  # MIT-BIH rate
    same = resample(x, 500, 500)
    np.testing.assert_array_equal(same, x)
    with pytest.raises(ValueError, match="positive"):
        resample(x, 0, 100)


@pytest.mark.parametrize("fs_in", [200, 300, 500, 1000, 2000])
@pytest.mark.parametrize("n", [1, 7, 999, 5003, 10000])
def test_integer_downsampling_gives_what_resample_poly_gives(fs_in, n):
    from scipy.signal import resample_poly

    x = (np.random.default_rng(n).standard_normal((12, n)) * 2).astype(np.float32)
    y = resample(x, fs_in, 100)
    expected = resample_poly(x, 1, fs_in // 100, axis=-1)
    assert y.shape == expected.shape and y.dtype == np.float32
    np.testing.assert_allclose(y, expected, rtol=0, atol=1e-5)


def test_records_longer_than_one_fft_downsample_as_resample_poly_does():
    from scipy.signal import resample_poly

    from ecgrisk.preprocess import FFT_MAX_SAMPLES

    x = np.random.default_rng(0).standard_normal((1, FFT_MAX_SAMPLES + 5)).astype(np.float32)
    np.testing.assert_array_equal(resample(x, 500, 100), resample_poly(x, 1, 5, axis=-1))


def test_resample_removes_content_above_the_new_nyquist():
    y = resample(_tone(80.0, 500), 500, 100)  # 80 Hz cannot exist at 100 Hz
    assert np.abs(y[:, 50:-50]).max() < 0.05


def test_bandpass_removes_wander_and_keeps_the_band():
    fs = 100
    wander, beat = _tone(0.1, fs), _tone(10.0, fs)
    y = bandpass(wander + beat, fs, 0.5, 40.0)
    assert _amplitude(y, 0.1, fs) < 0.05
    assert _amplitude(y, 10.0, fs) == pytest.approx(1.0, abs=0.05)


def test_notch_removes_mains_and_is_a_no_op_above_nyquist():
    fs = 500
    y = notch(_tone(50.0, fs) + _tone(10.0, fs), fs, 50.0)
    assert _amplitude(y, 50.0, fs) < 0.05
    assert _amplitude(y, 10.0, fs) == pytest.approx(1.0, abs=0.05)
    x = _tone(10.0, 100)
    np.testing.assert_array_equal(notch(x, 100, 60.0), x)


def test_preprocessing_round_trips_through_a_dict():
    p = Preprocessing(fs=250, bandpass=(0.5, 40.0), notch=60.0)
    assert Preprocessing.from_dict(p.to_dict()) == p
    assert Preprocessing.from_dict(Preprocessing().to_dict()) == Preprocessing()
    y = p.apply(_tone(5.0, 500), 500)
    assert y.shape == (12, 2500) and y.flags["C_CONTIGUOUS"]


def test_scaler_streams_to_the_same_mean_and_std():
    rng = np.random.default_rng(0)
    chunks = [rng.normal(0.3, 2.0, size=(12, n)) for n in (100, 250, 1000)]
    s = Scaler.fit(chunks)
    whole = np.concatenate([c.ravel() for c in chunks])
    assert s.mean == pytest.approx(whole.mean(), abs=1e-12)
    assert s.std == pytest.approx(whole.std(), rel=1e-10)
    np.testing.assert_allclose(s(whole).std(), 1.0, rtol=1e-10)
    with pytest.raises(ValueError):
        Scaler.fit([])
