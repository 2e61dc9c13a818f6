"""Execute: everything that touches replicas. The executor seam (:mod:`.executors`) and its
implementations, processes and process groups, cgroups, log files, probes, sources and builds,
and the driver that runs the life cycle's effects for one service (:mod:`.service`).
ARCHITECTURE.md has the whole pipeline."""
