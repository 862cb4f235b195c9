"""Scoring attribution against injected ground truth, and training the classifier on simulations."""
