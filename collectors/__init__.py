"""qcow2-monitor core: read-only qcow2 analysis."""
