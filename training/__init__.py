"""training: data loading, training, evaluation metrics, retraining and promotion."""
