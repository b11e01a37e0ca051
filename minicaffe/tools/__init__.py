"""The command-line tools that are thin layers over the library: argument parsing, what the user
sees (progress, warning and error lines, exit statuses), and calls into :mod:`minicaffe.features`
and the other library modules. Each is run as ``python -m minicaffe.NAME`` (a small module that
imports ``main`` from here) or ``minicaffe NAME``.
"""
