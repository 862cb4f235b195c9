"""Writing simulated calls as OTLP JSON exports in every convention spanprism reads."""
