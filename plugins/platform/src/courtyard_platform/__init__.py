"""Courtyard's platform plugin: the go-web-nats platform API and its pipeline."""
