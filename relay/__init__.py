"""relay: a self-hostable server that keeps the devices of one person in sync."""

__version__ = "0.1.0"
