"""Attribution: baselines, detection, decomposition and the classifier over stored calls (pure; no HTTP)."""
