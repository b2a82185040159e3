"""What the coordinator (server/) and the hospitals (client/) must agree on.

This package imports neither ``server`` nor ``client``.
"""
