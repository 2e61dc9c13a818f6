"""Executors: where a replica runs. Local processes live in ``procs``/``service`` today; this
package holds the ones that talk to something else (a container engine).

Each executor offers the operations of the engine's executor seam, in the same words: prepare an
artifact (build or pull an image), start a replica, stop or signal it, observe exits, adopt what
runs after a supervisor restart, and read its logs.
"""
