"""The dataengine command line: the engine's commands, the operator's (runs, events, retry, costs), workspaces, the API server and its keys, the demo; each job adds its own (Job.cli)."""
