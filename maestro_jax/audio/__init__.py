"""Audio front end: files (`io`), ImageBind's fbank and clip sampler (`features`), SpecAugment
(`augment`); stems -> audio tokens (`encoder`: ImageBind audio trunk + CIM) and text-queried
separation (`separation`: AudioSep) build on them.

The functions of `io`, `features` and `augment` are re-exported here
(`from maestro_jax import audio; audio.load_audio(...)`); `encoder` and `separation` load
networks and are imported by name.
"""

from maestro_jax.audio.augment import spec_augment
from maestro_jax.audio.features import (
    CLIP_DURATION,
    CLIP_RULES,
    FRAME_LENGTH,
    FRAME_SHIFT,
    HIGH_FREQ,
    IMAGEBIND_SAMPLE_RATE,
    LOG_EPS,
    LOG_FLOOR,
    LOW_FREQ,
    MEL_MEAN,
    MEL_STD,
    NUM_MEL_BINS,
    PADDED_WINDOW,
    PREEMPHASIS,
    TARGET_LENGTH,
    clip_sample_ranges,
    clip_starts,
    extract_clips,
    fbank_to_melspec,
    hann_window_symmetric,
    imagebind_audio_input,
    kaldi_mel_banks,
    num_clips_for,
    num_fbank_frames,
    segment_for_frame,
    waveform_to_fbank,
    waveform_to_fbank_batch,
    waveform_to_melspec,
    waveform_to_melspec_batch,
)
from maestro_jax.audio.io import (
    SOUNDFILE_EXTS,
    AudioLoadError,
    load_audio,
    mix_stems,
    resample,
    write_wav,
)

__all__ = [
    "CLIP_DURATION", "CLIP_RULES", "FRAME_LENGTH", "FRAME_SHIFT", "HIGH_FREQ",
    "IMAGEBIND_SAMPLE_RATE", "LOG_EPS", "LOG_FLOOR", "LOW_FREQ", "MEL_MEAN", "MEL_STD",
    "NUM_MEL_BINS", "PADDED_WINDOW", "PREEMPHASIS", "SOUNDFILE_EXTS", "TARGET_LENGTH",
    "AudioLoadError", "clip_sample_ranges", "clip_starts", "extract_clips", "fbank_to_melspec",
    "hann_window_symmetric", "imagebind_audio_input", "kaldi_mel_banks", "load_audio",
    "mix_stems", "num_clips_for", "num_fbank_frames", "resample", "segment_for_frame",
    "spec_augment", "waveform_to_fbank", "waveform_to_fbank_batch", "waveform_to_melspec",
    "waveform_to_melspec_batch", "write_wav",
]  # fmt: skip
