"""A trial sees the GPUs Ray gave it and no other (on a real local Ray, with logical GPUs)."""
import os
import subprocess
import sys

from tests.sweeps import ROOT

SCRIPT = """
import os, ray
from orchestrator.tune_runner import hide_unassigned_gpus

@ray.remote
def seen():
    hide_unassigned_gpus(ray.get_gpu_ids())  # as the trainable does first
    return os.environ.get("CUDA_VISIBLE_DEVICES")

ray.init(num_cpus=1, num_gpus=1, include_dashboard=False, log_to_driver=False)
print(repr(ray.get(seen.options(num_gpus=0).remote())), repr(ray.get(seen.options(num_gpus=0.5).remote())))
"""


def test_a_trial_given_no_gpu_sees_none_and_one_given_a_share_sees_its_gpu():
    # the node's GPUs are visible to every process on it, as on a GPU machine where nobody narrowed them
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "0", "RAY_ADDRESS": ""}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[-2:] == ["''", "'0'"], proc.stdout
