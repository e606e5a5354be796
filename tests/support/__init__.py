"""Real servers, a fault proxy and worker functions, shared by tests and benchmarks."""
