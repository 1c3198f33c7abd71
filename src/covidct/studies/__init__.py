"""Studies made of many trainings: cross-validation (cv.py), the cross-source matrix (crosssource.py), the speed
bench (bench.py)."""
