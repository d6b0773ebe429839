"""The scikit-learn style fronts (ImageClassifier, TextClassifier), saving and loading model directories."""
