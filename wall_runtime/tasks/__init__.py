"""Simulated tasks with their own success criteria (physics), scripted experts and data recording."""
