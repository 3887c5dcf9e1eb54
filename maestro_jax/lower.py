"""Lower the programs users run for a TPU or a CUDA GPU, ahead of time, on this host.

    python -m maestro_jax.lower --platform tpu               # full size, every program
    python -m maestro_jax.lower --platform tpu,cuda --size tiny --nocompile_cpu

Programs (`maestro_jax.aot`): one UNet forward at batch 1, one CFG DDIM step with the Mosaic
edit (16x40x64 latents, N_A = 2), the whole sampling scan, the VAE decode and the CIM training
step (SD 2.1 at 512, the `vggsound` config) on a mesh of --mesh_devices devices, all from
abstract shapes (no weights in memory). Prints one table: program, platform, attention
implementation per site ('splash' where the TPU kernel is used; 'cudnn*': cuDNN on the card,
staged as xla by a host without cuDNN), the number of splash kernels in the exported program,
XLA's FLOP count against the spec's (12.58 TFLOP per UNet forward at batch 1), and, with
--compile_cpu, XLA's memory analysis of the CPU-compiled program (arguments, temporaries,
peak) as an estimate of device memory.

A foreign platform's export has no cost analysis: the FLOPs are XLA's count for the same program
lowered (or compiled, with --compile_cpu) for this CPU. XLA counts a loop body once, so the
sampler's count is one step's. The mesh: when the CIM step is asked for and JAX is not yet
imported, this command makes --mesh_devices CPU devices itself
(--xla_force_host_platform_device_count).
"""

from __future__ import annotations

import os
import sys

from absl import flags

from maestro_jax import cli

PLATFORMS = ("tpu", "cuda")
PROGRAMS = ("unet_fwd_b1", "cfg_step", "sample", "decode", "cim_train_step")

_PLATFORM = flags.DEFINE_list("platform", ["tpu"], "tpu and/or cuda, comma-separated")
_SIZE = flags.DEFINE_enum("size", "full", ["full", "tiny"], "full-size models or tiny ones")
_PROGRAMS = flags.DEFINE_list("programs", list(PROGRAMS), "programs to lower, comma-separated")
_ATTN = flags.DEFINE_enum(
    "attn_impl", "auto", ["auto", "xla", "splash", "cudnn"], "the UNets' attention"
)
_COMPILE = flags.DEFINE_bool(
    "compile_cpu", True, "also compile for this CPU: XLA's memory analysis and optimised FLOPs"
)
_MESH = flags.DEFINE_integer("mesh_devices", 8, "devices of the CIM training step's mesh")
_JSON = flags.DEFINE_string("json", None, "also write every row to this JSON file")


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        return cli.error(f"unexpected arguments: {argv[1:]}")
    platforms = [p.strip() for p in _PLATFORM.value if p.strip()]
    if not platforms or any(p not in PLATFORMS for p in platforms):
        return cli.error(f"--platform {','.join(_PLATFORM.value)}: choose from {PLATFORMS}")
    names = [p.strip() for p in _PROGRAMS.value if p.strip()]
    if not names or any(n not in PROGRAMS for n in names):
        return cli.error(f"--programs {','.join(_PROGRAMS.value)}: choose from {PROGRAMS}")
    if _MESH.value < 1:
        return cli.error(f"--mesh_devices {_MESH.value} must be >= 1")
    if "cim_train_step" in names and "jax" not in sys.modules:
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "")
            + f" --xla_force_host_platform_device_count={_MESH.value}"
        )
    import jax

    from maestro_jax import aot, files

    if "cim_train_step" in names and jax.device_count() < _MESH.value:
        return cli.error(
            f"--mesh_devices {_MESH.value}: this process has {jax.device_count()} devices "
            "(JAX was started before the command could make more)"
        )
    frames = aot.SIZES[_SIZE.value]["frames"]
    rows = []
    for program in aot.programs(_SIZE.value, names, _ATTN.value, _MESH.value):
        rows += aot.measure(program, platforms, frames, _COMPILE.value)
        print(f"[lower] {program.name}: done", flush=True)
    print(
        f"\nAhead-of-time lowering, size {_SIZE.value}, attention {_ATTN.value}, "
        f"jax {jax.__version__}, host {jax.default_backend()}\n"
    )
    print(aot.table(rows))
    if _JSON.value:
        files.write_json(_JSON.value, [dict(vars(r), vs_spec=r.flops_vs_spec) for r in rows])
    return 0


if __name__ == "__main__":
    cli.run(main)
