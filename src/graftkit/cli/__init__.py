"""The `graft` command: a thin layer over the API (no logic the API lacks)."""
