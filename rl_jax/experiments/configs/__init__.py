"""Experiment configs that are sized for a particular machine (pod slices)."""
