"""`/mcp forget-user`: erase one end user everywhere, with a receipt and a ledger that restores honour."""
