"""Courtyard's runners plugin: RustCI's runner API and the agent that runs jobs."""
