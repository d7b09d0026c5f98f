"""Process-wide runtime settings: the allocator keeps freed tensor memory for the next step."""

import json
import platform
import subprocess
import sys

import pytest

# Ten fp32 SimpleCNN training steps (batch 64, one thread) after five of warm-up; prints the
# minor page faults they caused. Measured here: 47,000-78,000 with glibc's defaults, 0-3,200 tuned.
PROBE = """
import json, resource, sys, torch
import torch.nn.functional as F
torch.set_num_threads(1)
if sys.argv[1] == "tuned":
    from cnnlab.runtime import keep_freed_memory
    assert keep_freed_memory()
from cnnlab.models import create_model
model = create_model("simple_cnn")
optimizer = torch.optim.Adam(model.parameters())
x, y = torch.rand(64, 1, 28, 28), torch.randint(0, 10, (64,))
for step in range(15):
    if step == 5:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    loss = F.cross_entropy(model(x)[0], y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before))
"""


def page_faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt tuning applies to glibc only")
def test_tuned_allocator_reuses_freed_tensor_memory_instead_of_faulting_it_in_again():
    default, tuned = page_faults("default"), page_faults("tuned")
    assert default > 10_000  # every step faults its activations in afresh
    assert tuned < default / 5


def test_set_threads_tunes_the_allocator_and_sets_the_thread_count(monkeypatch):
    import torch

    from cnnlab import runtime

    monkeypatch.setattr(runtime, "_allocator_tuned", False)
    threads = torch.get_num_threads()  # unchanged, so later tests keep their threads
    assert runtime.set_threads(threads) == threads == torch.get_num_threads()
    assert runtime._allocator_tuned == (platform.libc_ver()[0] == "glibc")  # set_threads did it
