"""`python -m analyze`: the qcow2-analyze command."""

import sys

from analyze.main import main

sys.exit(main())
