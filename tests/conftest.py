"""Test setup: 8 simulated CPU devices (set before JAX initialises) and the shared fixtures."""

import os
from pathlib import Path

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MAESTRO_SHARED", REPO.parent / "shared"))
FIXTURES = SHARED / "fixtures"
AUDIO = SHARED / "audio"


# The files that take longest (CI's --durations, 2026-12-07), longest first. `make test` runs
# `-n 2 --dist loadfile --no-loadscope-reorder`: the workers take files in this order, so the
# long ones start first and the short ones fill in at the end (no worker left alone on one long
# file at the end of the run).
LONGEST_FIRST = (
    "test_generate.py", "test_multihost.py", "test_toy_training.py", "test_toy_placement.py",
    "test_ablation.py", "test_long.py", "test_train.py", "test_ablation_multihost.py",
    "test_toy_evaluate.py", "test_app_browser.py", "test_evaluate.py",
    "test_separator_training.py", "test_lower.py", "test_sampling.py", "test_benchmarks.py",
    "test_diffusion.py", "test_unet.py",
)  # fmt: skip


def pytest_collection_modifyitems(session, config, items):
    """Files in LONGEST_FIRST order, then the rest as collected (a stable sort: the tests of a
    file keep their order)."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(scope="session", autouse=True)
def _persistent_compilation_cache(tmp_path_factory):
    """One persistent XLA compilation cache per test session: a run that builds the same jitted
    function again (a trainer resumed in-process, a second config of the same shapes) loads the
    executable instead of compiling it; the trainers keep no module-level caches of their own."""
    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("jax_cache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    yield


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not FIXTURES.is_dir():
        raise FileNotFoundError(
            f"golden fixtures not found at {FIXTURES}; set MAESTRO_SHARED to the shared/ folder"
        )
    return FIXTURES


@pytest.fixture(scope="session")
def audio_dir() -> Path:
    if not AUDIO.is_dir():
        raise FileNotFoundError(f"shared audio not found at {AUDIO}; set MAESTRO_SHARED")
    return AUDIO


@pytest.fixture(scope="session")
def cpu_mesh():
    """A ('data', 'fsdp') mesh of the 8 simulated CPU devices (4 x 2)."""
    from maestro_jax.sharding import make_mesh

    assert jax.device_count() == 8, jax.devices()
    return make_mesh((4, 2), ("data", "fsdp"))


def load_config_file(relpath: str):
    """A checkout's `--config` file (e.g. 'configs/sweeps/nd.py'), loaded by path as
    `config_flags` loads it (configs/ is not a package)."""
    import importlib.util

    path = REPO / relpath
    spec = importlib.util.spec_from_file_location(f"_cfg_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_command(module_name: str):
    """Import command module `module_name` (its flags at module level) in this test process, with
    the flags of every other command removed (`maestro_jax.cli.load_command`). Run its main with
    `maestro_jax.cli.call(module.main, argv)`, which makes sure of the same again."""
    from maestro_jax import cli

    return cli.load_command(module_name)
