"""Original checkpoint files (small, random weights): torch `.ckpt` in its layouts and dtypes read
memory-mapped, pickled code refused unless trusted, interrupted conversions leave nothing that
looks finished, folder modes follow the umask, the stored BPE vocabulary, the absl commands."""

from __future__ import annotations

import gzip
import importlib
import json
import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch  # the `test` extra installs the CPU wheel (torch==2.13.0): these tests always run
from absl import app
from safetensors.numpy import load_file, save_file

from convert import cli, common
from convert import videocrafter as vc
from convert.clip_text import convert_state_dict as convert_text
from convert.common import ConversionError, flatten, select_prefix
from convert.unet import convert_unet
from convert.vae import convert_vae
from maestro_jax.checkpoints import load_params, save_params
from maestro_jax.diffusion import Schedule
from maestro_jax.models import clip_text as ct
from maestro_jax.models.tokenizer import BPE_FILENAME, get_tokenizer
from maestro_jax.models.unet import UNetConfig
from maestro_jax.models.vae import VAEConfig

REPO = Path(__file__).resolve().parents[1]
COMMANDS = ("unet", "vae", "clip_text", "imagebind", "cim", "audiosep", "videocrafter")


@pytest.fixture(scope="module")
def vc2(fixtures_dir):
    """A tiny VideoCrafter2-like state dict (float32 numpy) and the configs that fit it."""
    names = ("vc2_unet3d", "vc2_vae", "openclip_text")
    sd = {}
    for n in names:
        sd |= {k: v.astype(np.float32) for k, v in
               load_file(str(fixtures_dir / n / "state_dict.safetensors")).items()}  # fmt: skip
    sd["alphas_cumprod"] = np.asarray(Schedule.vc2().alphas_cumprod, np.float32)
    sd["scale_arr"] = np.ones(1400, np.float32)
    c = {n: json.loads((fixtures_dir / n / "config.json").read_text()) for n in names}
    cfgs = {
        "unet_config": UNetConfig.from_ldm_vc(c["vc2_unet3d"]["params"]),
        "vae_config": VAEConfig.from_ldm(c["vc2_vae"]["params"]["ddconfig"], 4),
        "text_config": ct.from_open_clip_config(c["openclip_text"]["open_clip_model_config"]),
    }
    return sd, cfgs


@pytest.fixture(scope="module")
def bpe(fixtures_dir):
    return fixtures_dir / "clip_tokenizer" / BPE_FILENAME


def _torch_save(sd: dict, path: Path, layout: str, dtype: torch.dtype) -> dict:
    """Save `sd` as torch does in `layout`, every tensor in `dtype` (buffers too, like
    `model.half()`); returns the stored values as float32 numpy."""
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)).to(dtype) for k, v in sd.items()}
    if layout == "state_dict":  # Lightning
        obj = {"state_dict": tensors, "epoch": 3, "global_step": 1000}
    elif layout == "bare":
        obj = tensors
    elif layout == "deepspeed":  # DeepSpeed through Lightning: mp_rank_00_model_states.pt
        obj = {
            "module": {f"_forward_module.{k}": v for k, v in tensors.items()},
            "buffer_names": ["alphas_cumprod"],
            "optimizer": None,
            "ds_version": "0.9.5",
        }
    else:
        raise ValueError(layout)
    torch.save(obj, path)
    return {k: v.float().numpy() for k, v in tensors.items()}


def _params_equal(a, b) -> None:
    fa, fb = flatten(a), flatten(b)
    assert sorted(fa) == sorted(fb)
    for k in fa:
        assert np.asarray(fa[k]).dtype == np.float32, k
        np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)


@pytest.mark.parametrize(
    "layout,dtype",
    [("state_dict", torch.float32), ("bare", torch.float16), ("deepspeed", torch.bfloat16)],
)
def test_ckpt_layouts_and_dtypes(vc2, tmp_path, layout, dtype):
    sd, cfgs = vc2
    src = tmp_path / "model.ckpt"
    stored = _torch_save(sd, src, layout, dtype)
    # memory-mapped, in the stored dtype, keys as VideoCrafter's loader sees them
    loaded = common.load_state_dict(src, dtype=None)
    assert loaded.mapped is not None and loaded.mapped.ranges
    assert sorted(loaded) == sorted(sd)
    want_dtype = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
    assert {v.dtype.name for v in loaded.values()} == {want_dtype[dtype]}
    del loaded

    out = vc.convert_file(src, tmp_path / "vc2", **cfgs)
    assert vc.is_finished(out)
    want = {
        "unet": convert_unet(select_prefix(stored, vc.PARTS[0]), cfgs["unet_config"]),
        "vae": convert_vae(stored, cfgs["vae_config"]),
        "text": convert_text(select_prefix(stored, vc.PARTS[2]), cfgs["text_config"])[0],
    }
    for part, params in want.items():
        _params_equal(load_params(out / part)[0], params)
    if dtype == torch.float32:  # the same folder as from a safetensors export of the file
        save_file(stored, str(tmp_path / "model.safetensors"))
        ref = vc.convert_file(tmp_path / "model.safetensors", tmp_path / "ref", **cfgs)
        for part in want:
            _params_equal(load_params(out / part)[0], load_params(ref / part)[0])


