"""Burst: N scans uploaded within a few seconds through the Lambda trigger into a local
stack; every one must end exactly once. The burst itself is deployments/rehearsal/burst.py
(the load tests run it smaller); this is its command line:

    python bench/burst.py [-n 500] [--within 10] [--database postgres|sqlite]
                          [--messaging redis --replicas N [--compare]]
                          [--mix-bad 0.1] [--redeliver 0.05] [--lambda-concurrency 20]
                          [--pool-concurrency 2] [--cancel-after S] [--auth] [--json out.json]
"""

from __future__ import annotations

import sys

from deployments.rehearsal.burst import main

if __name__ == "__main__":
    sys.exit(main())
