"""Deterministic simulation of the sans-IO core (DESIGN.md §2): see `simulations.sim`."""
