"""``mcp-runner bench``: the price of the sandbox, measured side by side with a baseline in one process.

One module per section, run in this order by ``main``: ``opens`` (warm, cold and direct open to first call),
``calls`` (session open, close and tools/call against the same server on the host; sanitizer off and on),
``throughput`` (concurrent sessions against as many host processes), ``at_once`` (N sessions opened at once,
then calls checked for cross-delivery), ``guard`` (sanitizer MB/s, guard cost per result), ``sandbox``
(gVisor and an egress allowlist against the profile as shipped), ``audit`` (the store, and the audit log's
cost per call) and ``backends`` (Kubernetes pods beside Docker containers, with ``--backend kubernetes``).
They import one way: sections use ``service`` (the service under test, as a subprocess or
in this process), ``direct`` (the same server on the host over stdio), ``twins`` (generated profile variants),
``machine`` (CPU, cgroup memory, RSS) and ``common`` (figures, tables); nothing imports a section but ``main``.

This package file stays empty of imports: the CLI imports ``options`` to build its parser without loading
the sections.
"""
