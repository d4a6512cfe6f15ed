"""Notebooks as tests, a front end: options, reading, cells, report, compare, runner (one set-up
path, one concurrent runner), the ``Notebook`` fixture's handle, ``kernel-bridge test`` (cli) and
the pytest plugin (``pytest --nb``); docs/notebooks.md has a module per job."""
