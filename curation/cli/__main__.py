"""`python -m curation.cli ...`: the `curation` command."""

import sys

from curation.cli import main

sys.exit(main())
