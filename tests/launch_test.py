"""The TPU VM scripts in launch/, run with --dry-run: the exact commands they would run, nothing run."""

import re
import shlex
import subprocess
from pathlib import Path

import pytest

LAUNCH = Path(__file__).resolve().parents[1] / "launch"


def dry_run(script, *args, **env):
    result = subprocess.run(
        ["bash", str(LAUNCH / script), "--dry-run", *args],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "REPO_URL": "https://example.com/bert_jax.git", **env},
        check=False,
    )
    # Each command is printed as "+ " and its shell-quoted words (the remote scripts span lines).
    chunks = re.split(r"^\+ ", result.stdout, flags=re.MULTILINE)[1:]
    return result.returncode, [shlex.split(chunk) for chunk in chunks], result


def test_run_checks_the_compile_first_then_starts_every_worker():
    rc, commands, _ = dry_run(
        "run.sh", "bert", "us-west4-a", "v5e-16", "--config=configs/bert_large.py",
        "--workdir=gs://b/large", "--config.model.remat_policy=dots",
    )  # fmt: skip
    assert rc == 0 and len(commands) == 2
    # Only the config flags go to the check; the workdir is the trainer's business.
    assert commands[0] == [
        "python", "-m", "bert_jax.compile", "--topology=v5e-16",
        "--config=configs/bert_large.py", "--config.model.remat_policy=dots",
    ]  # fmt: skip
    ssh = commands[1]
    assert ssh[:7] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "bert", "--zone=us-west4-a"]
    assert ssh[7] == "--worker=all"
    remote = ssh[8].removeprefix("--command=")
    assert (
        "nohup python -m bert_jax.main --config=configs/bert_large.py --workdir=gs://b/large "
        "--config.model.remat_policy=dots  > ~/bert_jax.log"
    ) in remote


def test_run_can_skip_the_check_and_tail():
    rc, commands, _ = dry_run("run.sh", "bert", "z", "v4-32", "--config=c.py", SKIP_CHECK="1")
    assert rc == 0 and len(commands) == 1 and commands[0][4] == "ssh"
    rc, commands, _ = dry_run("run.sh", "bert", "z", "--tail")
    assert rc == 0 and commands == [
        ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "bert", "--zone=z", "--worker=0",
         "--command=tail -f ~/bert_jax.log"]
    ]  # fmt: skip


@pytest.mark.parametrize(
    "topology, accelerator, image",
    [
        ("v5e-16", "v5litepod-16", "v2-alpha-tpuv5-lite"),
        ("v4-32", "v4-32", "tpu-ubuntu2204-base"),
        ("v5p-16", "v5p-16", "v2-alpha-tpuv5"),
        ("v6e-8", "v6e-8", "v2-alpha-tpuv6e"),
    ],
)
def test_create_names_the_accelerator_and_image_and_installs_python_312(
    topology, accelerator, image
):
    rc, commands, _ = dry_run("create.sh", "bert", "zone-a", topology)
    assert rc == 0 and len(commands) == 2
    assert commands[0] == [
        "gcloud", "compute", "tpus", "tpu-vm", "create", "bert", "--zone=zone-a",
        f"--accelerator-type={accelerator}", f"--version={image}",
    ]  # fmt: skip
    install = commands[1][-1]
    # Whatever Python the image ships (3.10 on ubuntu 22.04), the venv is 3.12 (setup.py needs >= 3.11).
    assert "uv venv --python 3.12 .venv" in install
    assert "git clone https://example.com/bert_jax.git bert_jax" in install
    assert "uv pip install -q -e '.[tpu]'" in install


def test_create_spot_and_a_bad_topology():
    _, commands, _ = dry_run("create.sh", "bert", "z", "v4-8", "my-image", SPOT="1")
    assert commands[0][-2:] == ["--version=my-image", "--spot"]
    rc, commands, result = dry_run("create.sh", "bert", "z", "v9-8")
    assert rc != 0 and commands == []
    assert result.stderr.strip().splitlines() == [
        "error: topology v9-8: use the v4-32 / v5e-16 / v5p-16 / v6e-8 form here"
    ]


def test_stop_and_delete():
    _, stop, _ = dry_run("stop.sh", "bert", "z")
    assert stop == [["gcloud", "compute", "tpus", "tpu-vm", "ssh", "bert", "--zone=z", "--worker=all",
                     "--command=pkill -TERM -f 'python -m bert_jax.main' || true"]]  # fmt: skip
    _, delete, _ = dry_run("delete.sh", "bert", "z")
    assert delete == [
        ["gcloud", "compute", "tpus", "tpu-vm", "delete", "bert", "--zone=z", "--quiet"]
    ]
