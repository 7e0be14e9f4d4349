"""The consortium network: JetStream ordering, network configuration and the local consortium."""
