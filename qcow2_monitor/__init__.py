"""qcow2-monitor: a read-only qcow2 analyzer for monitoring.

The installed namespace. In the source tree its subpackages are symlinks to the folders
collectors/ (the core), analyze/ (qcow2-analyze), nagios/, telegraf/ and
node_exporter_textfile/ (the adapters).
"""
