"""What every command line shares (qcow2-analyze and the three adapters): exit codes, the
target-selection, live-source and health-state options, --version, and text for people."""
