"""covidct: deep-learning classifiers of chest CT images for COVID-19 (research use only, not for diagnosis)."""

__version__ = "0.1.0"

DISCLAIMER = "covidct is for research use only. It is not a medical device and must not be used for diagnosis."
