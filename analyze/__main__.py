"""`python -m analyze`: the qcow2-analyze command."""

import sys

from qcow2_monitor.analyze.main import main

sys.exit(main())
