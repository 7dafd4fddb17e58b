"""End-to-end tests and the local cluster harness they run on."""
