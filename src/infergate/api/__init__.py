"""HTTP endpoint families. Thin: validate, call the platform, render."""
