"""The Maestro sampler's phase switch: a traced N_D (one compile for every N_D value) equals the
two-scan reference of `ddim_sample` with a static switch."""

import jax
import numpy as np
import pytest

from maestro_jax import mosaic
from maestro_jax.audio import encoder as ae
from maestro_jax.audio import load_audio
from maestro_jax.diffusion import ddim_sample
from maestro_jax.generation import models as gen_models
from maestro_jax.generation import sampling


@pytest.fixture(scope="module")
def setup(audio_dir):
    m = gen_models.init_random_models(0)
    spec = sampling.VideoSpec(4, 32, 32)
    stems = [load_audio(audio_dir / "dog.wav"), load_audio(audio_dir / "cat.wav")]
    tokens = ae.encode_stems(m.audio, stems)
    loc, mos = mosaic.preset("LR")
    job = sampling.prepare_job(m, tokens, loc, mos, spec, seed=3)
    return m, job


def _reference(m, job, settings):
    """Two lax.scans split at a static N_D (ddim_sample's phase functions)."""
    fns = tuple(
        sampling._unet_fn(m.spec.unet, m.params["unet"], settings.fps, e)
        for e in (job.locate, job.mosaic)
    )
    return ddim_sample(
        fns, job.x_T, cond={"context": job.c_merge[None]}, uncond={"context": job.null_f[None]},
        steps=settings.steps, eta=settings.eta, guidance=settings.guidance,
        schedule=m.spec.schedule, key=job.key, n_switch=settings.n_d,
    )  # fmt: skip


@pytest.mark.parametrize("n_d", [0, 2, 4])
def test_traced_switch_equals_static_two_scans(setup, n_d):
    m, job = setup
    st = sampling.SamplerSettings(steps=4, n_d=n_d, guidance=7.5)
    ours = np.asarray(sampling.sample_maestro(m, [job], st))[0]
    ref = np.asarray(jax.jit(lambda: _reference(m, job, st))())
    assert np.linalg.norm(ours - ref) / np.linalg.norm(ref) < 1e-5


def test_nd_values_share_one_compile(setup):
    m, job = setup
    outs = []
    sampling.sample_maestro(m, [job], sampling.SamplerSettings(steps=4, n_d=1, guidance=7.5))
    size = sampling._sample_maestro_batch._cache_size()
    for n_d in (0, 3, 4):
        outs.append(
            np.asarray(
                sampling.sample_maestro(
                    m, [job], sampling.SamplerSettings(steps=4, n_d=n_d, guidance=7.5)
                )
            )
        )
    assert sampling._sample_maestro_batch._cache_size() == size
    assert np.abs(outs[0] - outs[1]).max() > 1e-5  # N_D changes the result


def test_sampler_runs_under_its_mesh(setup, monkeypatch):
    """With a mesh, the jitted sampler is called under it (`jax.set_mesh`: kernels that shard
    themselves, like splash attention, read it while tracing), its job axis split over 'data';
    without one, under no mesh. The compiled sampler itself is replaced by a spy."""
    from maestro_jax.sharding import make_mesh

    m, job = setup
    seen = []

    def spy(params, n_d, c_merge, *rest, **static):
        seen.append((dict(jax.sharding.get_abstract_mesh().shape), c_merge.sharding))
        return np.zeros((1, 1, 2), np.float32)

    monkeypatch.setattr(sampling, "_sample_maestro_batch", spy)
    st = sampling.SamplerSettings(steps=4, n_d=2)
    mesh = make_mesh((1, 8), ("data", "fsdp"))
    assert sampling.sample_maestro(m, [job], st, mesh=mesh).shape == (1, 2)
    assert sampling.sample_maestro(m, [job], st).shape == (1, 2)
    (with_mesh, sharding), (without, _) = seen
    assert with_mesh == {"data": 1, "fsdp": 8} and without == {}
    assert sharding.spec[0] == "data" and len(sharding.device_set) == 8
