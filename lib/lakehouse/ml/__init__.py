"""Machine learning on gold: features, training with MLflow tracking and registry, scoring."""
