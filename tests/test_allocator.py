"""The training process's malloc settings: freed activation memory is reused, not faulted in
again, and nothing changes where memory is scarce or the user turned it off."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cxr_core.execution import allocator

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")

CHILD = """
import json, resource, torch
from cxr_core.execution.allocator import keep_freed_memory
applied = keep_freed_memory()
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Conv2d(1, 32, 3, padding=1), torch.nn.ReLU())
x = torch.randn(16, 1, 160, 160)  # activations of 52 MB: over glibc's mmap threshold
def step():
    model(x).square().mean().backward()
for _ in range(2):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"applied": applied, "faults": faults}))
"""


def _training_steps(setting: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD],
        env={"CXR_KEEP_FREED_MEMORY": setting, "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_training_steps_reuse_freed_activation_memory():
    kept = _training_steps("1")
    default = _training_steps("0")
    assert kept["applied"] and not default["applied"]
    activation_pages = 16 * 32 * 160 * 160 * 4 // 4096
    assert default["faults"] > 5 * activation_pages  # glibc's default: mapped afresh each step
    assert kept["faults"] < default["faults"] / 10


def test_not_applied_with_little_memory_or_when_turned_off(monkeypatch):
    monkeypatch.delenv("CXR_KEEP_FREED_MEMORY", raising=False)
    monkeypatch.setattr(allocator, "memory_limit_bytes", lambda: 2 * 2**30)  # Cloud: 2.7 GB
    assert not allocator.keep_freed_memory()
    monkeypatch.setattr(allocator, "memory_limit_bytes", lambda: None)
    assert not allocator.keep_freed_memory()
    monkeypatch.setenv("CXR_KEEP_FREED_MEMORY", "0")
    monkeypatch.setattr(allocator, "memory_limit_bytes", lambda: 64 * 2**30)
    assert not allocator.keep_freed_memory()


def test_memory_limit_is_read_from_this_machine():
    limit = allocator.memory_limit_bytes()
    assert limit is not None and limit > 2**28
