"""The CPU count a server and a training run size themselves by: affinity, lowered to the CPU quota of their cgroup
or an ancestor's."""

import os

import onnxruntime
import pytest
import torch

from bundle import cpus
from bundle.integrity import open_session
from service.core.settings import default_http_processes, default_workers
from training import cli, export


def _tree(tmp_path, proc_cgroup: str, files: dict[str, str]):
    root = tmp_path / "cgroup"
    root.mkdir()
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    proc = tmp_path / "proc_self_cgroup"
    proc.write_text(proc_cgroup)
    return root, proc


@pytest.mark.parametrize(
    ("proc_cgroup", "files", "expected"),
    [
        # cgroup v2, a container with its own cgroup namespace: its limit at the mount's root
        ("0::/\n", {"cpu.max": "150000 100000\n"}, 1.5),
        ("0::/\n", {"cpu.max": "max 100000\n"}, None),
        # v2 on a host: the process's own cgroup is unlimited, an ancestor is not; the tightest level counts
        (
            "0::/kubepods/pod1/ctr\n",
            {
                "kubepods/pod1/ctr/cpu.max": "max 100000",
                "kubepods/pod1/cpu.max": "50000 100000",
                "kubepods/cpu.max": "800000 100000",
            },
            0.5,
        ),
        # v1, a container without a cgroup namespace: its host path is not visible, the mount's root is its own
        (
            "4:cpu,cpuacct:/libpod_parent/libpod-1\n1:name=systemd:/x\n",
            {"cpu,cpuacct/cpu.cfs_quota_us": "200000", "cpu,cpuacct/cpu.cfs_period_us": "100000"},
            2.0,
        ),
        # v1 unlimited (-1), controllers mounted one per folder as on the development machine
        ("1:cpu:/\n2:cpuacct:/\n", {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, None),
        # unreadable or odd files are no limit, not a crash
        ("0::/\n", {"cpu.max": "garbage"}, None),
        ("0::/\n", {"cpu.max": "100000 0"}, None),
        ("not a cgroup line\n", {}, None),
    ],
)
def test_quota_reads_the_tightest_level(tmp_path, proc_cgroup, files, expected):
    root, proc = _tree(tmp_path, proc_cgroup, files)
    assert cpus.quota(root, proc) == expected


def test_no_cgroup_file_system_means_no_quota(tmp_path):
    assert cpus.quota(tmp_path / "absent", tmp_path / "absent_proc") is None


def test_usable_rounds_a_quota_up_and_never_exceeds_the_affinity(tmp_path):
    affinity = len(os.sched_getaffinity(0))
    root, proc = _tree(tmp_path, "0::/\n", {"cpu.max": "150000 100000"})
    assert cpus.usable(root, proc) == min(affinity, 2)
    (root / "cpu.max").write_text("20000 100000")  # a fifth of a CPU still runs one process
    assert cpus.usable(root, proc) == 1
    (root / "cpu.max").write_text(f"{(affinity + 5) * 100000} 100000")
    assert cpus.usable(root, proc) == affinity


def test_the_default_http_processes_follow_the_quota(tmp_path, monkeypatch):
    root, proc = _tree(tmp_path, "0::/\n", {"cpu.max": "100000 100000"})
    monkeypatch.setattr(cpus, "CGROUP_ROOT", root)
    monkeypatch.setattr(cpus, "PROC_CGROUP", proc)
    assert default_http_processes() == 1


@pytest.mark.parametrize(("usable", "workers"), [(1, 1), (2, 1), (3, 1), (4, 2), (9, 4), (64, 8)])
def test_the_default_workers_are_one_per_two_cpus(monkeypatch, usable, workers):
    monkeypatch.setattr(cpus, "usable", lambda: usable)
    assert default_workers("cpu") == workers
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():  # `auto` then runs on the CPU too
        assert default_workers("auto") == workers


def test_training_sizes_torch_and_onnx_runtime_by_the_quota(monkeypatch, tmp_path, trained):
    before = torch.get_num_threads()
    monkeypatch.setattr(cpus, "usable", lambda: 1)
    try:
        torch.set_num_threads(2)
        assert cli.main(["verify", str(tmp_path / "absent")]) != 0  # any torch command sizes torch first
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    model = trained[0] / "model.onnx"
    assert export.onnx_session(model).get_session_options().intra_op_num_threads == 1
    monkeypatch.setattr(cpus, "usable", lambda: 3)
    assert export.onnx_session(model).get_session_options().intra_op_num_threads == 3
    # The bundle checks run a few probe rows: one thread, whatever the machine
    assert open_session(model).get_session_options().intra_op_num_threads == 1
