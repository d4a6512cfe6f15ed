"""Notebooks as tests, a front end: the runner, output comparison, the ``Notebook`` fixture's
handle, the ``kernel-bridge test`` command and the pytest plugin (``pytest --nb``)."""
