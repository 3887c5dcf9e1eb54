"""Window fusion of temporal attention (FreeNoise, Qiu et al., ICLR 2024), written from the paper.

A video longer than the frames a temporal-attention layer was trained on attends over
overlapping windows of `window` frames, `stride` frames apart (the last window is moved back so
that it ends on the last frame); each window's outputs are weighted by a triangle that favours
the window's centre, and a frame's output is the weighted mean over the windows that hold it.
With one window (at most `window` frames) this is plain attention over all frames.

`at_once` windows are computed together (a `lax.scan` over groups of windows): the attention
memory grows with `at_once`, not with the number of windows; the layers around it still see
every frame. `fused_window_map` applies the same windows and weights to a whole function of a
window (the UNet, in `window_fusion='unet'`), so nothing in it sees more than `at_once`
windows. `rescheduled_normal` is FreeNoise's noise rescheduling over the same windows.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def window_starts(num_frames: int, window: int, stride: int) -> tuple[int, ...]:
    """First frame of each window: 0, stride, 2 stride, ... and num_frames - window last."""
    if window < 1 or stride < 1:
        raise ValueError(f"window and stride must be >= 1, got {window}, {stride}")
    if stride > window:
        raise ValueError(f"stride {stride} > window {window} leaves frames in no window")
    if num_frames <= window:
        return (0,)
    starts = list(range(0, num_frames - window + 1, stride))
    if starts[-1] != num_frames - window:
        starts.append(num_frames - window)
    return tuple(starts)


def window_weights(window: int) -> np.ndarray:
    """[window] float32 weights that favour the centre: min(i + 1, window - i)."""
    i = np.arange(window)
    return np.minimum(i + 1, window - i).astype(np.float32)


def _window_groups(t: int, window: int, stride: int, at_once: int):
    """(starts [n_groups, G] int32, weights [n_groups, G, W] float32, per-frame weight total [T])
    of T frames in groups of `at_once` windows (0 = all); padding windows repeat the last start
    and weigh 0."""
    starts = np.array(window_starts(t, window, stride), np.int32)
    n_win = len(starts)
    group = n_win if at_once <= 0 else min(int(at_once), n_win)
    n_groups = -(-n_win // group)
    pad = n_groups * group - n_win
    w = np.tile(window_weights(window), (n_win, 1))
    total = np.zeros(t, np.float32)
    for s, ws in zip(starts, w):
        total[s : s + window] += ws
    starts = np.concatenate([starts, np.full(pad, starts[-1], np.int32)])
    w = np.concatenate([w, np.zeros((pad, window), np.float32)])
    return starts.reshape(n_groups, group), w.reshape(n_groups, group, window), total


def fused_window_attention(q, k, v, attend, *, window: int, stride: int, at_once: int = 0):
    """Attention over frames in overlapping windows, fused per frame.

    q, k, v: [N, T, H, D] (T frames); `attend(q, k, v)` is the plain attention of one batch of
    windows ([N', W, H, D] each). Returns [N, T, H, D] in q's dtype. `at_once`: windows per
    group (0 = all at once)."""
    n, t = q.shape[:2]
    if t <= window:
        return attend(q, k, v)
    starts, w, total = _window_groups(t, window, stride, at_once)
    group = starts.shape[1]
    idx = jnp.asarray(starts[..., None] + np.arange(window, dtype=np.int32))  # [n_groups, G, W]

    def one_group(acc, xs):
        ids, ws = xs  # [G, W]
        flat = ids.reshape(-1)

        def gather(a):  # [N, T, H, D] -> [G * N, W, H, D]
            g = jnp.take(a, flat, axis=1).reshape(n, group, window, *a.shape[2:])
            return jnp.swapaxes(g, 0, 1).reshape(group * n, window, *a.shape[2:])

        o = attend(gather(q), gather(k), gather(v)).astype(jnp.float32)
        o = jnp.swapaxes(o.reshape(group, n, window, *o.shape[2:]), 0, 1)  # [N, G, W, H, D]
        o = o * ws[None, :, :, None, None]
        return acc.at[:, flat].add(o.reshape(n, group * window, *o.shape[3:])), None

    acc = jnp.zeros(q.shape, jnp.float32)
    acc, _ = jax.lax.scan(one_group, acc, (idx, jnp.asarray(w)))
    return (acc / jnp.asarray(total)[None, :, None, None]).astype(q.dtype)


def fused_window_map(one_window, out_shape, *, window: int, stride: int, at_once: int = 1):
    """Any frame-windowed function fused per frame (the whole-UNet form of the fusion above).

    `one_window(start)` (start a traced int32 scalar) returns the output for frames
    [start, start + window) as [N, window, ...]; `out_shape` is the fused output's shape
    [N, T, ...]. Windows and weights are those of `fused_window_attention`; `at_once` windows run
    together (vmapped; 0 = all), the groups one after another in a `lax.scan`, so the working
    memory is that of `at_once` windows whatever T is. Returns float32 [N, T, ...]."""
    n, t = out_shape[:2]
    starts, w, total = _window_groups(t, window, stride, at_once)
    group = starts.shape[1]
    tail = (None,) * (len(out_shape) - 2)

    def one_group(acc, xs):
        st, ws = xs  # [G], [G, W]
        if group == 1:
            o = one_window(st[0])[None]
        else:
            o = jax.vmap(one_window)(st)  # [G, N, W, ...]
        o = o.astype(jnp.float32) * ws[:, None, :, *tail]
        idx = (st[:, None] + jnp.arange(window, dtype=st.dtype)).reshape(-1)  # [G * W]
        o = jnp.swapaxes(o, 0, 1).reshape(n, group * window, *out_shape[2:])
        return acc.at[:, idx].add(o), None

    acc = jnp.zeros(out_shape, jnp.float32)
    acc, _ = jax.lax.scan(one_group, acc, (jnp.asarray(starts), jnp.asarray(w)))
    return acc / jnp.asarray(total)[None, :, *tail]


def rescheduled_normal(key: jax.Array, shape: tuple[int, ...], window: int, stride: int):
    """FreeNoise's noise rescheduling of one standard-normal draw of shape [B, F, ...] (`key`
    may be traced: the same function draws x_T and every DDIM step's noise).

    The first `window` frames equal `jax.random.normal(key, [B, window, ...])`, i.e. the draw
    of a `window`-frame job; each later chunk of `stride` frames [i, i + stride) takes the noise
    of frames [i - window, i - window + stride) in an order shuffled by (key, i)."""
    frames = shape[1]
    first = jax.random.normal(key, (shape[0], min(window, frames), *shape[2:]), jnp.float32)
    if frames <= window:
        return first
    src = jnp.arange(window)  # frame -> the first-window frame its noise comes from
    for i in range(window, frames, stride):
        n = min(stride, frames - i)
        perm = jax.random.permutation(jax.random.fold_in(key, i), n)
        src = jnp.concatenate([src, src[i - window + perm]])
    return first[:, src]
