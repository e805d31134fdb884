"""The ``ue8m0`` command line: thin wiring over the library (see :mod:`ue8m0.cli.main`)."""
