"""Thin I/O around the core: pods, memory ConfigMaps, events, HTTP oracles."""
