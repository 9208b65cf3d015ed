"""Classic machine learning: ``pgml.train`` on a relation's columns and predictions over
feature arrays, with scikit-learn's estimators."""
