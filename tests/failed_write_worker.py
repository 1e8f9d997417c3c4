"""Run by tests/test_reliability.py as `torchrun --nproc_per_node 2 -m tests.failed_write_worker FOLDER OUT` (gloo):
the shape of a checkpoint save in which one process fails early while the other is still writing into the same
partial folder (seen in CI: rank 1's failure removed checkpoint-20.partial under rank 0, which then failed too).
Rank 1 fails at once; rank 0 writes its file after a second, as a slower process would; both then agree
(training.checkpoint.agree_on_write). Each process writes what it saw to OUT.rank<N>.json; the test asserts."""
from __future__ import annotations

import json
import os
import sys
import time

from accelerate import Accelerator

from training.checkpoint import agree_on_write

if __name__ == "__main__":
    folder, out = sys.argv[1], sys.argv[2]
    accelerator = Accelerator(cpu=True)
    rank = accelerator.process_index
    partial = os.path.join(folder, "checkpoint-5.partial")
    if accelerator.is_main_process:
        os.makedirs(os.path.join(partial, "state"))
    accelerator.wait_for_everyone()
    failed = None
    wrote = False
    if rank == 1:
        failed = OSError("rank 1 could not write its optimizer partition")
    else:
        time.sleep(1.0)  # still writing when rank 1 has failed
        try:
            with open(os.path.join(partial, "state", "random_states_0.pkl"), "wb") as f:
                f.write(b"rng")
            wrote = True
        except OSError as e:
            failed = e
    outcome = "returned"
    try:
        agree_on_write(accelerator, failed, partial, folder, estimate=10, what="checkpoint-5")
    except SystemExit as e:
        outcome = f"SystemExit: {e}"
    except OSError as e:
        outcome = f"{type(e).__name__}: {e}"
    with open(f"{out}.rank{rank}.json", "w", encoding="utf-8") as f:
        json.dump({"wrote": wrote, "outcome": outcome, "partial_left": os.path.exists(partial)}, f)
    accelerator.wait_for_everyone()
