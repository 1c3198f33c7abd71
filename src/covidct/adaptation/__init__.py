"""Adapting a trained model to a new site: the site and its shift (site.py), the learning curve over k labelled
patients (curve.py), the adapted model as a run folder (adapt.py), and the last stages fine-tuned on cached inputs
(tail.py)."""
