"""The Linux executor's building blocks: cgroups (v1 and v2) today; namespaces and the
fork-server launcher land with the executor itself (issue 5)."""
