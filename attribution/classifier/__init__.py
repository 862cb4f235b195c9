"""The attribution classifier: episode features, reasons, exemplars, the fitted model."""
