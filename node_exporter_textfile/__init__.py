"""node_exporter_textfile."""
