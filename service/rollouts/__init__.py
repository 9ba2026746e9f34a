"""Rollouts: a challenger version beside the champion (canary), its evidence, and the decision to promote it."""
