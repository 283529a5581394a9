"""The core: read-only qcow2 analysis, in rooms by concern, imports pointing one way (down):

- ``common``: the project's error type, records (value types without dataclasses' start-up
  cost), how sizes and counts are written, JSON from typed values;
- ``qcow2``: the on-disk format, pure Python: layouts, the one reader, header, image, chain,
  the fast end offset, qemu's size formula, the info and header views;
- ``check``: the full check with numpy (the only room that imports it): references, refcount
  comparison, findings, measure's runs, table dumps;
- ``host``: what the host says: containers, target discovery, live figures of running qemu;
- ``report``: the one result model, usage, the health policy, the metric catalogue, collect().

The front ends (``cli``, ``analyze``) and the adapters (``nagios``, ``telegraf``,
``node_exporter_textfile``) sit outside; the core imports none of them, parses no command line
and prints nothing (tests/test_architecture.py).
"""
