"""The control plane: the cluster's records in the Barn, the job and task lifecycle, the
scheduler and node liveness. One copy serves both deployments: in-process for ``runink run``
(the memory Barn) and ``runink server`` (the raft Barn)."""
