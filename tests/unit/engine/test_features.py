"""Our numpy fbank must match Kaldi's (what CAM++ was trained on)."""
import numpy as np
import pytest

from audio_factory import demo_recording, noise
from diarizer import features

knf = pytest.importorskip("kaldi_native_fbank")


def kaldi_fbank(samples: np.ndarray) -> np.ndarray:
    opts = knf.FbankOptions()
    opts.frame_opts.dither = 0
    opts.frame_opts.samp_freq = 16000
    opts.frame_opts.snip_edges = True
    opts.mel_opts.num_bins = 80
    online = knf.OnlineFbank(opts)
    online.accept_waveform(16000, samples.tolist())
    online.input_finished()
    return np.stack([online.get_frame(i) for i in range(online.num_frames_ready)])


@pytest.mark.parametrize("name", ["speech", "noise"])
def test_fbank_matches_kaldi_native_fbank(name):
    samples = demo_recording()[0][: 16000 * 8] if name == "speech" else noise(3.0, amplitude=0.05)
    ours, ref = features.fbank(samples), kaldi_fbank(samples)
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() < 1e-3


def test_fbank_is_the_same_in_chunks_and_at_once():
    samples = demo_recording()[0][: 16000 * 5]
    chunked, whole = features.fbank(samples, chunk_frames=37), features.fbank(samples)
    assert chunked.shape == whole.shape
    # Same frames, same arithmetic; only the BLAS blocking of the mel product differs with the
    # matrix size, which may move the last float32 bit (a chunking bug would move values by far more).
    np.testing.assert_allclose(chunked, whole, rtol=0, atol=1e-4)


@pytest.mark.parametrize("n, frames", [(0, 0), (399, 0), (400, 1), (559, 1), (560, 2), (16000, 98)])
def test_frame_count_follows_snip_edges(n, frames):
    assert features.num_frames(n) == frames
    assert len(features.fbank(np.zeros(n, np.float32))) == frames
