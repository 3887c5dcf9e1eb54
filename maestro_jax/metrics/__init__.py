"""Evaluation metrics of Maestro (paper section 4.5): FVD (I3D), AV-Align, IA, and placement.

- `fvd`: Fréchet distance in float64 with the StyleGAN-V / np.cov / TF-GAN conventions, I3D
  feature extraction and a cached reference set (`maestro_jax.models.i3d`).
- `av_align`: TempoTokens' AV-Align, rules '2023' and '2025' (librosa onsets, OpenCV Farneback).
- `ia`: ImageBind frame–audio cosine, averaged over frames then videos.
- `placement`: detector-free box placement (crop IA contrast between stems; box colour accuracy).

Submodules import their heavy dependencies (librosa, OpenCV, scipy, JAX) lazily.
"""

from maestro_jax.metrics.av_align import av_align_files, av_align_score
from maestro_jax.metrics.fvd import FVDResult, frechet_distance, fvd_from_features
from maestro_jax.metrics.ia import ia_dataset, ia_video
from maestro_jax.metrics.placement import box_color_accuracy, placement_from_similarity

__all__ = [
    "FVDResult",
    "av_align_files",
    "av_align_score",
    "box_color_accuracy",
    "frechet_distance",
    "fvd_from_features",
    "ia_dataset",
    "ia_video",
    "placement_from_similarity",
]
