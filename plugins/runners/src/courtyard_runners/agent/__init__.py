"""`courtyard runner`: the agent that runs RustCI runner jobs (see agent.py)."""
