"""Model families scalselect extracts representations from (adapters land with issue 3)."""
