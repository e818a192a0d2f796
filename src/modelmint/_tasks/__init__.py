"""Task plugins: each task (its data, candidates, metric, report and serving signature) in a
folder of its own, found through :mod:`.registry`."""
