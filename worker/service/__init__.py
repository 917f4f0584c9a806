"""The long-running processes: the SCP with its dispatcher, ``up``, embedded Redis, controls."""
