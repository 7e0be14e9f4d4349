"""Software releases and updates: Uptane ideas over the ledger, exported as TUF metadata."""
