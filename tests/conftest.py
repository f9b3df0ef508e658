"""Root of the test suite: the shared helpers live in `testkit`."""
