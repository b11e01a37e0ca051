"""Every command-line tool of the package, one module each, thin over the library: argument parsing,
what the user sees (progress, tables, warning and error lines, exit statuses), and calls into
:mod:`minicaffe.features`, :mod:`minicaffe.profiling`, :mod:`minicaffe.comparison`,
:mod:`minicaffe.similarity` and the other library modules, which parse no arguments and print
nothing. A tool imports only the library, never ``minicaffe.NAME``: that small module runs ``main``
from here (``python -m minicaffe.NAME``, ``minicaffe NAME``) and re-exports the old import path.
"""
