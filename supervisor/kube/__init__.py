"""``runtime = "kubernetes"``: the same services.toml as cluster objects, kept converged.

A self-contained package with narrow interfaces, so that the engine's executor seam can call it
without knowing Kubernetes:

- :mod:`.schema` -- the file's ``kubernetes`` keys -> :class:`~.schema.KubeConfig` (called by
  ``config`` for located errors).
- :mod:`.render` -- pure: ``render(desired, kube, versions) -> Rendered(manifests, notes)``.
- :mod:`.policy` -- pure: what to do given desired manifests, observed objects, the rollout
  record and the time (apply, delete, roll back, report drift, wait), and the backoff of an
  unreachable cluster.
- :mod:`.cluster` -- the effects, thin: server-side apply (field manager ``supervise``), list,
  delete, pod logs and events through the official ``kubernetes`` client.
- :mod:`.images` -- a new version -> image build -> push to ``kubernetes.registry``
  (``REGISTRY/NAME:VERSION``, the reference the Deployment renders).
- :mod:`.converge` -- one pass of observe -> decide -> act, emitting supervise events.
- :mod:`.readback` -- status rows, events and log lines from cluster objects (pure).
"""
