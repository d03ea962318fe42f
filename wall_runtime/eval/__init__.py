"""``wall-runtime eval``: closed-loop episodes of a simulated task through the whole runtime."""
