"""The web control panel (issue 11)."""
