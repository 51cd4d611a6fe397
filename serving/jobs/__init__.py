"""Asynchronous large-image jobs on Redis: submission, a reliable queue, retries, a dead-letter queue.

A request above the transformer's synchronous tile limit becomes a job (202 + id); workers
(``hndsr serve worker``, :mod:`serving.worker`) run it through the core's engine and store the result
with a TTL; ``GET /jobs/{id}`` reports its state.

- :mod:`serving.jobs.store` — the job records and the queue (Redis lists, Lua for every transition).
- :mod:`serving.jobs.scripts` — those Lua scripts.
- :mod:`serving.jobs.blobs` — inputs and results: Redis below a size threshold, S3 above it.
- :mod:`serving.jobs.metrics` — ``hndsr_jobs_*`` Prometheus metrics.
- :mod:`serving.jobs.api` — the transformer's side: submitting and the ``/jobs`` routes.

Nothing is imported here, so that the ``hndsr`` entry point (``serving.jobs.cli``) stays light.
"""
