"""The exit codes every command shares (documented in the README); qcow2-analyze's `check`
adds qemu-img check's own (analyze/check.py), check_qcow2 the Nagios states."""

EXIT_OK = 0
EXIT_FAILED = 1  # a target could not be analysed (not qcow2, damaged, unsupported, unreadable)
EXIT_USAGE = 64  # bad command line (sysexits EX_USAGE)
