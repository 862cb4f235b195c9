"""spanprism package."""
