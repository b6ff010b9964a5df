"""NumPy float64 oracles: the seed documents' equations and update rules, rewritten by hand."""
