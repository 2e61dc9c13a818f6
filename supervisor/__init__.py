"""supervise: a declarative, file-driven service supervisor.

``services.toml`` is the desired state; :mod:`supervisor.reconciler` converges the machine to
it. See DESIGN.md for the architecture and ``man 5 services.toml`` for the file format.
"""

__version__ = "0.1.0"
