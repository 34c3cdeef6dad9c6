"""Versioned apps served from app directories: `<dir>/[@scope/]name/<version>/`."""