def test_released_pages_read_back_the_same(tmp_path):
    a = np.random.default_rng(0).standard_normal((512, 1024)).astype(np.float32)
    torch.save({"w": torch.from_numpy(a)}, tmp_path / "x.pth")
    sd = common.load_state_dict(tmp_path / "x.pth", dtype=None)
    w = sd["w"]
    np.testing.assert_array_equal(w, a)
    sd.release(w)  # drops the resident pages; reading faults them in from the file again
    np.testing.assert_array_equal(w, a)
    b = a.copy()  # not part of the mapped file: never touched
    sd.release(b)
    np.testing.assert_array_equal(b, a)


# ----------------------------------------------------------------------------- pickled code
class _MakesADir:
    """Unpickling this runs os.mkdir(path): what a malicious checkpoint could do."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_pickled_callable_is_refused_unless_trusted(fixtures_dir, tmp_path, capsys):
    from convert.cim.__main__ import main

    fx = fixtures_dir / "cim_resampler"
    marker = tmp_path / "code_ran"
    tensors = {k: torch.from_numpy(v) for k, v in
               load_file(str(fx / "state_dict.safetensors")).items()}  # fmt: skip
    src = tmp_path / "perceiver.pth"
    torch.save({"state_dict": tensors, "callback": _MakesADir(marker)}, src)

    with pytest.raises(common.UnsafeCheckpointError, match="--trust_pickle"):
        common.load_state_dict(src)
    assert not marker.exists()
    argv = [str(src), str(tmp_path / "cim"), "--torch_config", str(fx / "config.json")]
    assert cli.call(main, argv) == 1
    err = capsys.readouterr().err
    assert "--trust_pickle" in err and "weights_only" in err and "mkdir" in err
    assert not marker.exists() and not (tmp_path / "cim").exists()
    # trusted: loaded with the unrestricted unpickler (which does run the file's code)
    assert cli.call(main, [*argv, "--trust_pickle"]) == 0
    assert marker.is_dir() and (tmp_path / "cim" / "config.json").exists()


# ----------------------------------------------------------------------------- interruption
@pytest.mark.parametrize(
    "exc", [OSError("disk full"), KeyboardInterrupt()], ids=["error", "ctrl-c"]
)
def test_interrupted_conversion_leaves_nothing_finished(vc2, tmp_path, monkeypatch, exc):
    sd, cfgs = vc2
    real, calls = vc.save_params, []

    def fails_on_the_second_part(path, *args, **kwargs):
        calls.append(Path(path).name)
        if len(calls) == 2:
            raise exc
        return real(path, *args, **kwargs)

    out = tmp_path / "vc2"
    monkeypatch.setattr(vc, "save_params", fails_on_the_second_part)
    with pytest.raises(type(exc)):
        vc.convert_videocrafter(sd, out, **cfgs)
    assert calls == ["unet", "vae"]
    assert list(tmp_path.iterdir()) == []  # no OUT, no partial folder, no temporary folder

    monkeypatch.setattr(vc, "save_params", real)
    vc.convert_videocrafter(sd, out, **cfgs)  # a rerun works
    assert vc.is_finished(out) and [p.name for p in tmp_path.iterdir()] == ["vc2"]
    before = (out / "config.json").stat().st_mtime_ns

    calls.clear()  # a failed rerun over a finished folder leaves that folder as it was
    monkeypatch.setattr(vc, "save_params", fails_on_the_second_part)
    with pytest.raises(type(exc)):
        vc.convert_videocrafter(sd, out, **cfgs)
    assert [p.name for p in tmp_path.iterdir()] == ["vc2"]
    assert (out / "config.json").stat().st_mtime_ns == before
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "text", "unet", "vae"]


def test_a_killed_runs_leftovers_are_removed_by_the_next(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    host = socket.gethostname()
    dead = tmp_path / f".ck.tmp-{host}-{proc.pid}-0badc0de"
    alive = tmp_path / f".ck.tmp-{host}-{os.getpid()}-600dc0de"  # a writer still running
    elsewhere = tmp_path / f".ck.tmp-not-{host}-{proc.pid}-0badc0de"  # another machine's
    for d in (dead, alive, elsewhere):
        (d / "params").mkdir(parents=True)
    save_params(tmp_path / "ck", {"w": np.ones(3, np.float32)})
    assert not dead.exists() and alive.exists() and elsewhere.exists()


def test_sigterm_removes_the_partial_folder(tmp_path):
    script = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from convert import cli\n"
        "from maestro_jax.checkpoints import staging_dir\n"
        "def main(argv):\n"
        "    with staging_dir(Path(argv[1]) / 'out', tag='partial') as tmp:\n"
        "        (tmp / 'unet').mkdir()\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "        signal.pause()\n"
        "    return 0\n"
        "cli.run(main)\n"
    )
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=REPO, env=env,
                       capture_output=True, timeout=300)  # fmt: skip
    assert r.returncode == 128 + signal.SIGTERM, r.stderr.decode()[-2000:]
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- BPE, modes
@pytest.fixture(scope="module")
def converted(vc2, bpe, tmp_path_factory):
    """The tiny VC2 converted under umask 022, with the BPE vocabulary."""
    sd, cfgs = vc2
    old = os.umask(0o022)
    try:
        return vc.convert_videocrafter(sd, tmp_path_factory.mktemp("c") / "vc2", bpe=bpe, **cfgs)
    finally:
        os.umask(old)


def test_bpe_is_stored_with_the_text_encoder(converted, bpe):
    _, meta = load_params(converted / "text")
    assert meta["bpe"] == BPE_FILENAME and meta["tokenizer"] == "clip_bpe"
    stored = converted / "text" / meta["bpe"]
    assert stored.read_bytes() == bpe.read_bytes()
    assert json.loads((converted / "config.json").read_text())["bpe"] == f"text/{BPE_FILENAME}"
    assert get_tokenizer(stored)("a dog")[0, :2].tolist() == [49406, 320]


def test_bad_bpe_is_refused_before_any_weight_is_read(tmp_path, monkeypatch, capsys):
    from convert.videocrafter.__main__ import main

    bad = tmp_path / "bpe_simple_vocab_16e6.txt.gz"
    with gzip.open(bad, "wt") as f:
        f.write("#version: 0.2\nnot a merges file\n")
    src = tmp_path / "model.ckpt"
    src.write_bytes(b"")
    monkeypatch.setattr(vc, "load_state_dict", lambda *a, **k: pytest.fail("weights read"))
    with pytest.raises(ConversionError, match="not a readable CLIP BPE vocabulary"):
        vc.convert_file(src, tmp_path / "out", bpe=bad)
    bad.write_bytes(b"plain text, not gzip")
    assert cli.call(main, [str(src), str(tmp_path / "out"), "--bpe", str(bad)]) == 1
    assert "not a readable CLIP BPE vocabulary" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == [bad.name, src.name]


def _modes(root: Path) -> tuple[set[int], set[int]]:
    dirs, files = set(), set()
    for dirpath, _, names in os.walk(root):
        dirs.add(stat.S_IMODE(os.stat(dirpath).st_mode))
        files |= {stat.S_IMODE(os.stat(os.path.join(dirpath, n)).st_mode) for n in names}
    return dirs, files


def test_folder_modes_follow_the_umask(converted, tmp_path):
    assert _modes(converted) == ({0o755}, {0o644})
    old = os.umask(0o027)
    try:
        out = save_params(tmp_path / "p", {"w": np.ones(3, np.float32)}, {"model": "x"})
    finally:
        os.umask(old)
    assert _modes(out) == ({0o750}, {0o640})


# ----------------------------------------------------------------------------- load_params
def test_load_params_casts_floating_leaves_on_restore(tmp_path):
    tree = {"w": np.linspace(-2, 2, 6, dtype=np.float32).reshape(2, 3), "n": np.arange(3)}
    save_params(tmp_path / "p", tree)
    got, _ = load_params(tmp_path / "p", dtype="bfloat16")
    assert got["w"].dtype == jnp.bfloat16 and got["n"].dtype == tree["n"].dtype
    np.testing.assert_array_equal(got["w"], tree["w"].astype(jnp.bfloat16))
    same, _ = load_params(tmp_path / "p")
    assert same["w"].dtype == np.float32


def test_numpy_leaves_are_saved_without_a_copy():
    """save_params's no-deep-copy numpy handler uses orbax-private names; an orbax upgrade that
    moves them falls back to the (copying) default, which this notices."""
    from maestro_jax.checkpoints import _numpy_registry

    assert _numpy_registry() is not None


# ----------------------------------------------------------------------------- commands
def test_every_command_loads_into_one_process():
    """Their absl flags do not clash (shared ones live in convert.cli)."""
    for name in COMMANDS:
        importlib.import_module(f"convert.{name}.__main__")
    from convert.cim.__main__ import main

    with pytest.raises(app.UsageError, match="--format does not apply"):
        cli.call(main, ["a.pth", "out", "--format", "ldm"])
    with pytest.raises(app.UsageError, match="2 positional"):
        cli.call(main, ["a.pth"])
