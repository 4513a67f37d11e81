"""What the tests, the lab and the benchmarks share, so that dependencies point one way (each of them imports
this package; none imports another): the Pulumi program run under mocks (mockrun, harness) and the engine's
value shapes (engine)."""
