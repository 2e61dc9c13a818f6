"""Observe: what runs and what happened. ``Observed`` (in :mod:`supervisor.desired.model`) is the
only read model; :mod:`.views` computes status rows and the STATUS line from it; :mod:`.events`
is the event bus; :mod:`.state` keeps what adoption needs, through :mod:`.safefs`; logs are read
back by :mod:`.logview`; :mod:`.notify` tells systemd. ARCHITECTURE.md has the whole pipeline."""
