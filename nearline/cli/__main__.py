"""`python -m nearline.cli`: the same as the `nearline` console script (the job and demo start child processes this way)."""

import sys

from nearline.cli import main

sys.exit(main())
