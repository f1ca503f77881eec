"""Shared utilities: coordinates, image I/O, resizing, metrics, configs and safe file writing."""
