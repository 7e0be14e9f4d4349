"""Signed data from vehicles: crash-recorder deposits, telematics batches, usage-based insurance."""
