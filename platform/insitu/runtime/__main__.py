"""``python -m insitu.runtime WORKSPACE_URL``: run one job next to its data."""

import os
import sys

# Dask reads this when distributed is first imported: keep job logs about the job.
os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")

from insitu.runtime.runner import main

if __name__ == "__main__":
    sys.exit(main())
