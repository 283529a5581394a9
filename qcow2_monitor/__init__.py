"""qcow2-monitor: a read-only qcow2 analyzer for monitoring.

The installed namespace: pyproject.toml maps each top-level folder of the tree to one of its
subpackages -- collectors/ (the core), cli/ and analyze/ (the front ends), nagios/, telegraf/
and node_exporter_textfile/ (the adapters).
"""
