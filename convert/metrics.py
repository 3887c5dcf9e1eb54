"""Fixture checks of the evaluation metrics (no weights): `frechet` and `av_align`.

    python -m convert.verify FIXTURES/frechet
    python -m convert.verify FIXTURES/av_align

Tolerances are the fixture READMEs': frechet `_ab` relative 1e-9, `_cb` relative 1e-7, `_aa`
absolute 1e-8 (float64); av_align peak times and scores exact, flow absolute 1e-5, onset envelope
relative 1e-5.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from convert.verify import Check

FRECHET_TOL = {"ab": (1e-9, "rel_l2"), "cb": (1e-7, "rel_l2"), "aa": (1e-8, "max_abs")}


def verify_frechet(fixture_dir: Path) -> list[Check]:
    """Reproduce the three original code paths (and the default eigh root) on the fixture sets."""
    from maestro_jax.metrics.fvd import (
        ORIGINAL_SQRT,
        feature_stats,
        frechet_distance,
        fvd_from_features,
        trace_sqrt_product,
    )

    io = np.load(Path(fixture_dir) / "io.npz")
    sets = {"a": io["in_feats_a"], "b": io["in_feats_b"], "c": io["in_feats_c_small"]}
    checks = []
    mu_a, s_a = feature_stats(sets["a"], "styleganv")
    mu_b, s_b = feature_stats(sets["b"], "styleganv")
    checks += [
        Check("mu_a", mu_a, io["out_mu_a"], 1e-12),
        Check("mu_b", mu_b, io["out_mu_b"], 1e-12),
        Check("sigma_a_biased", s_a, io["out_sigma_a_biased"], 1e-12),
        Check("sigma_b_biased", s_b, io["out_sigma_b_biased"], 1e-12),
    ]
    # The root itself: compare its trace (the only part FVD uses) and, through scipy, the matrix.
    import scipy.linalg

    root = np.real(scipy.linalg.sqrtm(s_a @ s_b))
    checks.append(Check("sqrtm_ab", root, io["out_sqrtm_ab"], 1e-9))
    checks.append(
        Check(
            "trace_sqrtm_ab[eigh]",
            np.float64(trace_sqrt_product(s_a, s_b, "eigh")),
            np.trace(io["out_sqrtm_ab"]),
            1e-9,
        )
    )
    for conv in ("styleganv", "npcov", "tfgan64"):
        for pair in ("ab", "aa", "cb"):
            gen, real = sets[pair[0]], sets[pair[1]]
            ref = io[f"out_fd_{conv}_{pair}"]
            tol, metric = FRECHET_TOL[pair]
            r = fvd_from_features(gen, real, conv, ORIGINAL_SQRT[conv])  # the original's root
            if (r.n_gen, r.n_real) != (gen.shape[0], real.shape[0]):
                raise RuntimeError(
                    f"fvd_from_features counted {r.n_gen} / {r.n_real} features for the "
                    f"{gen.shape[0]} / {real.shape[0]} rows of fixture pair {pair!r}"
                )
            checks.append(Check(f"fd_{conv}_{pair}", np.float64(r.fvd), ref, tol, metric))
            # The stable eigendecomposition root must agree within the same bounds.
            mu1, s1 = feature_stats(gen, conv)
            mu2, s2 = feature_stats(real, conv)
            fd = frechet_distance(mu1, s1, mu2, s2, "eigh")
            checks.append(Check(f"fd_{conv}_{pair}[eigh]", np.float64(fd), ref, tol, metric))
    return checks


AV_PAIRS = (
    "p1_aligned_10fps",
    "p2_offset_8fps_16k",
    "p3_double_10fps_44k_stereo",
    "p4_static_10fps",
)


def verify_av_align(fixture_dir: Path) -> list[Check]:
    """Per pair: media decoding (frames, audio), the flow trajectory, onset envelope / frames,
    audio peaks, both rules' video peaks and scores; then the folder means."""
    from maestro_jax.metrics import av_align as av

    fixture_dir = Path(fixture_dir)
    io = np.load(fixture_dir / "io.npz")
    checks = []
    scores = {r: [] for r in av.RULES}
    for name in AV_PAIRS:
        frames_bgr = io[f"in_frames__{name}"]
        fps = float(io[f"in_fps__{name}"])
        audio = io[f"in_audio__{name}"]
        # Decoding: our readers against what cv2 / librosa.load returned.
        frames, fps_read = av.read_video(fixture_dir / f"{name}.mp4")
        checks.append(Check(f"{name}/frames", frames[..., ::-1], frames_bgr, metric="exact"))
        checks.append(Check(f"{name}/fps", np.float64(fps_read), np.float64(fps), metric="exact"))
        y = av.load_audio(fixture_dir / f"{name}.wav")
        checks.append(Check(f"{name}/audio_load", y, audio, 1e-6, "max_abs"))
        # The metric from the fixture's own decoded inputs (BGR frames, 22050 Hz audio).
        res = av.av_align_details(frames_bgr, fps, audio, av.SR, channel_order="bgr")
        checks += [
            Check(f"{name}/flow", res.flow, io[f"out_flow__{name}"], 1e-5, "max_abs"),
            Check(f"{name}/onset_env", res.onset_env, io[f"out_onset_env__{name}"], 1e-5),
            Check(
                f"{name}/onset_frames",
                res.onset_frames,
                io[f"out_onset_frames__{name}"],
                metric="exact",
            ),
            Check(
                f"{name}/audio_peaks", res.audio_peaks, io[f"out_audio_peaks__{name}"], 0, "exact"
            ),
        ]
        for rule in av.RULES:
            ref_peaks = io[f"out_video_peaks_{rule}__{name}"]
            checks.append(
                Check(f"{name}/video_peaks_{rule}", res.video_peaks[rule], ref_peaks, 0, "exact")
            )
            ref = io[f"out_score_{rule}__{name}"]
            checks.append(
                Check(f"{name}/score_{rule}", np.float64(res.scores[rule]), ref, 0, "exact")
            )
            scores[rule].append(res.scores[rule])
        # End to end from the files (RGB frames from imageio-ffmpeg, wav through soundfile).
        res_f = av.av_align_files(fixture_dir / f"{name}.mp4", fixture_dir / f"{name}.wav", None)
        for rule in av.RULES:
            checks.append(
                Check(
                    f"{name}/score_{rule}[files]",
                    np.float64(res_f.scores[rule]),
                    io[f"out_score_{rule}__{name}"],
                    0,
                    "exact",
                )
            )
    for rule in av.RULES:
        mean, n, skipped = av.mean_score(scores[rule])
        if (n, skipped) != (len(AV_PAIRS), 0):
            raise RuntimeError(
                f"mean_score({rule}) used {n} of the {len(AV_PAIRS)} fixture pairs "
                f"({skipped} skipped)"
            )
        checks.append(
            Check(f"score_mean_{rule}", np.float64(mean), io[f"out_score_mean_{rule}"], 0, "exact")
        )
    return checks
