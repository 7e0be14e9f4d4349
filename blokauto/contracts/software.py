"""Software releases and updates (Uptane ideas over the ledger): being written (issue 6)."""
