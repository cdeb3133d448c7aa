"""`python -m medsynth ...`, which is also how `torchrun -m medsynth train ...` starts each rank."""

import sys

from medsynth.cli import main

sys.exit(main())
