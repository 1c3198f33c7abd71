"""The data audit: what a dataset holds and what could mislead a model trained on it (report.py: duplicates across
splits and the rest of `covidct data audit`; shortcut.py: a classifier on image statistics alone; info.py, figures.py,
samples.py)."""
