"""Courtyard's releases plugin: Stella Ops' release orchestrator API."""
