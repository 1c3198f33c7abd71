"""Adapting a trained model to a new site: `covidct adapt` (adapt.py) and the last stages fine-tuned on cached
inputs (tail.py)."""
