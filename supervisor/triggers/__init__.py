"""Triggers: what says something changed, and nothing more (they never act on replicas): the
file watcher, the folder watcher and the git poller (:mod:`.watch`). Signals are the daemon's;
the control verbs are in :mod:`supervisor.control`. ARCHITECTURE.md has the whole pipeline."""
