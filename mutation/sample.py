"""Keep a random sample of a cosmic-ray session's mutants: ``python mutation/sample.py SESSION N [SEED]``.

A whole group takes hours on 2 cores; a seeded sample of N mutants measures its score in minutes,
and the same seed draws the same sample again.
"""

from __future__ import annotations

import random
import sqlite3
import sys


def keep_sample(session: str, count: int, seed: int = 0) -> tuple[int, int]:
    """Delete every pending mutant of ``session`` but ``count`` drawn at random; returns (kept, total)."""
    with sqlite3.connect(session) as db:
        jobs = sorted(row[0] for row in db.execute("SELECT job_id FROM work_items"))
        kept = set(random.Random(seed).sample(jobs, min(count, len(jobs))))
        dropped = [(job,) for job in jobs if job not in kept]
        db.executemany("DELETE FROM mutation_specs WHERE job_id = ?", dropped)
        db.executemany("DELETE FROM work_items WHERE job_id = ?", dropped)
    return len(kept), len(jobs)


if __name__ == "__main__":
    kept, total = keep_sample(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 0)
    print(f"kept {kept} of {total} mutants")
