"""Frames <-> files: mp4 writing with the audio muxed in, reading, and contact sheets (PNG).

All writers are atomic: they write a temporary file in the destination folder and rename it
into place, so an interrupted run never leaves a half-written output under the final name.
"""

from __future__ import annotations

import contextlib
import os
import struct
import tempfile
import warnings
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from maestro_jax.fsmodes import chmod_default

# Distinct box colours for up to 8 sources (RGB).
BOX_COLORS = np.array(
    [
        [255, 64, 64],
        [64, 160, 255],
        [64, 220, 64],
        [255, 200, 0],
        [220, 64, 255],
        [0, 220, 220],
        [255, 128, 0],
        [255, 255, 255],
    ],
    np.uint8,
)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success rename it to `path`, else delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.stem}.",
        suffix=suffix if suffix is not None else path.suffix,
        dir=path.parent,
    )
    os.close(fd)
    tmp = Path(tmp)
    chmod_default(tmp)  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """Float frames in [-1, 1] (the VAE's range) or uint8 -> uint8 [..., H, W, 3]."""
    frames = np.asarray(frames)
    if frames.dtype == np.uint8:
        return frames
    return np.clip(np.round((frames.astype(np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def write_video(
    path: str | os.PathLike,
    frames: np.ndarray,
    fps: float,
    audio: np.ndarray | None = None,
    sr: int | None = None,
) -> Path:
    """Write frames [T, H, W, 3] (uint8 or [-1, 1] floats) as an h264 mp4, optionally with audio.

    The audio ([N] or [C, N] float in [-1, 1]) is trimmed or zero-padded to the video's duration
    T / fps and encoded as AAC. H and W must be even (yuv420p); odd sizes are padded by one pixel.
    """
    import imageio_ffmpeg

    from maestro_jax.audio import write_wav

    frames = to_uint8(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be [T, H, W, 3], got shape {frames.shape}")
    t, h, w, _ = frames.shape
    if h % 2 or w % 2:
        frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        t, h, w, _ = frames.shape
    path = Path(path)
    with contextlib.ExitStack() as stack:
        audio_path = None
        if audio is not None:
            if sr is None:
                raise ValueError("write_video: audio given without its sample rate")
            audio = np.asarray(audio, np.float32)
            if audio.ndim == 1:
                audio = audio[None]
            n = int(round(t / fps * sr))
            audio = audio[:, :n]
            if audio.shape[1] < n:
                audio = np.pad(audio, ((0, 0), (0, n - audio.shape[1])))
            wav = stack.enter_context(tempfile.TemporaryDirectory())
            audio_path = str(Path(wav) / "audio.wav")
            write_wav(audio_path, audio, sr)
        tmp = stack.enter_context(atomic_path(path, suffix=".mp4"))
        writer = imageio_ffmpeg.write_frames(
            str(tmp),
            (w, h),
            fps=fps,
            codec="libx264",
            macro_block_size=1,
            audio_path=audio_path,
            audio_codec="aac" if audio_path else None,
            output_params=["-movflags", "+faststart"],
            ffmpeg_log_level="error",
        )
        with warnings.catch_warnings():
            # ffmpeg runs as a child process; Python warns about fork() once JAX has threads,
            # but the child only exec()s ffmpeg.
            warnings.filterwarnings("ignore", "os.fork", RuntimeWarning)
            writer.send(None)
        for f in frames:
            writer.send(np.ascontiguousarray(f))
        writer.close()
    return path


def read_video(path: str | os.PathLike) -> tuple[np.ndarray, float]:
    """Read an mp4 (or any file ffmpeg reads) -> (frames [T, H, W, 3] uint8, fps)."""
    import imageio_ffmpeg

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video not found: {path}")
    gen = imageio_ffmpeg.read_frames(str(path))
    meta = gen.__next__()
    w, h = meta["size"]
    frames = [np.frombuffer(b, np.uint8).reshape(h, w, 3) for b in gen]
    return np.stack(frames) if frames else np.zeros((0, h, w, 3), np.uint8), float(meta["fps"])


def probe_audio_duration(path: str | os.PathLike) -> float:
    """Duration in seconds of the audio stream of a media file (0.0 when it has none)."""
    from maestro_jax.audio import load_audio

    try:
        audio, sr = load_audio(path)
    except (ValueError, RuntimeError):
        return 0.0
    return audio.shape[-1] / sr


def draw_boxes(
    frame: np.ndarray, boxes: Sequence[Sequence[float]], thickness: int = 1
) -> np.ndarray:
    """Draw frame-relative (left, top, right, bottom) boxes on a uint8 [H, W, 3] frame."""
    out = np.array(frame, copy=True)
    h, w = out.shape[:2]
    for i, (l, t, r, b) in enumerate(boxes):
        c = BOX_COLORS[i % len(BOX_COLORS)]
        x0, x1 = int(round(l * (w - 1))), int(round(r * (w - 1)))
        y0, y1 = int(round(t * (h - 1))), int(round(b * (h - 1)))
        for k in range(thickness):
            out[max(y0 + k, 0), x0 : x1 + 1] = c
            out[min(y1 - k, h - 1), x0 : x1 + 1] = c
            out[y0 : y1 + 1, max(x0 + k, 0)] = c
            out[y0 : y1 + 1, min(x1 - k, w - 1)] = c
    return out


def contact_sheet(
    frames: np.ndarray,
    boxes_per_frame: Sequence[Sequence[Sequence[float]]] | None = None,
    cols: int = 8,
    pad: int = 2,
) -> np.ndarray:
    """Tile frames [T, H, W, 3] into one image, drawing each frame's boxes when given."""
    frames = to_uint8(frames)
    t, h, w, _ = frames.shape
    cols = min(cols, t)
    rows = -(-t // cols)
    sheet = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 32, np.uint8)
    thick = max(1, min(h, w) // 64)
    for i, f in enumerate(frames):
        if boxes_per_frame is not None:
            f = draw_boxes(f, boxes_per_frame[i], thick)
        r, c = divmod(i, cols)
        sheet[
            pad + r * (h + pad) : pad + r * (h + pad) + h,
            pad + c * (w + pad) : pad + c * (w + pad) + w,
        ] = f
    return sheet


def write_png(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write a uint8 [H, W, 3] image as PNG (zlib only, no imaging library needed), atomically."""
    image = to_uint8(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"write_png wants [H, W, 3], got {image.shape}")
    h, w, _ = image.shape
    raw = b"".join(b"\x00" + image[y].tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw, 6))
        + chunk(b"IEND", b"")
    )
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(png)
    return path


def read_png(path: str | os.PathLike) -> np.ndarray:
    """Read a PNG written by `write_png` (8-bit RGB, filter 0 rows) -> uint8 [H, W, 3]."""
    data = Path(path).read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path} is not a PNG file")
    pos, idat, w, h = 8, b"", 0, 0
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        tag = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + n]
        if tag == b"IHDR":
            w, h = struct.unpack(">II", body[:8])
        elif tag == b"IDAT":
            idat += body
        pos += 12 + n
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, 1 + 3 * w)
    if np.any(raw[:, 0] != 0):
        raise ValueError("read_png only reads unfiltered rows (as write_png writes them)")
    return raw[:, 1:].reshape(h, w, 3).copy()
