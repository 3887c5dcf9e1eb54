"""Video frames for the training records: which frames a 10 s clip keeps (the frame rules),
decoding a time window with ffmpeg, PIL-equivalent antialiased bilinear resizing + centre crop,
and the static-video score (Farneback optical-flow magnitude at 2 fps).
"""

from __future__ import annotations

import math
import os

import numpy as np

NUM_SEGMENTS = 5  # S: 2 s ImageBind clips per 10 s training clip
FRAME_RULES = ("default", "release")


def num_frames_for_rule(rule: str = "default", num_segments: int = NUM_SEGMENTS) -> int:
    """S_f, the frames per record: S for 'default', 2 S for 'release'."""
    if rule not in FRAME_RULES:
        raise ValueError(f"unknown frames rule {rule!r}; use one of {FRAME_RULES}")
    return num_segments if rule == "default" else 2 * num_segments


def frame_indices(
    num_frames: int, rule: str = "default", num_segments: int = NUM_SEGMENTS
) -> list[int]:
    """Indices of the frames a training record keeps out of a clip's F decoded frames.

    'default' (docs/method.md, "Token sets and frames"): the first frame, then every k = ceil(F / (S - 1))
      frames: i * k for i < S. The last one, (S - 1) k, can pass F - 1 (F = 250, S = 5 gives
      k = 63 and 252); it is clamped to the last frame, F - 1.
    'release' (the release's `sound_dataset.py`): stride = F // S; per segment [a, b) =
      [i stride, (i + 1) stride) with h = (a + b) // 2 the frames (a + h) // 2 and (h + b) // 2,
      i.e. the 1/4 and 3/4 points of each 2 s segment: 2 S frames. (The release counts F as the
      folder's files minus two; here F is the number of frames.)
    """
    if int(num_frames) != num_frames or num_frames < 1:
        raise ValueError(f"a clip needs at least one frame, got num_frames={num_frames}")
    if int(num_segments) != num_segments or num_segments < 1:
        raise ValueError(f"num_segments must be a positive integer, got {num_segments}")
    f, s = int(num_frames), int(num_segments)
    if rule == "default":
        step = math.ceil(f / max(s - 1, 1))
        return [min(i * step, f - 1) for i in range(s)]
    if rule == "release":
        stride = f // s
        out = []
        for i in range(s):
            a, b = i * stride, (i + 1) * stride
            h = (a + b) // 2
            out += [(a + h) // 2, (h + b) // 2]
        return [min(x, f - 1) for x in out]
    raise ValueError(f"unknown frames rule {rule!r}; use one of {FRAME_RULES}")


def _bilinear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """PIL's antialiased bilinear resampling along one axis as taps: (indices [out, K] int,
    weights [out, K] float32). Output pixel i is centred at (i + 0.5) * scale in input pixels
    (scale = in / out); the triangle filter is widened by max(scale, 1) when shrinking, and
    the weights are renormalised to sum to one (also at the borders)."""
    scale = in_size / out_size
    fscale = max(scale, 1.0)
    support = fscale  # triangle support 1, widened
    centers = (np.arange(out_size, dtype=np.float64) + 0.5) * scale
    lo = np.maximum(np.floor(centers - support + 0.5).astype(np.int64), 0)
    hi = np.minimum(np.floor(centers + support + 0.5).astype(np.int64), in_size)
    k = int((hi - lo).max())
    idx = lo[:, None] + np.arange(k)[None, :]
    w = np.maximum(0.0, 1.0 - np.abs((idx - centers[:, None] + 0.5) / fscale))
    w = np.where(idx < hi[:, None], w, 0.0)
    w /= w.sum(axis=1, keepdims=True)
    return np.minimum(idx, in_size - 1), w.astype(np.float32)


def _tap_matrix(in_size: int, out_size: int, start: int = 0, count: int | None = None):
    """The [count, in_size] sparse (CSR) resampling matrix of output pixels
    [start, start + count) (duplicate border taps are summed, as wanted)."""
    import scipy.sparse

    idx, wt = _bilinear_taps(in_size, out_size)
    count = out_size - start if count is None else count
    idx, wt = idx[start : start + count], wt[start : start + count]
    n, k = idx.shape
    return scipy.sparse.csr_matrix(
        (wt.ravel(), (np.repeat(np.arange(n), k), idx.ravel())), shape=(n, in_size)
    )


def resize_bilinear(
    frames: np.ndarray,
    height: int,
    width: int,
    crop: tuple[int, int, int, int] | None = None,
) -> np.ndarray:
    """Antialiased bilinear resize of [T, H, W, C] -> float32 [T, height, width, C]
    (PIL / torchvision-on-PIL 'bilinear' up to PIL's intermediate uint8 rounding; the same
    kernel as `jax.image.resize(..., 'bilinear', antialias=True)`, to float32 rounding).
    Separable sparse matrix products per frame (~45 ms for a 512 x 910 frame on one CPU core;
    the dense jax version takes ~75 ms). `crop` = (top, left, h, w) computes only that window
    of the resized picture."""
    x = np.asarray(frames)
    t, h, w, c = x.shape
    top, left, oh, ow = crop if crop is not None else (0, 0, height, width)
    mh = _tap_matrix(h, height, top, oh)
    mw = _tap_matrix(w, width, left, ow)
    out = np.empty((t, oh, ow, c), np.float32)
    for i in range(t):
        y = mh @ x[i].reshape(h, w * c).astype(np.float32)  # [oh, w * c]
        y = np.ascontiguousarray(y.reshape(oh, w, c).transpose(1, 0, 2)).reshape(w, oh * c)
        out[i] = (mw @ y).reshape(ow, oh, c).transpose(1, 0, 2)
    return out


def resize_center_crop(frames: np.ndarray, size: int) -> np.ndarray:
    """uint8 [T, H, W, 3] -> uint8 [T, size, size, 3]: short side to `size`, center crop.

    torchvision `Resize(size)` + `CenterCrop(size)` geometry (long side int(size * long / short),
    crop offsets int(round((L - size) / 2))) with `resize_bilinear` (antialiased bilinear, the
    filter torchvision's Resize(BILINEAR) applies to the release's PIL frames), rounded to uint8.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"resize_center_crop wants uint8 [T, H, W, 3], got {frames.shape}")
    t, h, w, _ = frames.shape
    if h <= w:
        nh, nw = size, int(size * w / h)
    else:
        nh, nw = int(size * h / w), size
    top = int(round((nh - size) / 2.0))
    left = int(round((nw - size) / 2.0))
    if (nh, nw) != (h, w):
        x = resize_bilinear(frames, nh, nw, crop=(top, left, size, size))
        return np.clip(np.round(x), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(frames[:, top : top + size, left : left + size])


def read_video_window(
    path: str | os.PathLike, start: float, duration: float, max_short_side: int | None = None
) -> tuple[np.ndarray, float]:
    """Decode the frames of [start, start + duration) seconds of a video with imageio-ffmpeg.

    Frames whose short side exceeds `max_short_side` are shrunk by ffmpeg's area filter while
    decoding (bounding memory for HD sources). Returns (uint8 [F, H, W, 3], fps).
    """
    import warnings

    import imageio_ffmpeg

    out_params = ["-t", f"{duration:.6f}"]
    if max_short_side:
        m = int(max_short_side)
        out_params += [
            "-vf",
            f"scale='if(lte(iw,ih),min(iw,{m}),-2)':'if(lte(iw,ih),-2,min(ih,{m}))':flags=area",
        ]
    in_params = ["-ss", f"{start:.6f}"] if start > 0 else []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "frame size differs from the source size"
        gen = imageio_ffmpeg.read_frames(
            str(path), input_params=in_params, output_params=out_params
        )
        try:
            meta = next(gen)
            w, h = meta["size"]
            frames = [np.frombuffer(b, np.uint8).reshape(h, w, 3) for b in gen]
        finally:
            gen.close()
    if not frames:
        raise ValueError(f"no video frames in [{start}, {start + duration}) s of {path}")
    return np.stack(frames), float(meta["fps"])


def flow_frame_indices(num_frames: int, fps: float, rate: float = 2.0) -> list[int]:
    """Frames at `rate` fps (t = k / rate): round(k fps / rate) while < F."""
    if fps <= 0:
        return [0]
    out, k = [], 0
    while True:
        i = int(round(k * fps / rate))
        if i >= num_frames:
            return out or [0]
        out.append(i)
        k += 1


def flow_magnitude(frames: np.ndarray) -> float:
    """Mean dense optical-flow magnitude (pixels per step) over consecutive frames.

    frames: uint8 [T, H, W, 3] RGB sampled at the analysis rate (2 fps). OpenCV Farneback with
    its customary parameters (pyr_scale 0.5, 3 levels, window 15, 3 iterations, poly_n 5,
    poly_sigma 1.2) on grey frames; the magnitude is averaged over pixels, then over the T - 1
    frame pairs. Fewer than two frames give 0.0 (treated as static).
    """
    import cv2

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"flow_magnitude wants [T, H, W, 3] frames, got {frames.shape}")
    if frames.shape[0] < 2:
        return 0.0
    gray = [cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY) for f in frames]
    mags = []
    for a, b in zip(gray[:-1], gray[1:]):
        flow = cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)
        mags.append(float(np.mean(np.sqrt(np.sum(np.square(flow), axis=-1)))))
    return float(np.mean(mags))
