"""Peak memory figures (train results, benchmarks) are the process's own, not its parent's."""

import subprocess
import sys

from finetune.config import PROJECT_ROOT

CHILD = """
import resource
from finetune.process_memory import peak_rss_mib
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, peak_rss_mib())
"""


def test_a_child_of_a_large_process_reports_its_own_peak():
    ballast = b"x" * (300 << 20)  # resident: a 300 MiB parent, like a Dagster run launching the trainer
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, cwd=PROJECT_ROOT, check=True)
    inherited, own = map(float, out.stdout.split())
    assert len(ballast) and inherited > 300  # ru_maxrss carries the parent's size over fork + exec
    assert 0 < own < 100
