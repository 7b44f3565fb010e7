"""The server side of the cluster: the gRPC service agents connect to (agent_service.py), the
REST API (api.py, served by uvicorn in a thread: serve_api.py) and the loop that schedules and
watches node liveness while this server's Barn member leads (loop.py)."""
