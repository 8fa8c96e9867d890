"""Container workloads on the fabric: specs, placement per node, reconcilers, leases, logs.

A workload is a row of the replicated ``workloads`` table; every node computes the same
placement from its live view (:mod:`apps.workloads.planner`), runs what falls to it
through a runtime (:mod:`apps.runtimes`) and reports each replica in ``replicas``
(:mod:`apps.workloads.reconciler`). See docs/architecture.md, "Workloads".
"""
