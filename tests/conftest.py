"""Test setup: 8 fake CPU devices, so mesh and sharding code runs on a laptop."""

import os
import subprocess

import pytest

# Must happen before JAX initialises its backends.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MiB tmpfs (mounting one needs root; elsewhere the test is skipped with that reason)."""
    target = tmp_path / "small"
    target.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(target)], capture_output=True
    )
    if mounted.returncode:
        pytest.skip("mounting a tmpfs needs root")
    try:
        yield target
    finally:
        subprocess.run(["umount", str(target)], check=True)


# The longest tests, in seconds as measured in a full `-n 2` run (2026-12-07): started first, so that short tests
# fill in beside them instead of one of them starting last and running alone while the other worker idles.
LONGEST_S = {
    "test_two_process_pretraining_killed_ten_times_ends_bitwise_equal": 287,
    "test_suite_every_task_end_to_end_on_mock_tfds": 136,
    "test_two_hosts_killed_mid_run_resume_exactly": 125,
    "test_meshes_match_one_device": 104,
    "test_bert_base_both_phases_fit_a_v5e16": 103,
    "test_bert_large_phase2_fits_a_v5e16_with_fsdp": 78,
}


def pytest_collection_modifyitems(config, items):
    """Slow tests first, the longest of them first; otherwise the collection order (a stable sort)."""
    items.sort(
        key=lambda item: (
            item.get_closest_marker("slow") is None,
            -LONGEST_S.get(item.originalname, 0),
        )
    )
