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


def test_run_checks_the_first_compile_then_starts_every_worker():
    rc, commands, _ = dry_run(
        "run.sh", "bert", "us-west4-a", "v5e-16", "--config=configs/bert_large.py",
        "--workdir=gs://b/large", "--config.model.remat_policy=dots",
    )  # fmt: skip
    assert rc == 0 and len(commands) == 2
    # Only the config flags go to the check; the workdir is the trainer's business. By default only the program
    # the run starts with (phase 1's step) is compiled.
    assert commands[0] == [
        "python", "-m", "bert_jax.compile", "--topology=v5e-16", "--programs=phase1",
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
    assert "echo $! > ~/bert_jax.pid" in remote


def test_run_check_all_compiles_every_program():
    rc, commands, _ = dry_run("run.sh", "bert", "z", "v4-32", "--config=c.py", CHECK="all")
    assert rc == 0 and commands[0][3:5] == ["--topology=v4-32", "--programs=phase1,phase2,eval"]


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


def test_create_needs_a_reachable_source():
    for url in ("", "/home/me/bert_jax", "git@github.com:me/bert_jax.git"):
        rc, commands, result = dry_run("create.sh", "bert", "z", "v4-8", REPO_URL=url)
        assert rc == 2 and commands == []
        assert result.stderr.strip().splitlines() == [
            f"error: REPO_URL={url or '(unset)'}: set REPO_URL to a git https:// URL the workers can "
            "clone, or WHEEL to a wheel built with 'pip wheel --no-deps . -w dist' (a local path or ssh "
            "remote does not reach them)"
        ]


def test_create_from_a_wheel_copies_it_to_every_worker(tmp_path):
    wheel = tmp_path / "bert_jax-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"")
    rc, commands, _ = dry_run("create.sh", "bert", "z", "v4-8", REPO_URL="", WHEEL=str(wheel))
    assert rc == 0 and len(commands) == 3
    assert commands[1] == ["gcloud", "compute", "tpus", "tpu-vm", "scp", str(wheel), "bert:",
                           "--zone=z", "--worker=all"]  # fmt: skip
    install = commands[2][-1]
    assert 'uv pip install -q "$HOME/bert_jax-0.1.0-py3-none-any.whl[tpu]"' in install
    assert "git clone" not in install
    rc, _, result = dry_run("create.sh", "bert", "z", "v4-8", WHEEL=str(tmp_path / "none.whl"))
    assert rc == 2 and result.stderr.startswith(f"error: WHEEL={tmp_path / 'none.whl'}: no such")


def test_stop_signals_only_the_run_it_started(tmp_path):
    _, stop, _ = dry_run("stop.sh", "bert", "z")
    assert stop[0][:8] == [
        "gcloud",
        "compute",
        "tpus",
        "tpu-vm",
        "ssh",
        "bert",
        "--zone=z",
        "--worker=all",
    ]
    remote = stop[0][8].removeprefix("--command=")
    # The remote command, run here: the pid-file process gets SIGTERM; another bert_jax-looking process (and
    # the shell running the command, which pkill -f matched) does not.
    started = subprocess.Popen(["sleep", "30"])
    other = subprocess.Popen(["bash", "-c", "exec -a 'python -m bert_jax.main' sleep 30"])
    try:
        (tmp_path / "bert_jax.pid").write_text(f"{started.pid}\n")
        env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
        done = subprocess.run(["bash", "-c", remote], env=env, capture_output=True, text=True)
        assert done.returncode == 0 and started.wait(10) == -15
        assert other.poll() is None
        assert done.stdout.split(": ", 1)[1] == f"stopping pid {started.pid}\n"
        again = subprocess.run(["bash", "-c", remote], env=env, capture_output=True, text=True)
        assert again.stdout.split(": ", 1)[1] == "no run started by launch/run.sh is running\n"
    finally:
        for process in (started, other):
            process.kill()
            process.wait()


def test_delete():
    _, delete, _ = dry_run("delete.sh", "bert", "z")
    assert delete == [
        ["gcloud", "compute", "tpus", "tpu-vm", "delete", "bert", "--zone=z", "--quiet"]
    ]
