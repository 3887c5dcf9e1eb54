"""Fréchet Video Distance (Maestro paper section 4.5: FVD with an I3D network, 16 frames).

FVD = |mu_g - mu_r|^2 + tr(S_g + S_r - 2 (S_g S_r)^(1/2)) between Gaussians fitted to I3D features
(`maestro_jax.models.i3d`: 400-d Kinetics logits of 16-frame clips at 224 x 224 in [-1, 1]) of the
generated and the real videos. Everything here runs in NumPy **float64**: a float32 mean already
moves the distance by ~2e-8 relative (fixture `frechet` README).

Three original code paths give three numbers from the same features; choose one with `convention`
and always report it together with the numbers of videos (`FVDResult`):

| convention  | covariance                     | original's matrix square root             | used by |
|-------------|--------------------------------|-------------------------------------------|---------|
| `styleganv` | biased, sum x x^T / N - mu mu^T | `scipy.linalg.sqrtm(S_g @ S_r)`, real part | StyleGAN-V `compute_fvd`, cd-fvd (default) |
| `npcov`     | `np.cov`, / (N - 1)            | `scipy.linalg.sqrtm(S_g @ S_r)`, real part | common_metrics_on_video_quality (styleganv) |
| `tfgan64`   | / (N - 1)                      | tr sqrt(S_g^1/2 S_r S_g^1/2), SVD roots    | TF-GAN, VideoGPT, TATS (run in float64) |

At N = 64 the biased and unbiased distances differ by 1.2 %. With fewer videos than feature
dimensions (Maestro: 100 generated videos vs 400-d logits) the covariances are rank-deficient and
the square root of their product is ill-conditioned. The default root, `sqrt_method='eigh'`,
computes tr (S_g S_r)^(1/2) as sum sqrt(eig(A S_r A)) with A = S_g^(1/2), both from symmetric
eigendecompositions (negative eigenvalues of these PSD matrices are rounding, clipped to 0): it
is never complex or non-finite, and it matches every fixture value within 3e-9 relative. The
originals' roots (`ORIGINAL_SQRT`: 'sqrtm' for styleganv / npcov, 'svd' for tfgan64) stay
available for last-bit reproduction; 'sqrtm' falls back to 'eigh' when scipy's root is
non-finite or clearly complex, but it can also return a wrong real root silently for large
singular products (seen in tests: -3e15 for 3 videos of 1e12-sized features), hence the default.

Reference statistics (real videos) are cached per reference set: `cached_features` stores the
features in an npz keyed by a hash of the file list (paths and sizes) and the settings, written
atomically.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

CONVENTIONS = ("styleganv", "npcov", "tfgan64")
SQRT_METHODS = ("sqrtm", "eigh", "svd")
# The square-root method each original code path uses (pass it as sqrt_method to reproduce the
# original to the last bits; the default 'eigh' agrees within 3e-9 relative on the fixture).
ORIGINAL_SQRT = {"styleganv": "sqrtm", "npcov": "sqrtm", "tfgan64": "svd"}


@dataclasses.dataclass(frozen=True)
class FVDResult:
    """A distance with what it was computed from: the numbers of videos and the conventions."""

    fvd: float
    n_gen: int
    n_real: int
    convention: str
    sqrt_method: str

    def __str__(self) -> str:
        return (
            f"FVD {self.fvd:.4f} (generated {self.n_gen}, real {self.n_real}, "
            f"{self.convention} covariance, {self.sqrt_method} root)"
        )


def _check_feats(feats: np.ndarray, name: str) -> np.ndarray:
    feats = np.asarray(feats)
    if feats.ndim != 2:
        raise ValueError(f"{name} features must be [N, D], got shape {feats.shape}")
    if feats.shape[0] < 2:
        raise ValueError(f"{name}: a covariance needs at least 2 videos, got {feats.shape[0]}")
    if not np.all(np.isfinite(feats)):
        raise ValueError(f"{name} features contain NaN or inf")
    return feats


def feature_stats(
    feats: np.ndarray, convention: str = "styleganv"
) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and covariance [D, D] (float64) of features [N, D] under `convention`.

    styleganv: StyleGAN-V `FeatureStats` (features cast to float32, raw moments summed in float64,
    covariance = sum x x^T / N - mu mu^T). npcov / tfgan64: centred, divided by N - 1.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    feats = _check_feats(feats, "input")
    n = feats.shape[0]
    if convention == "styleganv":
        x = feats.astype(np.float32).astype(np.float64)
        mu = x.sum(axis=0) / n
        sigma = x.T @ x / n - np.outer(mu, mu)
        return mu, sigma
    x = feats.astype(np.float64)
    mu = x.mean(axis=0)
    xc = x - mu
    return mu, xc.T @ xc / (n - 1)


def _sym_sqrt_eigh(m: np.ndarray) -> np.ndarray:
    """Square root of a symmetric PSD matrix (eigenvalues clipped at 0)."""
    m = (m + m.T) / 2
    w, v = np.linalg.eigh(m)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def _sym_sqrt_svd(m: np.ndarray, eps: float = 1e-10) -> np.ndarray:
    """TF-GAN `symmetric_matrix_square_root`: U diag(s') V^T with s' = sqrt(s), but singular
    values below `eps` kept unsquared (as the original does)."""
    u, s, vh = np.linalg.svd(m)
    si = np.where(s < eps, s, np.sqrt(s))
    return (u * si) @ vh


def trace_sqrt_product(s1: np.ndarray, s2: np.ndarray, method: str = "eigh") -> float:
    """tr (s1 s2)^(1/2) for covariance matrices s1, s2 [D, D] (float64).

    'sqrtm': scipy.linalg.sqrtm of the product, real part (StyleGAN-V / common_metrics), with a
    fallback to 'eigh' when the result is non-finite or clearly complex.
    'eigh': sum sqrt(eig(A s2 A)), A = s1^(1/2), both from symmetric eigendecompositions.
    'svd': TF-GAN's tr sqrt(A s2 A) with SVD-based symmetric roots.
    """
    if method not in SQRT_METHODS:
        raise ValueError(f"sqrt_method must be one of {SQRT_METHODS}, got {method!r}")
    s1 = np.asarray(s1, np.float64)
    s2 = np.asarray(s2, np.float64)
    if method == "sqrtm":
        import scipy.linalg

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "matrix is singular" in the rank-deficient regime
            root = scipy.linalg.sqrtm(s1 @ s2)
        tr = np.trace(root)
        scale = max(float(np.abs(np.trace(s1 @ s2))) ** 0.5, 1e-30)
        if np.all(np.isfinite(root)) and abs(np.imag(tr)) <= 1e-6 * scale:
            return float(np.real(tr))
        warnings.warn(
            "scipy.linalg.sqrtm gave a non-finite or complex root; using the eigendecomposition",
            RuntimeWarning,
            stacklevel=2,
        )
        method = "eigh"
    if method == "eigh":
        a = _sym_sqrt_eigh(s1)
        m = a @ s2 @ a
        w = np.linalg.eigvalsh((m + m.T) / 2)
        return float(np.sum(np.sqrt(np.clip(w, 0, None))))
    a = _sym_sqrt_svd(s1)
    return float(np.trace(_sym_sqrt_svd(a @ s2 @ a)))


def frechet_distance(
    mu1: np.ndarray,
    sigma1: np.ndarray,
    mu2: np.ndarray,
    sigma2: np.ndarray,
    sqrt_method: str = "eigh",
) -> float:
    """|mu1 - mu2|^2 + tr(sigma1 + sigma2) - 2 tr (sigma1 sigma2)^(1/2), float64.

    Set 1 is the generated set, 2 the real one (StyleGAN-V takes sqrtm(S_gen @ S_real); the trace
    of the root is the same for either order).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    d = mu1.shape[0]
    if mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(
            f"shape mismatch: mu1 {mu1.shape}, sigma1 {sigma1.shape}, mu2 {mu2.shape}, "
            f"sigma2 {sigma2.shape}"
        )
    m = float(np.square(mu1 - mu2).sum())
    tr = float(np.trace(sigma1) + np.trace(sigma2))
    return m + tr - 2.0 * trace_sqrt_product(sigma1, sigma2, sqrt_method)


def fvd_from_features(
    gen_feats: np.ndarray,
    real_feats: np.ndarray,
    convention: str = "styleganv",
    sqrt_method: str = "eigh",
) -> FVDResult:
    """FVD between generated [N_g, D] and real [N_r, D] I3D features.

    `sqrt_method` defaults to the stable 'eigh' root; `ORIGINAL_SQRT[convention]` names the one
    the convention's original code used ('sqrtm' can return garbage without any warning when the
    product is singular and large, e.g. N < D with unnormalised features).
    """
    gen_feats = _check_feats(gen_feats, "generated")
    real_feats = _check_feats(real_feats, "real")
    if gen_feats.shape[1] != real_feats.shape[1]:
        raise ValueError(
            f"feature sizes differ: generated {gen_feats.shape[1]}, real {real_feats.shape[1]}"
        )
    method = sqrt_method
    mu_g, s_g = feature_stats(gen_feats, convention)
    mu_r, s_r = feature_stats(real_feats, convention)
    fd = frechet_distance(mu_g, s_g, mu_r, s_r, method)
    return FVDResult(fd, gen_feats.shape[0], real_feats.shape[0], convention, method)


# ----------------------------------------------------------------------------- caching
def reference_key(files: Sequence[str | os.PathLike], settings: dict) -> str:
    """sha256 over the sorted reference file list (path and size of each file) and `settings`
    (e.g. frames, resolution, detector, stride): a cache key that changes when any of them does."""
    entries = []
    for f in sorted(str(Path(p).resolve()) for p in files):
        size = os.path.getsize(f) if os.path.exists(f) else -1
        entries.append([f, size])
    blob = json.dumps({"files": entries, "settings": settings}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _atomic_savez(path: Path, **arrays: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def cached_features(
    files: Sequence[str | os.PathLike],
    compute: Callable[[Sequence[str]], np.ndarray],
    cache_dir: str | os.PathLike,
    settings: dict,
) -> np.ndarray:
    """Features [N, D] of a reference set, computed once by `compute(files)` and then read from
    `cache_dir/fvd_ref_<hash>.npz` (hash of the file list and `settings`; atomic write, so an
    interrupted run never leaves a half-written cache). The features are cached rather than only
    (mu, sigma) so that every convention can be derived from one cache."""
    files = [str(f) for f in files]
    if not files:
        raise ValueError("the reference set is empty")
    key = reference_key(files, settings)
    path = Path(cache_dir) / f"fvd_ref_{key[:32]}.npz"
    if path.exists():
        with np.load(path) as z:
            if str(z["key"]) == key:
                return np.asarray(z["feats"])
    feats = np.asarray(compute(files))
    if feats.ndim != 2 or feats.shape[0] != len(files):
        raise ValueError(
            f"compute() must return [N={len(files)}, D] features, got shape {feats.shape}"
        )
    _atomic_savez(path, feats=feats, key=np.asarray(key), n=np.asarray(len(files)))
    return feats


def reference_stats(
    files: Sequence[str | os.PathLike],
    compute: Callable[[Sequence[str]], np.ndarray],
    cache_dir: str | os.PathLike,
    settings: dict,
    convention: str = "styleganv",
) -> tuple[np.ndarray, np.ndarray, int]:
    """(mu, sigma, N) of a reference set through the feature cache."""
    feats = cached_features(files, compute, cache_dir, settings)
    mu, sigma = feature_stats(feats, convention)
    return mu, sigma, feats.shape[0]


# ----------------------------------------------------------------------------- I3D features
class I3DFeatures:
    """Batched I3D feature extraction: uint8 clips [B, T, H, W, 3] -> [B, 400] float64 logits.

    params: converted I3D params (`convert.i3d`); the forward is jitted once per batch shape.
    Partial last batches are padded to `batch_size` so only one shape is compiled. `num_frames`
    and `size` are the protocol's 16 and 224; change them only for tests.
    """

    def __init__(
        self, params, config=None, batch_size: int = 8, num_frames: int = 16, size: int = 224
    ):
        import jax

        from maestro_jax.models.i3d import I3DConfig, InceptionI3d, preprocess_videos

        self.config = config or I3DConfig()
        self.params = params
        self.batch_size = batch_size
        self.num_frames = num_frames
        self.size = size
        model = InceptionI3d(self.config)
        self._fn = jax.jit(
            lambda p, v: model.apply({"params": p}, preprocess_videos(v, num_frames, size))
        )

    def settings(self) -> dict:
        """What the features depend on (for `reference_key`)."""
        return {
            "detector": "i3d",
            "num_frames": self.num_frames,
            "size": self.size,
            **self.config.to_dict(),
        }

    def __call__(self, videos: np.ndarray | Iterable[np.ndarray]) -> np.ndarray:
        videos = np.asarray(videos) if not isinstance(videos, np.ndarray) else videos
        if videos.ndim != 5:
            raise ValueError(f"videos must be [B, T, H, W, 3] uint8, got shape {videos.shape}")
        out = []
        bs = self.batch_size
        for i in range(0, len(videos), bs):
            chunk = videos[i : i + bs]
            n = len(chunk)
            if n < bs:
                pad = np.repeat(chunk[-1:], bs - n, axis=0)
                chunk = np.concatenate([chunk, pad])
            out.append(np.asarray(self._fn(self.params, chunk), np.float64)[:n])
        return np.concatenate(out)
