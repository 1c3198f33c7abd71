"""Out-of-distribution detection: does an input look like the images a model was trained on? A detector is fitted
with every model (features.py: what it looks at; detector.py: the score, threshold and storage; fit.py: fitting)."""
