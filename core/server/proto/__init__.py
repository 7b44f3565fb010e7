"""The agent stream's protocol (agent.proto) and its generated code; see README.md here."""

#: the stream's method, as the server registers it and the agent calls it
CONNECT = "/runink.agent.v1.AgentService/Connect"
