"""Desired state: ``services.toml`` (or a service given as data) read into a frozen
:class:`~supervisor.desired.model.Desired`, with every mistake located (file:line:col), and the
importers that write a services.toml from a Procfile, a compose file or a supervisord.conf.
ARCHITECTURE.md has the whole pipeline."""
